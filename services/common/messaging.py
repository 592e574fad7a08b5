"""JetStream helpers: connection, stream set-up, and publishing with message id and trace headers.

Streams (see ARCHITECTURE.md):
- `EASEL_JOBS`: work-queue retention, file storage, subjects `easel.jobs.<model>.<kind>`; the
  message id is the job id, so a re-published job is dropped by JetStream de-duplication.
- `EASEL_EVENTS`: limits retention, subjects `easel.events.>`; progress and completion events
  kept for a while so a restarted relay can catch up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from .config import SettingsError
from .telemetry import inject

log = logging.getLogger(__name__)
tracer = trace.get_tracer("easel.messaging")

JOBS_STREAM = "EASEL_JOBS"
EVENTS_STREAM = "EASEL_EVENTS"
JOBS_SUBJECT_PREFIX = "easel.jobs"
EVENTS_SUBJECT_PREFIX = "easel.events.job"
CANCEL_SUBJECT_PREFIX = "easel.control.cancel"


def job_subject(model: str, kind: str) -> str:
    return f"{JOBS_SUBJECT_PREFIX}.{model}.{kind}"


def event_subject(job_id: str) -> str:
    return f"{EVENTS_SUBJECT_PREFIX}.{job_id}"


def cancel_subject(job_id: str) -> str:
    return f"{CANCEL_SUBJECT_PREFIX}.{job_id}"


def worker_consumer_name(model: str) -> str:
    """The durable consumer shared by every worker that serves `model` (KEDA scales on its lag)."""
    return f"worker-{model}"


async def connect(url: str, name: str, wait_s: float = 15.0) -> NATS:
    """Connects (retrying for `wait_s`) or stops the process naming EASEL_NATS_URL."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await nats.connect(
                url,
                name=f"easel-{name}",
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
            )
        except (TimeoutError, NoServersError, OSError) as exc:
            if time.monotonic() > deadline:
                raise SettingsError(
                    "EASEL_NATS_URL",
                    f"cannot connect to NATS at {url} ({type(exc).__name__}); "
                    "start a NATS server with JetStream or point EASEL_NATS_URL at one",
                ) from None
            await asyncio.sleep(0.5)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with other settings: bring it in line with this code's.
        await js.update_stream(config)


async def ensure_streams(js: JetStreamContext) -> None:
    await _ensure_stream(
        js,
        StreamConfig(
            name=JOBS_STREAM,
            subjects=[f"{JOBS_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=600.0,
            discard=DiscardPolicy.OLD,
        ),
    )
    await _ensure_stream(
        js,
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[f"{EVENTS_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=24 * 3600.0,
            duplicate_window=120.0,
        ),
    )


def trace_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers: dict[str, str] = dict(extra or {})
    inject(headers)
    return headers


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    msg_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> int:
    """Publishes with trace headers (and `Nats-Msg-Id` when given); returns the stream sequence.

    The publish is a PRODUCER span and the headers carry it, so the consumer's span hangs below it.
    The span name keeps only the subject's family (`publish jobs`, `publish events`): subjects hold
    job ids, which would make every name unique.
    """
    family = subject.split(".")[1] if subject.count(".") >= 1 else subject
    with tracer.start_as_current_span(
        f"publish {family}",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ) as span:
        hdrs = trace_headers(headers)
        if msg_id:
            hdrs["Nats-Msg-Id"] = msg_id
        ack = await js.publish(subject, payload, headers=hdrs, timeout=5)
        span.set_attribute("messaging.nats.stream_sequence", int(ack.seq))
        if ack.duplicate:
            span.set_attribute("messaging.nats.duplicate", True)
        return int(ack.seq)
