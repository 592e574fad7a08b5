"""The worker loop: pull jobs per model, open their deliveries, admit, batch, generate, hand off.

The pieces, each in its module:
- delivery.py: the JetStream delivery protocol (open, heartbeat, events, ack, nak, term, the
  max-deliver rule), with the delivery rules;
- admission.py: a job message becomes a checked GenerationRequest, or is settled early;
- batches.py: grouping compatible jobs and running each group on the generation thread;
- handoff.py: the finished images to the gallery, the completed event, the ack;
- claims.py: who holds each job, so a finished or taken-over job is not done twice;
- liveness.py: the stall clock behind /livez.

This module binds the consumers, fetches, keeps BATCHES_IN_HAND batches going at once, and tracks
cancellations.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections import OrderedDict

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from easel.gallery.v1 import gallery_pb2_grpc
from services.common.messaging import (
    CANCEL_SUBJECT_PREFIX,
    JOBS_STREAM,
    job_subject,
    worker_consumer_name,
)
from services.inference.engine import Engine
from services.inference.models import ModelManifest

from .admission import Admission, decode_image, fit_size
from .batches import Batches
from .claims import Claims
from .delivery import NATS_ERRORS, Deliveries, Job, Retry
from .generation_thread import GenerationThread
from .handoff import RETRYABLE_RPC, Handoff, new_images
from .liveness import StallClock
from .metrics import JOBS_RUNNING, MODEL_LOAD_TIME
from .settings import WorkerSettings

__all__ = [
    "BATCHES_IN_HAND",
    "RETRYABLE_RPC",
    "Job",
    "Retry",
    "Worker",
    "decode_image",
    "fit_size",
    "new_images",
]

log = logging.getLogger(__name__)

RECENT_CANCELS = 10_000
# Fetched batches in hand at once: one on the GPU and one being admitted (its images read) or
# delivered (PNG, gallery, events) meanwhile, so the GPU does not wait for either.
BATCHES_IN_HAND = 2


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        engine: Engine,
        models: dict[str, ModelManifest],
        nc: NATS,
        js: JetStreamContext,
        cancelled: KeyValue,
        gallery: gallery_pb2_grpc.GalleryStub,
        claims: KeyValue | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.models = models
        self.nc = nc
        self.js = js
        self.cancelled = cancelled
        self.gallery = gallery
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.ready = False
        self._subs: dict[str, JetStreamContext.PullSubscription] = {}
        # One fetch loop per model; models installed while running add theirs (add_model).
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._poll_s = 2.0
        self._running = False
        self._added = asyncio.Event()
        self.generation = GenerationThread()
        self._slots = asyncio.Semaphore(BATCHES_IN_HAND)
        self._batches: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._in_hand: dict[str, Job] = {}
        self._recent_cancels: OrderedDict[str, None] = OrderedDict()
        self.stall = StallClock(settings.worker_stall_s)
        self.deliveries = Deliveries(
            nc,
            js,
            self.name,
            settings.worker_max_deliver,
            settings.worker_ack_wait_s,
            Claims(claims, self.name) if claims is not None else None,
        )
        self.admission = Admission(
            engine, models, gallery, self.deliveries, self._is_cancelled, settings.rpc_timeout_s
        )
        self.handoff = Handoff(gallery, self.deliveries, settings.rpc_timeout_s, settings.worker_handoff_s)
        self.batches = Batches(
            engine,
            self.generation,
            self.deliveries,
            self.handoff,
            self._stopping,
            settings.worker_progress_interval_s,
            self.stall,
        )

    # --- start and stop --------------------------------------------------------------------------

    async def preload(self) -> None:
        for name in self.models:
            seconds = await self.generation.run(functools.partial(self.engine.load, name))
            MODEL_LOAD_TIME.labels(name).observe(seconds)
            log.info("model loaded", extra={"model": name, "seconds": round(seconds, 2)})

    async def bind(self) -> None:
        """Binds one durable pull consumer per model (shared by every worker serving it)."""
        await self.nc.subscribe(f"{CANCEL_SUBJECT_PREFIX}.*", cb=self._on_cancel)
        for name in self.models:
            await self._bind_one(name)
        log.info("consumers bound", extra={"models": list(self.models)})

    async def _bind_one(self, name: str) -> None:
        """One model's durable pull consumer (shared by every worker serving it), bound."""
        durable = worker_consumer_name(name)
        # Create or update: a changed ack_wait or max_deliver takes effect for every worker.
        await self.js.add_consumer(
            JOBS_STREAM,
            ConsumerConfig(
                name=durable,
                durable_name=durable,
                filter_subject=job_subject(name, ">"),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.settings.worker_ack_wait_s,
                max_deliver=self.settings.worker_max_deliver,
                max_ack_pending=-1,
            ),
        )
        self._subs[name] = await self.js.pull_subscribe_bind(durable=durable, stream=JOBS_STREAM)

    async def add_model(self, manifest: ModelManifest) -> None:
        """Serves a model installed while the worker runs: bound, then fetched from like the others.

        The engine learns it on the generation thread, so no engine call sees its table change."""
        if manifest.name in self._subs:
            return
        self.models[manifest.name] = manifest
        await self.generation.run(functools.partial(self.engine.add_model, manifest))
        await self._bind_one(manifest.name)
        if self._running and not self._stopping.is_set():
            self._start_loop(manifest.name)
        log.info("model added", extra={"model": manifest.name})

    def _start_loop(self, name: str) -> None:
        self._loops[name] = asyncio.create_task(self._loop(name, self._subs[name], self._poll_s))
        self._added.set()

    def stop(self) -> None:
        self.ready = False
        self._stopping.set()

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    async def unbind(self) -> None:
        """Drops the pull subscriptions (the durable consumers stay): nats-py's drain would wait on
        their internal queues forever."""
        for sub in self._subs.values():
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()
        self._subs.clear()

    def abort(self) -> None:
        self.batches.abort = True

    async def run(self) -> None:
        """Fetches until stopped, then waits for the batches in hand."""
        # With one model, a long poll; with several, short polls so each gets its turn at the GPU.
        self._poll_s = 2.0 if len(self._subs) == 1 else 0.5
        self._running = True
        for name in list(self._subs):
            self._start_loop(name)
        try:
            while True:
                for task in self._loops.values():
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]  # a crashed loop ends the worker
                pending = {t for t in self._loops.values() if not t.done()}
                if not pending:
                    break
                self._added.clear()
                added = asyncio.create_task(self._added.wait())
                try:
                    await asyncio.wait({*pending, added}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    added.cancel()
        finally:
            while self._batches:
                await asyncio.wait(set(self._batches))

    async def _loop(self, model: str, sub: JetStreamContext.PullSubscription, poll_s: float) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            msgs: list[Msg] = []
            try:
                if self._stopping.is_set():
                    return
                msgs = await sub.fetch(self.settings.worker_batch_max, timeout=poll_s)
            except TimeoutError:  # nats raises its own or the plain one
                continue
            except NATS_ERRORS as exc:
                log.warning("fetching jobs for %s failed: %s", model, type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            finally:
                if not msgs:
                    self._slots.release()
            batch = asyncio.create_task(self._process(model, msgs))
            self._batches.add(batch)
            batch.add_done_callback(self._batch_done)

    def _batch_done(self, batch: asyncio.Task[None]) -> None:
        self._batches.discard(batch)
        self._slots.release()
        if not batch.cancelled() and batch.exception() is not None:
            log.error("a batch ended with an error", exc_info=batch.exception())

    # --- cancellation ----------------------------------------------------------------------------

    async def _on_cancel(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        self._recent_cancels[job_id] = None
        while len(self._recent_cancels) > RECENT_CANCELS:
            self._recent_cancels.popitem(last=False)
        job = self._in_hand.get(job_id)
        if job is not None and not job.cancelled:
            job.cancelled = True
            # The step in hand when the request arrived: the job must stop after at most one more.
            log.info("cancel requested for a job in hand", extra={"job_id": job_id, "step": job.step})

    async def _is_cancelled(self, job_id: str) -> bool:
        if job_id in self._recent_cancels:
            return True
        try:
            await self.cancelled.get(job_id)
            return True
        except KeyNotFoundError:
            return False
        except NATS_ERRORS:
            # Unknown: run it; a cancel that arrives meanwhile still stops it.
            return False

    # --- one fetched batch -----------------------------------------------------------------------

    async def _process(self, model: str, msgs: list[Msg]) -> None:
        d = self.deliveries
        jobs: list[Job] = []
        for msg in msgs:
            job = d.open(model, msg)
            if job is not None:
                jobs.append(job)
                self._in_hand[job.id] = job
        JOBS_RUNNING.set(len(self._in_hand))
        # The heartbeat runs until every job is settled: through admission, the wait for the GPU,
        # the generation and the hand-off (which may retry a while with the images in hand).
        heartbeat = asyncio.create_task(d.heartbeat(jobs))
        try:
            # Claimed together (a round trip or two each); a job finished already is acked here.
            await asyncio.gather(*(d.take(job) for job in jobs))
            for job in jobs:
                await self.admission.admit(model, job)
            for group in self.batches.groups(model, jobs):
                await self.batches.run_group(model, group)
        except Exception:
            log.exception("unexpected error handling a batch of %s jobs", model)
            for job in jobs:
                await d.retry(job, model, Retry("generation_failed", "The worker hit an unexpected error."))
        finally:
            for job in jobs:
                for task in job.pending:
                    with contextlib.suppress(Exception):
                        await task
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            for job in jobs:
                if not job.settled:
                    # Nothing decided (should not happen): let another delivery decide.
                    await d.nak(job, 1.0)
                job.span.end()
                self._in_hand.pop(job.id, None)
            JOBS_RUNNING.set(len(self._in_hand))
