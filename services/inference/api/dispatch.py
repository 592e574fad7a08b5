"""Fair dispatch: which waiting job goes to the workers next, across owners, api replicas and workers.

Why: a FIFO work queue lets one user who keeps the maximum backlog in flight make everyone else wait
behind all of it (issue 18: a 64x64 job waited 338 s). So jobs wait in Postgres, and NATS holds only a
small window of them per model:

- Window. A model's jobs are published to `easel.jobs.<model>.<kind>` only while fewer than
  `EASEL_DISPATCH_WINDOW` of them are sent and not yet denoised: queued with `dispatched_at` set (in
  the stream, or fetched by a worker that has not begun them) or running before their last denoising
  step. A job frees its place when its last step is done (the worker reports that step, and the VAE
  decode, PNGs and upload of its batch then overlap the next batch's dispatch and fetch), or when it
  ends or is cancelled. With the window at what the workers denoise at once (batch size times
  workers), nothing is committed ahead of a running batch: a newcomer's job waits for about the
  batch running now, not for a whole backlog nor for a batch queued ahead of it.
- Order. Start-time fair queueing over owners, each job weighted by its cost (pixel-steps: width x
  height x steps x images). At submit a job gets the start tag max(clock, owner's virtual finish) and
  moves the owner's virtual finish on by its cost (migration 0003's `submit_job`, under the owner's
  lock). The dispatcher sends held jobs in (start tag, created_at, id) order and moves the clock to
  the largest tag sent. An owner with a long backlog has tags far ahead of the clock; a newcomer
  starts at the clock, so their job goes out next; two backlogged owners alternate in proportion to
  cost. Idle owners earn no credit (their tag is never below the clock).
- Replicas. One dispatch is a transaction holding the model's advisory lock: it counts the window,
  locks the next held jobs, publishes them (message id = job id, so JetStream drops a repeat), marks
  them sent, advances the clock, commits. Two replicas never send past the window; a replica that
  dies after publishing and before committing leaves the jobs held, and the next dispatch publishes
  them again, which JetStream de-duplicates.
- Triggers. A submit, an event that starts or ends a job or reports its last denoising step (the
  api applies every worker event), a cancel, and a periodic tick (which also retries after NATS or
  Postgres was down). Kicks for a model coalesce within a replica: at most one dispatch per model
  runs at once, plus one more if kicked meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import asyncpg
import nats.errors
from nats.js import JetStreamContext
from opentelemetry import context as otel_context

from services.common.messaging import job_subject, publish
from services.common.telemetry import extract
from services.inference.messages import JobParams, WorkMessage

from .metrics import JOBS_DISPATCHED
from .store import JOB_COLUMNS, JobRow, job_cost

log = logging.getLogger(__name__)

NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)

__all__ = ["Dispatcher", "job_cost"]


def work_message(row: JobRow) -> WorkMessage:
    return WorkMessage(
        job_id=row.id,
        owner_id=row.owner_id,
        owner_username=row.owner_username,
        kind=row.kind,
        model=row.model,
        params=JobParams.model_validate(row.params),
        submitted_at=row.created_at.timestamp(),
    )


async def publish_job(js: JetStreamContext, row: JobRow) -> None:
    """Publishes a job's work message (message id = job id) in its submit's trace.

    The PRODUCER span hangs directly under the SubmitJob span that stored the job, as when the submit
    published it itself, so the worker's job span still continues the client's trace.
    """
    token = otel_context.attach(extract(row.trace))
    try:
        await publish(js, job_subject(row.model, row.kind), work_message(row).encode(), msg_id=row.id)
    finally:
        otel_context.detach(token)


class Dispatcher:
    def __init__(
        self, pool: asyncpg.Pool, js: JetStreamContext, window: int, interval_s: float = 1.0
    ) -> None:
        self.pool = pool
        self.js = js
        self.window = window
        self.interval_s = interval_s
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def dispatch(self, model: str) -> list[str]:
        """Sends `model`'s next held jobs while the window has room; returns their ids, in order."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('easel-dispatch:' || $1))", model)
            sent = await conn.fetchval(
                """SELECT count(*) FROM jobs
                   WHERE model = $1 AND dispatched_at IS NOT NULL
                     AND (status = 'queued' OR (status = 'running' AND step < steps))""",
                model,
            )
            room = self.window - int(sent)
            if room <= 0:
                return []
            records = await conn.fetch(
                f"""SELECT {JOB_COLUMNS} FROM jobs
                    WHERE model = $1 AND status = 'queued' AND dispatched_at IS NULL
                      AND dispatch_after <= now()
                    ORDER BY vstart, created_at, id LIMIT $2 FOR UPDATE""",  # nosec B608  # constant SQL only; values are $n parameters
                model,
                room,
            )
            done: list[JobRow] = []
            for record in records:
                row = JobRow.from_record(record)
                try:
                    await publish_job(self.js, row)
                except NATS_ERRORS as exc:
                    # The rest stay held; the next kick or tick sends them.
                    log.warning("could not send job %s: %s", row.id, type(exc).__name__)
                    break
                done.append(row)
            if not done:
                return []
            await conn.execute(
                "UPDATE jobs SET dispatched_at = clock_timestamp() WHERE id = ANY($1::uuid[])",
                [uuid.UUID(r.id) for r in done],
            )
            await conn.execute(
                "UPDATE dispatch_clock SET vtime = GREATEST(vtime, $1)", max(r.vstart for r in done)
            )
        JOBS_DISPATCHED.labels(model).inc(len(done))
        return [r.id for r in done]

    async def republish(self, row: JobRow) -> None:
        """A client's retry of a submit: publish again if it was sent (JetStream drops a repeat), or
        kick the model if it is still held (its first attempt may have died before the dispatch)."""
        if row.dispatched_at is not None:
            await publish_job(self.js, row)
        else:
            self.kick(row.model)

    def kick(self, model: str) -> None:
        """Asks for a dispatch of `model` soon; kicks coalesce (one running, one more queued)."""
        if model in self._running:
            self._again.add(model)
            return
        self._running.add(model)
        task = asyncio.create_task(self._drain(model), name=f"dispatch-{model}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, model: str) -> None:
        try:
            while True:
                self._again.discard(model)
                try:
                    await self.dispatch(model)
                except DB_ERRORS as exc:
                    log.warning("dispatch of %s failed: %s", model, type(exc).__name__)
                except Exception:  # a bug must not silence dispatch: the tick tries again
                    log.exception("dispatch of %s failed", model)
                if model not in self._again:
                    return
        finally:
            self._running.discard(model)

    async def held_models(self) -> list[str]:
        records = await self.pool.fetch(
            "SELECT DISTINCT model FROM jobs WHERE status = 'queued' AND dispatched_at IS NULL"
        )
        return [r["model"] for r in records]

    async def run(self) -> None:
        """The periodic tick: every model with held jobs gets a dispatch."""
        while True:
            try:
                for model in await self.held_models():
                    self.kick(model)
            except DB_ERRORS as exc:
                log.warning("listing held jobs failed: %s", type(exc).__name__)
            except Exception:  # the tick must never end the api
                log.exception("dispatch tick failed")
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
