"""The JetStream delivery protocol of a job message: open, heartbeat, report, then ack, nak or term.

Delivery rules (see ARCHITECTURE.md, Messaging):
- success: images to gallery (idempotent per job and index), then the completed event (de-duplicated
  by `<job_id>.completed`), then the claim marked completed, then ack. A brief outage of the gallery
  or NATS is retried with the images in hand (EASEL_WORKER_HANDOFF_S) before any nak. A worker
  killed anywhere before the ack loses nothing: the message comes back after ack_wait and the same
  seeds make the same images again.
- retryable failure (gallery or NATS unavailable, a model that will not load here): nak with a
  delay; on the last allowed delivery it becomes a permanent failure.
- permanent failure (bad input): failed event with code and message, then term.
- cancelled: a cancelled event, then ack (the job is done, not retried).
- while a job is held (queued behind the GPU, generating, being handed to the gallery), a heartbeat
  sends `in_progress` every third of ack_wait, so JetStream does not hand it to another worker.
- a job already finished (its claim final, see claims.py: say its ack was lost) is acked without
  work; a delivery whose claim a later delivery took over (this worker was paused past its ack
  window) is dropped: no images stored, no event, not settled.

Examples, for one job message:

    job = deliveries.open("tiny-sd", msg)       # None: unreadable, already termed
    if not await deliveries.take(job):          # finished already: acked without work
        return
    beat = asyncio.create_task(deliveries.heartbeat([job]))
    ...
    if not await deliveries.still_ours(job):    # taken over while this worker was paused
        deliveries.drop(job)
    ...                                         # admit, generate, hand off
    await deliveries.retry(job, "tiny-sd", Retry("gallery_unavailable", "..."))  # nak(2 s), or
                                                # failed + term on the last allowed delivery
    await deliveries.fail(job, "tiny-sd", invalid("bad_size", "..."))            # failed + term
    await deliveries.cancelled(job, "tiny-sd")  # cancelled + ack
    await deliveries.finish(job, "completed")   # after the completed event, then
    await deliveries.settle(job, "ack")

A job is settled once: every later call on it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common.errors import EaselError
from services.common.messaging import event_subject, publish, trace_headers
from services.common.telemetry import extract
from services.inference.engine import GenerationRequest
from services.inference.messages import JobEventMessage, MessageError, WorkMessage

from .metrics import JOBS_PROCESSED

if TYPE_CHECKING:
    from .claims import Claims

log = logging.getLogger(__name__)
tracer = trace.get_tracer("easel.inference.worker")

NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


class Retry(Exception):
    """Worth another delivery; `code` and `message` are what the user sees if none is left."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class Job:
    """One delivery of a job message, from fetch to ack, nak or term."""

    msg: Msg
    work: WorkMessage
    attempt: int
    span: Span
    req: GenerationRequest | None = None
    width: int = 0
    height: int = 0
    cancelled: bool = False
    cancel_reported: bool = False
    settled: bool = False
    step: int = 0
    steps: int = 0
    pending: list[asyncio.Task[None]] = field(default_factory=list)
    # The revision of this delivery's claim (None: unfenced), and whether a later delivery took it.
    claim: int | None = None
    superseded: bool = False

    @property
    def id(self) -> str:
        return self.work.job_id


class Deliveries:
    """Opens, keeps alive, reports on and settles job messages, by the rules above."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        worker: str,
        max_deliver: int,
        ack_wait_s: float,
        claims: Claims | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.worker = worker
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self.claims = claims
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, model: str, msg: Msg) -> Job | None:
        """The delivery as a Job, or None for an unreadable message (termed: no delivery reads it)."""
        try:
            work = WorkMessage.decode(msg.data)
        except MessageError as exc:
            log.error("dropping an unreadable job message on %s: %s", msg.subject, exc)
            task = asyncio.ensure_future(msg.term())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return None
        attempt = msg.metadata.num_delivered if msg.reply else 1
        span = tracer.start_span(
            "inference.job",
            context=extract(dict(msg.headers or {})),
            kind=SpanKind.CONSUMER,
            attributes={
                "easel.job_id": work.job_id,
                "easel.model": work.model,
                "easel.kind": work.kind,
                "easel.attempt": attempt,
                "easel.images": work.params.n,
            },
        )
        return Job(msg=msg, work=work, attempt=attempt, span=span)

    async def heartbeat(self, jobs: list[Job]) -> None:
        """Keeps JetStream from handing our jobs to another worker while we still work on them, and
        notices a job taken over meanwhile (this worker was paused): its generation then stops."""
        interval = max(0.5, self.ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval)
            for job in jobs:
                if not job.settled:
                    with contextlib.suppress(*NATS_ERRORS):
                        await job.msg.in_progress()
            held = [job for job in jobs if not job.settled and job.claim is not None]
            await asyncio.gather(*(self.still_ours(job) for job in held))

    # --- claims (see claims.py) ------------------------------------------------------------------

    async def take(self, job: Job) -> bool:
        """Claims the job for this delivery; False when it is finished already (then acked)."""
        if self.claims is None:
            return True
        taken = await self.claims.take(job.id, job.attempt)
        if taken.final is not None:
            await self.settle(job, "ack")
            JOBS_PROCESSED.labels(job.work.model, "finished").inc()
            self.log(job, logging.INFO, "job already finished: acked without work", final=taken.final)
            return False
        job.claim = taken.revision
        return True

    async def still_ours(self, job: Job) -> bool:
        """False once a later delivery (or a final outcome) replaced this delivery's claim."""
        if job.superseded:
            return False
        if self.claims is None or job.claim is None:
            return True
        if not await self.claims.still_ours(job.id, job.claim):
            job.superseded = True
        return not job.superseded

    async def finish(self, job: Job, state: str) -> None:
        """Records the job's final outcome in its claim (before the message is settled)."""
        if self.claims is None or job.settled:
            return
        job.claim = None  # our own write changes the revision: no fence from here on
        await self.claims.finish(job.id, state, job.attempt)

    def drop(self, job: Job) -> None:
        """Lets go of a delivery a later one took over: nothing stored, reported or settled (its ack
        or nak could settle the other worker's delivery of the same message)."""
        if job.settled:
            return
        job.settled = True
        JOBS_PROCESSED.labels(job.work.model, "superseded").inc()
        self.log(job, logging.WARNING, "job taken over by a later delivery: dropped", attempt=job.attempt)

    # --- reporting -------------------------------------------------------------------------------

    @staticmethod
    def log(job: Job, level: int, message: str, **extra: Any) -> None:
        """A log line carrying the job's trace id, so it sits beside the api's and gallery's lines."""
        with trace.use_span(job.span, end_on_exit=False):
            log.log(level, message, extra={"job_id": job.id, **extra})

    async def event(self, job: Job, type_: str, **fields: Any) -> None:
        """Publishes a job event; a lost one is logged (the final event decides the job's state)."""
        event = JobEventMessage(job_id=job.id, type=type_, attempt=job.attempt, worker=self.worker, **fields)
        data = event.encode()
        with trace.use_span(job.span, end_on_exit=False):
            try:
                if type_ in ("progress", "running"):
                    # Progress is frequent and disposable, and "running" only comes before the job's
                    # final event, which is acknowledged: no JetStream ack round trip (one per job
                    # of a batch, while the GPU waits). The stream still stores them, in order.
                    await self.nc.publish(event_subject(job.id), data, headers=trace_headers())
                else:
                    await publish(self.js, event_subject(job.id), data)
            except NATS_ERRORS as exc:
                log.warning(
                    "could not publish %s event: %s", type_, type(exc).__name__, extra={"job_id": job.id}
                )

    async def cancelled(self, job: Job, model: str) -> None:
        """A cancelled event, then ack."""
        if job.settled or job.cancel_reported:
            return
        if job.superseded:
            self.drop(job)
            return
        job.cancel_reported = True
        await self.event(job, "cancelled", step=job.step, steps=job.steps)
        await self.finish(job, "cancelled")
        await self.settle(job, "ack")
        JOBS_PROCESSED.labels(model, "cancelled").inc()
        self.log(job, logging.INFO, "job cancelled", step=job.step)

    async def fail(self, job: Job, model: str, exc: EaselError) -> None:
        """A failed event with the error's code and sentence, then term."""
        if job.settled:
            return
        if job.superseded:
            self.drop(job)
            return
        job.span.set_status(Status(StatusCode.ERROR, exc.code))
        await self.event(job, "failed", error_code=exc.code, error_message=exc.message, step=job.step)
        await self.finish(job, "failed")
        await self.settle(job, "term")
        JOBS_PROCESSED.labels(model, "failed").inc()
        self.log(job, logging.INFO, "job failed", error_code=exc.code, attempt=job.attempt)

    async def retry(self, job: Job, model: str, exc: Retry) -> None:
        """Nak with a growing delay; on the last allowed delivery, a permanent failure."""
        if job.settled:
            return
        if job.superseded:
            self.drop(job)
            return
        if job.attempt >= self.max_deliver:
            await self.fail(job, model, EaselError(exc.code, exc.message, grpc.StatusCode.UNAVAILABLE))
            return
        delay = min(2.0**job.attempt, 30.0)
        self.log(job, logging.WARNING, "job will be retried", reason=exc.code, delay_s=delay)
        await self.nak(job, delay)
        JOBS_PROCESSED.labels(model, "retried").inc()

    async def nak(self, job: Job, delay: float) -> None:
        if job.superseded:
            self.drop(job)
            return
        await self.settle(job, "nak", delay)

    async def settle(self, job: Job, how: str, delay: float = 0.0) -> None:
        """Acks, terms or naks the delivery, once."""
        if job.settled:
            return
        job.settled = True
        try:
            if how == "ack":
                await job.msg.ack()
            elif how == "term":
                await job.msg.term()
            else:
                await job.msg.nak(delay=delay or None)
        except NATS_ERRORS as exc:
            # The message comes back after ack_wait; every step before is idempotent.
            log.warning("could not %s job message: %s", how, type(exc).__name__, extra={"job_id": job.id})
