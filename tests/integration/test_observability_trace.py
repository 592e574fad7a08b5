"""One generation through the real stack makes ONE trace, from the gateway to the worker and back.

Every process exports its spans over OTLP/gRPC to a receiver this test runs; the test sends its own
`traceparent`, so it knows the trace id before the gateway sees the request, and then checks that the
spans of gateway, auth, inference api, worker and gallery hang together in the order the request
took. It also checks that the processes' JSON log lines carry that trace id.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from services.local.infra import free_port
from services.local.stack import Stack
from tests.stacks import isolated_stack

pytestmark = pytest.mark.timeout(150)

PASSWORD = "correct horse battery staple"
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
PRODUCER = trace_pb2.Span.SPAN_KIND_PRODUCER
CONSUMER = trace_pb2.Span.SPAN_KIND_CONSUMER
KIND_NAMES = {int(value): name.removeprefix("SPAN_KIND_") for name, value in trace_pb2.Span.SpanKind.items()}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[Span] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        got: list[Span] = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        Span(
                            service=str(resource.get("service.name", "")),
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        with self.lock:
            self.spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    yield servicer, port
    server.stop(grace=None)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    models_dir: Path,
    receiver: tuple[Receiver, int],
) -> Iterator[Stack]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # Loaded on the first job, so the model load is part of that job's trace.
        "EASEL_WORKER_PRELOAD": "false",
        "EASEL_WORKER_MODELS": "tiny-sd",
    }
    with isolated_stack(tmp_path_factory, postgres_url, models_dir, "obs-trace", env) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _token(http: aiohttp.ClientSession, base: str) -> str:
    username = f"obs{uuid.uuid4().hex[:8]}"
    account = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    async with http.post(f"{base}/api/v1/auth/register", json=account) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(
        f"{base}/api/v1/auth/login", json={"username": username, "password": PASSWORD}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["token"])


def _one(spans: list[Span], service: str, name: str, kind: int | None = None) -> Span:
    found = [s for s in spans if s.service == service and s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, (
        f"expected one {name!r} span from {service}, found {len(found)}; the trace has: "
        + ", ".join(sorted(f"{s.service}:{s.name}" for s in spans))
    )
    return found[0]


def _ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain: list[Span] = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def _tree(spans: list[Span], root: str) -> str:
    """The trace as an indented tree (printed, so a failing run shows what arrived)."""
    children: dict[str, list[Span]] = {}
    for s in spans:
        children.setdefault(s.parent_id, []).append(s)
    out: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s.start_ns):
            out.append(f"{'  ' * depth}{s.service}: {s.name} [{KIND_NAMES.get(s.kind, s.kind)}]")
            walk(s.span_id, depth + 1)

    walk(root, 0)
    return "\n".join(out)


def _log_lines(stack: Stack, name: str) -> list[dict[str, Any]]:
    assert stack.log_dir is not None
    lines = []
    for raw in (stack.log_dir / f"{name}.log").read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


async def test_one_generation_is_one_trace_across_every_service(
    stack: Stack, receiver: tuple[Receiver, int], http: aiohttp.ClientSession
) -> None:
    collected = receiver[0]
    base = stack.gateway_url
    token = await _token(http, base)

    # Our own trace context: the gateway must continue it, not start a new trace.
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{trace_id}-{caller_span}-01"}
    body = {"prompt": "a lighthouse at dusk", "steps": 3, "width": 64, "height": 64}
    async with http.post(f"{base}/api/v1/generations", json=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["job"]["id"]

    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        async with http.get(
            f"{base}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            status = (await r.json())["status"]
        if status in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(0.2)
    assert status == "completed"

    # Spans leave each process in batches every 200 ms; wait for the last ones of the trace (the
    # worker's job span ends after its ack, the api applies the completion event).
    def complete(spans: list[Span]) -> bool:
        names = {(s.service, s.name) for s in spans}
        return {
            ("easel-gallery", "easel.gallery.v1.Gallery/AddImages"),
            ("easel-inference-worker", "inference.job"),
        } <= names and any(
            s.name == "inference.apply_event" and s.attributes.get("easel.event") == "completed"
            for s in spans
        )

    deadline = time.monotonic() + 20
    while not complete(collected.of_trace(trace_id)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    spans = collected.of_trace(trace_id)
    by_id = {s.span_id: s for s in spans}
    print(_tree(spans, caller_span))
    services = {s.service for s in spans}
    assert services >= {
        "easel-gateway",
        "easel-auth",
        "easel-inference-api",
        "easel-inference-worker",
        "easel-gallery",
    }, services

    # gateway: the HTTP SERVER span continues the caller's context.
    http_span = _one(spans, "easel-gateway", "POST /api/v1/generations", SERVER)
    assert http_span.parent_id == caller_span
    assert http_span.attributes["http.route"] == "/api/v1/generations"
    assert http_span.attributes["http.response.status_code"] == 202

    # Authenticate: gateway CLIENT under the HTTP span, auth SERVER under that.
    auth_client = _one(spans, "easel-gateway", "easel.auth.v1.Auth/Authenticate", CLIENT)
    auth_server = _one(spans, "easel-auth", "easel.auth.v1.Auth/Authenticate", SERVER)
    assert auth_client.parent_id == http_span.span_id
    assert auth_server.parent_id == auth_client.span_id

    # SubmitJob: gateway CLIENT under the HTTP span, inference api SERVER under that, then the
    # PRODUCER span of the publish to the work queue.
    submit_client = _one(spans, "easel-gateway", "easel.inference.v1.Inference/SubmitJob", CLIENT)
    submit_server = _one(spans, "easel-inference-api", "easel.inference.v1.Inference/SubmitJob", SERVER)
    assert submit_client.parent_id == http_span.span_id
    assert submit_server.parent_id == submit_client.span_id
    publish_job = _one(spans, "easel-inference-api", "publish jobs", PRODUCER)
    assert publish_job.parent_id == submit_server.span_id
    assert publish_job.attributes["messaging.destination.name"] == "easel.jobs.tiny-sd.txt2img"

    # Across NATS: the worker's job span is a CONSUMER child of the publish.
    job = _one(spans, "easel-inference-worker", "inference.job", CONSUMER)
    assert job.parent_id == publish_job.span_id
    assert job.attributes["easel.job_id"] == job_id

    # The pipeline stages, below the job: model load (not preloaded), prompt encoding, denoising,
    # VAE decode, in that order.
    generate = _one(spans, "easel-inference-worker", "inference.generate")
    assert generate.parent_id == job.span_id
    load = _one(spans, "easel-inference-worker", "inference.model_load")
    encode = _one(spans, "easel-inference-worker", "inference.encode_prompt")
    denoise = _one(spans, "easel-inference-worker", "inference.denoise")
    vae = _one(spans, "easel-inference-worker", "inference.vae_decode")
    for stage in (load, encode, denoise, vae):
        assert stage.parent_id == generate.span_id, stage.name
    assert denoise.attributes["easel.steps"] == 3
    assert load.end_ns <= encode.start_ns <= encode.end_ns <= denoise.start_ns
    assert denoise.start_ns < denoise.end_ns <= vae.start_ns < vae.end_ns <= generate.end_ns

    # The gallery write: worker CLIENT under the job span, gallery SERVER under that, after decoding.
    add_client = _one(spans, "easel-inference-worker", "easel.gallery.v1.Gallery/AddImages", CLIENT)
    add_server = _one(spans, "easel-gallery", "easel.gallery.v1.Gallery/AddImages", SERVER)
    assert add_client.parent_id == job.span_id
    assert add_server.parent_id == add_client.span_id
    assert add_client.start_ns >= vae.end_ns

    # Back in the api: the completion event is applied in a span under the worker's publish of it.
    applied = [
        s
        for s in spans
        if s.service == "easel-inference-api"
        and s.name == "inference.apply_event"
        and s.attributes.get("easel.event") == "completed"
    ]
    assert len(applied) == 1
    chain = _ancestors(applied[0], by_id)
    assert chain[0].name == "publish events" and chain[0].service == "easel-inference-worker"
    assert job in chain and http_span in chain

    # Every span of the trace leads back to the caller's span: nothing hangs off a stray parent.
    for s in spans:
        assert s.parent_id == caller_span or s.parent_id in by_id, (s.service, s.name)

    # Log lines carry the trace id: the gateway's request line and the worker's completion line.
    gateway_lines = [
        line
        for line in _log_lines(stack, "gateway")
        if line.get("msg") == "request" and line.get("route") == "/api/v1/generations"
    ]
    assert gateway_lines and gateway_lines[-1]["trace_id"] == trace_id
    worker_lines = [
        line
        for line in _log_lines(stack, "inference-worker")
        if line.get("msg") == "job completed" and line.get("job_id") == job_id
    ]
    assert worker_lines and worker_lines[0]["trace_id"] == trace_id
    api_lines = [
        line
        for line in _log_lines(stack, "inference-api")
        if line.get("msg") == "job queued" and line.get("job_id") == job_id
    ]
    assert api_lines and api_lines[0]["trace_id"] == trace_id
