"""Every process of the real stack exports the metrics the dashboards and alerts read.

After one generation (plus its cached repeat, a job for a model no worker serves, and a couple of
failing requests), each process's /metrics is scraped and the named series are looked up with
their labels: most must be above zero; gauges that are legitimately zero at rest (connections in use
right now, GPU memory on a CPU worker) must exist.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from services.local.stack import Stack
from tests.stacks import isolated_stack

pytestmark = pytest.mark.timeout(150)

PASSWORD = "correct horse battery staple"
Labels = dict[str, str]
# (sample name, labels that must match) for series that must be above zero, per process.
POSITIVE: dict[str, list[tuple[str, Labels]]] = {
    "gateway": [
        ("easel_http_requests_total", {"method": "POST", "route": "/api/v1/generations", "status": "202"}),
        ("easel_http_requests_total", {"method": "GET", "route": "/api/v1/images", "status": "401"}),
        ("easel_http_request_latency_seconds_count", {"method": "POST", "route": "/api/v1/generations"}),
        ("easel_http_request_latency_seconds_bucket", {"route": "/api/v1/generations", "le": "+Inf"}),
        ("easel_grpc_client_requests_total", {"target": "auth", "method": "Authenticate", "code": "OK"}),
        ("easel_grpc_client_requests_total", {"target": "inference", "method": "SubmitJob", "code": "OK"}),
        (
            "easel_grpc_client_requests_total",
            {"target": "inference", "method": "GetJob", "code": "NOT_FOUND"},
        ),
        ("easel_grpc_client_latency_seconds_count", {"target": "inference", "method": "SubmitJob"}),
    ],
    "auth": [
        ("easel_grpc_server_requests_total", {"component": "auth", "method": "Authenticate", "code": "OK"}),
        ("easel_grpc_server_latency_seconds_count", {"component": "auth", "method": "Login"}),
        ("easel_auth_registrations_total", {"outcome": "success"}),
        ("easel_auth_logins_total", {"outcome": "success"}),
        ("easel_auth_authentications_total", {"kind": "session", "outcome": "ok"}),
        ("easel_db_pool_size", {"schema": "auth"}),
        ("easel_db_pool_max", {"schema": "auth"}),
    ],
    "gallery": [
        ("easel_grpc_server_requests_total", {"component": "gallery", "method": "AddImages", "code": "OK"}),
        ("easel_grpc_server_latency_seconds_count", {"component": "gallery", "method": "AddImages"}),
        ("easel_gallery_images_added_total", {"kind": "generated"}),
        ("easel_gallery_blob_bytes_written_total", {"size": "original"}),
        ("easel_db_pool_size", {"schema": "gallery"}),
    ],
    "inference-api": [
        (
            "easel_grpc_server_requests_total",
            {"component": "inference-api", "method": "SubmitJob", "code": "OK"},
        ),
        (
            "easel_grpc_server_requests_total",
            {"component": "inference-api", "method": "GetJob", "code": "NOT_FOUND"},
        ),
        ("easel_grpc_server_latency_seconds_count", {"component": "inference-api", "method": "SubmitJob"}),
        ("easel_inference_jobs_submitted_total", {"model": "tiny-sd", "kind": "txt2img"}),
        ("easel_inference_jobs_finished_total", {"model": "tiny-sd", "status": "completed"}),
        ("easel_inference_cache_hits_total", {"model": "tiny-sd"}),
        ("easel_inference_events_applied_total", {"type": "completed", "result": "applied"}),
        # The tiny-sdxl job waits: no worker serves that model.
        ("easel_inference_queue_depth", {"model": "tiny-sdxl"}),
        ("easel_inference_consumer_pending", {"model": "tiny-sdxl"}),
        ("easel_grpc_client_requests_total", {"target": "gallery", "code": "OK"}),
        ("easel_db_pool_size", {"schema": "inference"}),
    ],
    "inference-worker": [
        ("easel_inference_queue_wait_seconds_count", {"model": "tiny-sd", "kind": "txt2img"}),
        ("easel_inference_run_seconds_count", {"model": "tiny-sd", "kind": "txt2img"}),
        ("easel_inference_run_seconds_sum", {"model": "tiny-sd", "kind": "txt2img"}),
        ("easel_inference_batch_size_count", {"model": "tiny-sd"}),
        ("easel_inference_batch_size_sum", {"model": "tiny-sd"}),
        ("easel_inference_images_generated_total", {"model": "tiny-sd", "kind": "txt2img"}),
        ("easel_inference_model_load_seconds_count", {"model": "tiny-sd"}),
        ("easel_inference_model_load_seconds_sum", {"model": "tiny-sd"}),
        ("easel_inference_worker_jobs_total", {"model": "tiny-sd", "outcome": "completed"}),
        ("easel_inference_memory_bytes", {"stat": "rss"}),
        ("easel_inference_memory_bytes", {"stat": "loaded_bytes"}),
        ("easel_inference_loaded_models", {}),
        ("easel_inference_worker_ready", {}),
        ("easel_grpc_client_requests_total", {"target": "gallery", "method": "AddImages", "code": "OK"}),
        ("easel_grpc_client_latency_seconds_count", {"target": "gallery", "method": "AddImages"}),
    ],
}
# Series that must exist, at any value (zero is right at rest or on a CPU).
PRESENT: dict[str, list[tuple[str, Labels]]] = {
    "auth": [("easel_db_pool_in_use", {"schema": "auth"})],
    "gallery": [("easel_db_pool_in_use", {"schema": "gallery"})],
    "inference-api": [
        ("easel_db_pool_in_use", {"schema": "inference"}),
        ("easel_inference_consumer_ack_pending", {"model": "tiny-sdxl"}),
        ("easel_inference_queue_depth", {"model": "tiny-sd"}),
        ("easel_inference_consumer_pending", {"model": "tiny-sd"}),
        ("easel_inference_consumer_ack_pending", {"model": "tiny-sd"}),
    ],
    "inference-worker": [
        ("easel_inference_memory_bytes", {"stat": "gpu_used"}),
        ("easel_inference_memory_bytes", {"stat": "gpu_free"}),
        ("easel_inference_memory_bytes", {"stat": "gpu_total"}),
    ],
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, models_dir: Path) -> Iterator[Stack]:
    env = {
        # The worker serves tiny-sd only, so a tiny-sdxl job stays in the queue.
        "EASEL_WORKER_MODELS": "tiny-sd",
        "EASEL_WORKER_PRELOAD": "false",
        "EASEL_QUEUE_METRICS_INTERVAL_S": "0.5",
    }
    with isolated_stack(tmp_path_factory, postgres_url, models_dir, "obs-metrics", env) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def scrape(url: str) -> dict[str, list[tuple[Labels, float]]]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # nosec B310 - the stack's loopback URL
        text = resp.read().decode()
    samples: dict[str, list[tuple[Labels, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def values(samples: dict[str, list[tuple[Labels, float]]], name: str, labels: Labels) -> list[float]:
    return [v for got, v in samples.get(name, []) if all(got.get(k) == want for k, want in labels.items())]


async def _wait_job(http: aiohttp.ClientSession, base: str, job_id: str, auth: dict[str, str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with http.get(f"{base}/api/v1/jobs/{job_id}", headers=auth) as resp:
            status = str((await resp.json())["status"])
        if status in ("completed", "failed", "cancelled"):
            return status
        await asyncio.sleep(0.2)
    return "timed out"


async def test_every_process_exports_its_series(stack: Stack, http: aiohttp.ClientSession) -> None:
    base = stack.gateway_url
    username = f"met{uuid.uuid4().hex[:8]}"
    account = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    async with http.post(f"{base}/api/v1/auth/register", json=account) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(
        f"{base}/api/v1/auth/login", json={"username": username, "password": PASSWORD}
    ) as resp:
        assert resp.status == 200, await resp.text()
        auth = {"Authorization": f"Bearer {(await resp.json())['token']}"}

    body = {"prompt": "a red kite over hills", "steps": 2, "width": 64, "height": 64, "seed": 7}
    # The same seeded request twice: the second is answered from the result cache.
    for _ in range(2):
        async with http.post(f"{base}/api/v1/generations", json=body, headers=auth) as resp:
            assert resp.status == 202, await resp.text()
            job_id = (await resp.json())["job"]["id"]
        assert await _wait_job(http, base, job_id, auth) == "completed"
    async with http.post(
        f"{base}/api/v1/generations", json={**body, "model": "tiny-sdxl"}, headers=auth
    ) as resp:
        assert resp.status == 202, await resp.text()
    # Failures counted with their codes: no credential (401), an unknown job (gRPC NOT_FOUND).
    async with http.get(f"{base}/api/v1/images") as resp:
        assert resp.status == 401
    async with http.get(f"{base}/api/v1/jobs/{uuid.uuid4()}", headers=auth) as resp:
        assert resp.status == 404

    # The queue gauges are refreshed every 0.5 s here.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        api = scrape(stack.metrics_url("inference-api"))
        if values(api, "easel_inference_consumer_pending", {"model": "tiny-sdxl"}) == [1.0]:
            break
        await asyncio.sleep(0.3)

    missing: list[str] = []
    for process in POSITIVE:
        samples = scrape(stack.metrics_url(process))
        for name, labels in POSITIVE[process]:
            found = values(samples, name, labels)
            if not found or not any(v > 0 for v in found):
                missing.append(f"{process}: {name}{labels} = {found or 'absent'}")
        for name, labels in PRESENT.get(process, []):
            if not values(samples, name, labels):
                missing.append(f"{process}: {name}{labels} absent")
        # No series uses a label that Prometheus sets itself on every scraped series.
        for name, rows in samples.items():
            for got, _ in rows:
                clash = {"job", "instance", "service", "pod", "namespace"} & set(got)
                if name.startswith("easel_") and clash:
                    missing.append(f"{process}: {name} has the reserved label(s) {sorted(clash)}")
    assert not missing, "\n".join(missing)

    api = scrape(stack.metrics_url("inference-api"))
    assert values(api, "easel_inference_queue_depth", {"model": "tiny-sdxl"}) == [1.0]
    assert values(api, "easel_inference_queue_depth", {"model": "tiny-sd"}) == [0.0]
    worker = scrape(stack.metrics_url("inference-worker"))
    assert values(worker, "easel_inference_images_generated_total", {"model": "tiny-sd"}) == [1.0]
    # The repeat came from the cache: one hit out of the two tiny-sd submissions.
    assert values(api, "easel_inference_cache_hits_total", {"model": "tiny-sd"}) == [1.0]
    assert values(api, "easel_inference_jobs_submitted_total", {"model": "tiny-sd", "kind": "txt2img"}) == [
        2.0
    ]
    for process in ("auth", "gallery", "inference-api"):
        samples = scrape(stack.metrics_url(process))
        size = values(samples, "easel_db_pool_size", {})
        in_use = values(samples, "easel_db_pool_in_use", {})
        assert len(size) == len(in_use) == 1 and 0 <= in_use[0] <= size[0], (process, size, in_use)
