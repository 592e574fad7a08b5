"""`/api/v1/generations`, `/api/v1/jobs`, `/api/v1/models`: the job API (kept by inference)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from easel.inference.v1 import inference_pb2
from services.common.errors import EaselError, invalid
from services.common.grpc_client import stream_user_errors, user_errors

from . import serialize
from .bodies import INT64_MAX, Body, query_int, read_json
from .clients import CLIENTS
from .principal import actor_of, needs_scope, require_principal
from .sse import EventStream, limited_stream
from .urls import settings_of

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)

_END = object()


def generation_params(body: Body) -> inference_pb2.GenerationParams:
    """Types are checked here; ranges (which depend on the model) by inference."""
    prompt = body.string("prompt", required=True, max_len=100_000, allow_empty=False)
    p = inference_pb2.GenerationParams(
        prompt=prompt or "",
        negative_prompt=body.string("negative_prompt", max_len=100_000) or "",
        # 0 means "the model default" on the wire, so an explicit value starts at 1.
        width=body.integer("width", minimum=1) or 0,
        height=body.integer("height", minimum=1) or 0,
        steps=body.integer("steps", minimum=1) or 0,
        sampler=body.string("sampler", max_len=100) or "",
        n=body.integer("n", minimum=1) or 0,
    )
    guidance = body.number("guidance")
    if guidance is not None:
        p.guidance = guidance
        p.has_guidance = True
    seed = body.integer("seed", minimum=-1, maximum=INT64_MAX)  # -1: random, as in AUTOMATIC1111
    if seed is not None:
        p.seed = seed
    return p


@routes.post("/api/v1/generations")
@needs_scope("generate")
async def create_generation(request: web.Request) -> web.Response:
    principal = require_principal(request)
    body = await read_json(request)
    params = generation_params(body)
    model = body.string("model", max_len=200) or ""
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > 200:
        raise invalid("invalid_idempotency_key", "Keep the Idempotency-Key header under 200 characters.")
    with user_errors("inference"):
        job = await request.app[CLIENTS].inference.SubmitJob(
            inference_pb2.SubmitJobRequest(
                actor=principal.actor, kind="txt2img", model=model, params=params, idempotency_key=key
            )
        )
    return web.json_response(
        {"job": serialize.job(request, job)},
        status=202,
        headers={"Location": f"/api/v1/jobs/{job.id}"},
    )


@routes.get("/api/v1/jobs")
@needs_scope("generate")
async def list_jobs(request: web.Request) -> web.Response:
    principal = require_principal(request)
    limit = query_int(request, "limit", 20, 1, 100)
    with user_errors("inference"):
        found = await request.app[CLIENTS].inference.ListJobs(
            inference_pb2.ListJobsRequest(
                actor=principal.actor, limit=limit, cursor=request.query.get("cursor", "")
            )
        )
    return web.json_response(
        {"items": [serialize.job(request, j) for j in found.jobs], "next_cursor": found.next_cursor or None}
    )


@routes.get("/api/v1/jobs/{job_id}")
@needs_scope("generate")
async def get_job(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("inference"):
        job = await request.app[CLIENTS].inference.GetJob(
            inference_pb2.GetJobRequest(actor=principal.actor, job_id=request.match_info["job_id"])
        )
    return web.json_response(serialize.job(request, job))


@routes.post("/api/v1/jobs/{job_id}/cancel")
@needs_scope("generate")
async def cancel_job(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("inference"):
        job = await request.app[CLIENTS].inference.CancelJob(
            inference_pb2.CancelJobRequest(actor=principal.actor, job_id=request.match_info["job_id"])
        )
    return web.json_response({"job": serialize.job(request, job)}, status=202)


def last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or ""
    try:
        return int(raw.strip())
    except ValueError:
        return -1


@routes.get("/api/v1/jobs/{job_id}/events")
@needs_scope("generate")
@limited_stream
async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events from WatchJob until the job ends. `id:` is the event's seq; a reconnect
    with Last-Event-ID gets only what it has not seen, and 204 (EventSource then stops) when the job
    had already ended."""
    require_principal(request)
    keepalive = settings_of(request).sse_keepalive_s
    shutting_down = request.app[SHUTTING_DOWN]
    seen = last_event_id(request)
    call = request.app[CLIENTS].inference.WatchJob(
        inference_pb2.WatchJobRequest(actor=actor_of(request), job_id=request.match_info["job_id"])
    )
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in stream_user_errors("inference", call):
                await queue.put(event)
        except EaselError as exc:
            await queue.put(exc)
        finally:
            await queue.put(_END)

    reader = asyncio.create_task(pump())
    stopping = asyncio.create_task(shutting_down.wait())
    stream = EventStream(request)
    getter: asyncio.Task[object] | None = None
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, stopping}, timeout=keepalive, return_when="FIRST_COMPLETED")
            if getter not in done:
                getter.cancel()
                if stopping in done:
                    # End with a 200 (never the 204 that means "job over"): EventSource reconnects.
                    await stream.comment("server restarting")
                    break
                await stream.comment()
                continue
            item = getter.result()
            if item is _END:
                break
            if isinstance(item, EaselError):
                if not stream.prepared:
                    raise item
                if item.http_status < 500:
                    await stream.send(item.to_json()["error"], event="error")
                # A passing outage (inference restarting): end quietly, EventSource reconnects
                # with Last-Event-ID and carries on where it was.
                break
            if not isinstance(item, inference_pb2.JobEvent):
                continue
            if item.seq <= seen:
                continue
            seen = item.seq
            await stream.send(serialize.job(request, item.job), event=item.type, event_id=str(item.seq))
            if item.type in serialize.TERMINAL or item.job.status in serialize.TERMINAL:
                break
    except ConnectionResetError:
        log.debug("event stream client went away")
        return stream.response
    finally:
        call.cancel()
        stopping.cancel()
        if getter is not None:
            getter.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    if not stream.prepared:
        return web.Response(status=204)
    with contextlib.suppress(ConnectionResetError):
        await stream.close()
    return stream.response


@routes.get("/api/v1/models")
@needs_scope("generate")
async def list_models(request: web.Request) -> web.Response:
    require_principal(request)
    with user_errors("inference"):
        found = await request.app[CLIENTS].inference.ListModels(inference_pb2.ListModelsRequest())
    return web.json_response({"items": [serialize.model(m) for m in found.models]})
