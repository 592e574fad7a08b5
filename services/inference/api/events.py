"""Keeps the jobs table current from worker events.

One durable pull consumer on `EASEL_EVENTS`, shared by every api replica: each event is applied by
one replica, in any order, because the row update itself ignores events older than the row's.

A job whose every delivery died with its worker (killed for memory, node lost) produces no event of
its own; JetStream's max-deliveries advisory tells the api, which fails the job and removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

import asyncpg
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.common.messaging import (
    EVENTS_STREAM,
    EVENTS_SUBJECT_PREFIX,
    JOBS_STREAM,
    event_subject,
    publish,
)
from services.common.telemetry import extract
from services.inference.messages import JobEventMessage, MessageError, WorkMessage

from .metrics import EVENTS_APPLIED, JOBS_FINISHED
from .store import JobRow, JobStore

log = logging.getLogger(__name__)

tracer = trace.get_tracer("easel.inference.api")

CONSUMER = "inference-api-events"
FETCH_BATCH = 64
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.*"


def note_applied(event: JobEventMessage, row: JobRow | None) -> None:
    """Metrics and a log line for an event applied to the table (by the applier or a watcher)."""
    EVENTS_APPLIED.labels(event.type, "applied" if row else "stale").inc()
    if row is not None and row.terminal:
        JOBS_FINISHED.labels(row.model, row.status).inc()
        log.info(
            "job finished", extra={"job_id": row.id, "status": row.status, "error_code": row.error_code or ""}
        )


def frees_dispatch(event: JobEventMessage) -> bool:
    """Whether the event may have freed a place in the dispatch window: a job started, ended, or
    reported its last denoising step (api/dispatch.py)."""
    return event.type != "progress" or (event.steps > 0 and event.step >= event.steps)


class EventApplier:
    def __init__(
        self, js: JetStreamContext, store: JobStore, on_change: Callable[[str], None] | None = None
    ) -> None:
        self.js = js
        self.store = store
        # Told the model of every job an event started or ended: the dispatcher's cue to send more.
        self.on_change = on_change
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def bind(self) -> JetStreamContext.PullSubscription:
        await self.js.add_consumer(
            EVENTS_STREAM,
            ConsumerConfig(
                name=CONSUMER,
                durable_name=CONSUMER,
                filter_subject=f"{EVENTS_SUBJECT_PREFIX}.>",
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_ack_pending=10_000,
            ),
        )
        return await self.js.pull_subscribe_bind(durable=CONSUMER, stream=EVENTS_STREAM)

    async def run(self, sub: JetStreamContext.PullSubscription) -> None:
        try:
            await self._run(sub)
        finally:
            # nats-py's drain would wait on a pull subscription's internal queue forever.
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
            except TimeoutError:  # nats raises its own or the plain one
                continue
            except (nats.errors.Error, OSError) as exc:
                log.warning("event fetch failed: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        try:
            event = JobEventMessage.decode(msg.data)
        except MessageError as exc:
            log.warning("dropping unreadable event on %s: %s", msg.subject, exc)
            await msg.term()
            return
        try:
            with tracer.start_as_current_span(
                "inference.apply_event",
                context=extract(dict(msg.headers or {})),
                kind=SpanKind.CONSUMER,
                attributes={"easel.job_id": event.job_id, "easel.event": event.type},
            ):
                row = await self.store.apply_event(event, msg.metadata.sequence.stream)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("could not apply event for job %s: %s", event.job_id, type(exc).__name__)
            await msg.nak(delay=2.0)
            return
        note_applied(event, row)
        if row is not None and self.on_change is not None and frees_dispatch(event):
            self.on_change(row.model)
        try:
            await msg.ack()
        except nats.errors.Error:
            # The event comes again and is then stale: harmless.
            pass


class AbandonedJobs:
    """Fails jobs that ran out of deliveries without any worker reporting back."""

    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js
        self._sub: Subscription | None = None

    async def start(self) -> None:
        # A queue group: one api replica handles each advisory.
        self._sub = await self.nc.subscribe(
            MAX_DELIVERIES_ADVISORY, queue="inference-api", cb=self._on_advisory
        )

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError):
            return
        try:
            raw = await self.js.get_msg(JOBS_STREAM, seq)
            work = WorkMessage.decode(raw.data or b"")
        except MessageError:
            return
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            log.warning("could not read abandoned job message %s: %s", seq, type(exc).__name__)
            return
        event = JobEventMessage(
            job_id=work.job_id,
            type="failed",
            error_code="worker_failed",
            error_message=(
                f"The job was started {deliveries} times and no worker finished it; try again with fewer "
                "or smaller images, and report it if it keeps happening."
            ),
        )
        try:
            await publish(self.js, event_subject(work.job_id), event.encode(), msg_id=f"{work.job_id}.failed")
            # Work-queue messages stay until acknowledged; this one never will be.
            await self.js.delete_msg(JOBS_STREAM, seq)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            log.warning("could not fail abandoned job %s: %s", work.job_id, type(exc).__name__)
            return
        log.warning("job abandoned after %d deliveries", deliveries, extra={"job_id": work.job_id})
