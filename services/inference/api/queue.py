"""Queue depth and consumer lag per model, read from JetStream every few seconds for /metrics.

Each model's workers share the durable pull consumer `worker-<model>` on `EASEL_JOBS`; its info says
how many jobs were not delivered yet (`num_pending`) and how many are with a worker (`num_ack_pending`).
Before the first worker for a model has created that consumer, the jobs waiting on the model's
subjects are counted from the stream itself, so a model with no worker at all still shows its queue.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.common.messaging import JOBS_STREAM, job_subject, worker_consumer_name

from .metrics import CONSUMER_ACK_PENDING, CONSUMER_PENDING, JOBS_HELD, QUEUE_DEPTH
from .validation import ModelCatalog

log = logging.getLogger(__name__)


async def read_queue(js: JetStreamContext, model: str) -> tuple[int, int]:
    """(not yet delivered, delivered and not acked) for `model`'s work queue."""
    try:
        info = await js.consumer_info(JOBS_STREAM, worker_consumer_name(model), timeout=2)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
    except NotFoundError:
        stream = await js.stream_info(JOBS_STREAM, subjects_filter=job_subject(model, ">"))
        return sum((stream.state.subjects or {}).values()), 0


class QueueMetrics:
    def __init__(
        self, js: JetStreamContext, catalog: ModelCatalog, interval_s: float, pool: asyncpg.Pool | None = None
    ) -> None:
        self.pool = pool
        self.js = js
        self.catalog = catalog
        self.interval_s = interval_s
        self._reported: set[str] = set()

    async def held(self) -> dict[str, int]:
        """Jobs per model waiting in the fair queue (Postgres), not yet sent to the workers."""
        if self.pool is None:
            return {}
        records = await self.pool.fetch(
            """SELECT model, count(*) AS n FROM jobs
               WHERE status = 'queued' AND dispatched_at IS NULL GROUP BY model"""
        )
        return {r["model"]: int(r["n"]) for r in records}

    async def refresh(self) -> None:
        models = set(await self.catalog.models())
        try:
            held = await self.held()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.debug("counting held jobs failed: %s", type(exc).__name__)
            held = None
        if held is not None:
            for model in models:
                JOBS_HELD.labels(model).set(held.get(model, 0))
        for model in sorted(models):
            try:
                pending, ack_pending = await read_queue(self.js, model)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                # Keep the last figures: a gap would read as an empty queue.
                log.debug("reading the queue of %s failed: %s", model, type(exc).__name__)
                continue
            CONSUMER_PENDING.labels(model).set(pending)
            CONSUMER_ACK_PENDING.labels(model).set(ack_pending)
            QUEUE_DEPTH.labels(model).set(pending + ack_pending)
        # A model taken off the volume stops being reported instead of freezing at its last value.
        for gone in self._reported - models:
            for gauge in (CONSUMER_PENDING, CONSUMER_ACK_PENDING, QUEUE_DEPTH, JOBS_HELD):
                try:
                    gauge.remove(gone)
                except KeyError:
                    pass
        self._reported = models

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a metrics hiccup must never end the api
                log.exception("refreshing queue metrics failed")
            await asyncio.sleep(self.interval_s)
