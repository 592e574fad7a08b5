"""`/api/v1/generations`, `/api/v1/jobs`, `/api/v1/models`: the job API (kept by inference)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from easel.inference.v1 import inference_pb2
from services.common import limits
from services.common.errors import EaselError, invalid

from .. import models, serialize
from ..registry import REST, Area, Call
from ..sse import EventStream
from .params import BODY, CHANGE, IDEMPOTENCY_KEY, JOB_ID, LAST_EVENT_ID, LIMIT, LIST, ONE, PAGED, READ

log = logging.getLogger(__name__)

_END = object()
ACCEPTED = "Accepted; follow the job at Location or its /events."
QUOTA = "Quota or queue limit reached; wait for Retry-After seconds."
NO_MODEL = "No such model (`model_not_found`); the message names the installed ones."
LOCATION = {"Location": "/api/v1/jobs/{id}"}
JOBS = Area(REST, "jobs", scope="generate")


def generation_params(
    body: models.GenerationRequest, prompt: str | None = None
) -> inference_pb2.GenerationParams:
    """The wire form of a request's parameters: 0 and unset fields mean "the model default"."""
    p = inference_pb2.GenerationParams(
        prompt=body.prompt if prompt is None else prompt,
        negative_prompt=body.negative_prompt or "",
        width=body.width or 0,
        height=body.height or 0,
        steps=body.steps or 0,
        sampler=body.sampler or "",
        n=body.n or 0,
    )
    if body.guidance is not None:
        p.guidance = body.guidance
        p.has_guidance = True
    if body.seed is not None:
        p.seed = body.seed
    return p


def idempotency_key(call: Call[Any]) -> str:
    key: str = call.param(IDEMPOTENCY_KEY)
    if len(key) > limits.IDEMPOTENCY_KEY_MAX_CHARS:
        raise invalid(
            "invalid_idempotency_key",
            f"Keep the Idempotency-Key header under {limits.IDEMPOTENCY_KEY_MAX_CHARS} characters.",
        )
    return key


def accepted(call: Call[Any], job: inference_pb2.Job) -> models.JobEnvelope:
    """A submitted job's answer, with the Location to follow it at."""
    call.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return {"job": serialize.job(call.request, job)}


@JOBS.op(
    "POST", "/api/v1/generations", "Turn a prompt into images (queues a txt2img job)", models.JobEnvelope,
    body=models.GenerationRequest, status=202, errors=(*BODY, 404, 429), params=(IDEMPOTENCY_KEY,),
    headers=LOCATION, notes={404: NO_MODEL, 429: QUOTA},
)  # fmt: skip
async def create_generation(call: Call[models.GenerationRequest]) -> models.JobEnvelope:
    """Accepted; follow the job at Location or its /events."""
    key = idempotency_key(call)
    job = await call.backend.submit_job(
        call.principal.actor, "txt2img", call.body.model or "", generation_params(call.body), key
    )
    return accepted(call, job)


@JOBS.op("GET", "/api/v1/jobs", "My jobs, newest first", models.JobPage, errors=LIST, params=PAGED)
async def list_jobs(call: Call[None]) -> models.JobPage:
    found = await call.backend.list_jobs(call.principal.actor, call.param(LIMIT) or 20, call.query("cursor"))
    return {
        "items": [serialize.job(call.request, j) for j in found.jobs],
        "next_cursor": found.next_cursor or None,
    }


@JOBS.op("GET", "/api/v1/jobs/{job_id}", "A job's state", models.Job, errors=ONE, params=(JOB_ID,))
async def get_job(call: Call[None]) -> models.Job:
    return serialize.job(call.request, await call.backend.get_job(call.principal.actor, call.path("job_id")))


@JOBS.op(
    "POST", "/api/v1/jobs/{job_id}/cancel", "Cancel a queued or running job", models.JobEnvelope, status=202,
    errors=(*CHANGE, 409), params=(JOB_ID,), notes={409: "The job has already ended."},
)  # fmt: skip
async def cancel_job(call: Call[None]) -> models.JobEnvelope:
    """Cancellation requested."""
    return {
        "job": serialize.job(
            call.request, await call.backend.cancel_job(call.principal.actor, call.path("job_id"))
        )
    }


def last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or ""
    try:
        return int(raw.strip())
    except ValueError:
        return -1


EVENTS = {
    "200": {
        "description": "text/event-stream. Each event: `id:` the event's sequence number, `event:` one of "
        "queued, running, progress, completed, failed, cancelled, and `data:` the Job as JSON. The stream "
        "ends after the terminal event. Comment lines keep idle connections open. An `error` event carries "
        "{code, message} if the stream fails for good; after a passing outage the stream just ends and the "
        "client reconnects with Last-Event-ID.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    "204": {"description": "Nothing newer than Last-Event-ID and the job has ended."},
}


@JOBS.op(
    "GET", "/api/v1/jobs/{job_id}/events", "Follow a job as server-sent events until it ends",
    errors=ONE, params=(JOB_ID, LAST_EVENT_ID), responses=EVENTS,
)  # fmt: skip
async def job_events(call: Call[None]) -> web.StreamResponse:
    """Server-sent events from WatchJob until the job ends. `id:` is the event's seq; a reconnect
    with Last-Event-ID gets only what it has not seen, and 204 (EventSource then stops) when the job
    had already ended. Each stream holds one of its owner's stream slots while it is open."""
    limit = call.state.settings.sse_max_streams_per_user
    with call.state.stream_slots.hold(call.principal.user_id, limit):
        return await _follow(call)


async def _follow(call: Call[None]) -> web.StreamResponse:
    request = call.request
    keepalive = call.state.settings.sse_keepalive_s
    seen = last_event_id(request)
    events = call.backend.watch_job(call.principal.actor, call.path("job_id"))
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put(event)
        except EaselError as exc:
            await queue.put(exc)
        finally:
            await queue.put(_END)

    reader = asyncio.create_task(pump())
    stopping = asyncio.create_task(call.state.shutting_down.wait())
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
            if not isinstance(item, inference_pb2.JobEvent) or item.seq <= seen:
                continue
            seen = item.seq
            await stream.send(serialize.job(request, item.job), event=item.type, event_id=str(item.seq))
            if item.type in limits.TERMINAL_STATUSES or item.job.status in limits.TERMINAL_STATUSES:
                break
    except ConnectionResetError:
        log.debug("event stream client went away")
        return stream.response
    finally:
        stopping.cancel()
        if getter is not None:
            getter.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await events.aclose()
    if not stream.prepared:
        return web.Response(status=204)
    with contextlib.suppress(ConnectionResetError):
        await stream.close()
    return stream.response


@JOBS.op("GET", "/api/v1/models", "Installed models with their defaults", models.ModelList, errors=READ)
async def list_models(call: Call[None]) -> models.ModelList:
    return {"items": [serialize.model(m) for m in await call.backend.list_models()]}
