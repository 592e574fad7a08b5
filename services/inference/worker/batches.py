"""Batching: a fetched batch's jobs grouped by what can share a pipeline call, each group generated
on the generation thread (one group on the GPU at a time), its images then handed off.

Batches overlap: while one batch is on the GPU, the next is fetched and admitted, and the one
before is delivered. Only the generation itself holds the GPU.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from opentelemetry import trace
from PIL import Image

from services.common.errors import EaselError
from services.inference.engine import Cancelled, Engine

from .delivery import Deliveries, Job, Retry
from .generation_thread import GenerationThread
from .handoff import Handoff
from .liveness import StallClock
from .metrics import BATCH_SIZE, JOBS_PROCESSED, MODEL_LOAD_TIME, RUN_TIME

log = logging.getLogger(__name__)
tracer = trace.get_tracer("easel.inference.worker")


class Batches:
    def __init__(
        self,
        engine: Engine,
        generation: GenerationThread,
        deliveries: Deliveries,
        handoff: Handoff,
        stopping: asyncio.Event,
        progress_interval_s: float,
        stall: StallClock,
    ) -> None:
        self.engine = engine
        self.generation = generation
        self.deliveries = deliveries
        self.handoff = handoff
        self.stopping = stopping
        self.progress_interval_s = progress_interval_s
        self.stall = stall
        # Set when the grace period ran out: the running batch stops at its next step and goes back.
        self.abort = False
        self._gpu = asyncio.Lock()

    def groups(self, model: str, jobs: list[Job]) -> list[list[Job]]:
        """The admitted jobs, grouped by what the engine can run in one pipeline call."""
        groups: dict[tuple[object, ...], list[Job]] = {}
        for job in jobs:
            if not job.settled and job.req is not None:
                groups.setdefault(self.engine.compatible_key(model, job.req), []).append(job)
        return list(groups.values())

    async def run_group(self, model: str, group: list[Job]) -> None:
        async with self._gpu:
            delivered = await self._generate(model, group)
        # Delivered after the GPU is free, so the next batch's denoising overlaps this PNG encoding,
        # upload and reporting; the batch's owner awaits these before it ends.
        for job, images in delivered:
            job.pending.append(asyncio.ensure_future(self.handoff.deliver(job, model, images)))

    async def _generate(self, model: str, group: list[Job]) -> list[tuple[Job, list[Image.Image]]]:
        """Runs the group's generation (the GPU is ours); returns the images to deliver."""
        d = self.deliveries
        live: list[Job] = []
        # Still ours? A worker paused while this group waited for the GPU may have lost it.
        await asyncio.gather(*(d.still_ours(job) for job in group))
        for job in group:
            if job.superseded:
                d.drop(job)
            elif job.cancelled:
                await d.cancelled(job, model)
            elif self.stopping.is_set():
                # Fetched ahead and not started: another worker can start it now.
                await d.nak(job, 0.0)
                JOBS_PROCESSED.labels(model, "retried").inc()
            else:
                live.append(job)
        if not live:
            return []
        kind = live[0].work.kind
        for job in live:
            await d.event(job, "running", step=0, steps=job.steps)
        loop = asyncio.get_running_loop()
        last = [0.0]

        def on_step(step: int, steps: int) -> bool:
            # Runs in the generation thread: only reads flags and hands work to the loop.
            now = time.monotonic()
            self.stall.beat()
            for job in live:
                job.step, job.steps = step, steps
            # The last step is always reported: it frees the job's place in the api's dispatch window
            # (api/dispatch.py), so the next batch is sent while this one decodes and is delivered.
            if step == 1 or step >= steps or now - last[0] >= self.progress_interval_s:
                last[0] = now
                loop.call_soon_threadsafe(self._progress, live, step, steps)
            for job in live:
                if job.cancelled and not job.cancel_reported:
                    loop.call_soon_threadsafe(self._cancel_soon, job, model)
            # A job taken over by a later delivery (see claims.py) is not worth another step.
            return not (self.abort or all(job.cancelled or job.superseded for job in live))

        def generate() -> tuple[float, list[list[Image.Image]]]:
            load = self.engine.load(model)
            if load:
                MODEL_LOAD_TIME.labels(model).observe(load)
            # The stall clock runs from here (loading does not count) to the end of the generation.
            self.stall.begin()
            try:
                return load, self.engine.generate(model, [job.req for job in live if job.req], on_step)
            finally:
                self.stall.end()

        started = time.perf_counter()
        # A child of the first job's span, so a job's trace runs on into the pipeline stages; the
        # other jobs of the batch are linked (a span has one parent).
        with tracer.start_as_current_span(
            "inference.generate",
            context=trace.set_span_in_context(live[0].span),
            links=[trace.Link(job.span.get_span_context()) for job in live[1:]],
            attributes={"easel.model": model, "easel.kind": kind, "easel.batch_size": len(live)},
        ):
            try:
                load_s, results = await self.generation.run(generate)
            except Cancelled:
                for job in live:
                    if job.superseded:
                        d.drop(job)
                    elif job.cancelled:
                        await d.cancelled(job, model)
                    else:
                        # Stopped for a shutdown: straight back to the queue for another worker.
                        await d.nak(job, 0.0)
                        JOBS_PROCESSED.labels(model, "retried").inc()
                return []
            except EaselError as exc:
                for job in live:
                    if exc.status == grpc.StatusCode.UNAVAILABLE:
                        await d.retry(job, model, Retry(exc.code, exc.message))
                    else:
                        await d.fail(job, model, exc)
                return []
            except Exception:
                log.exception("generation failed", extra={"model": model, "jobs": [j.id for j in live]})
                for job in live:
                    await d.retry(
                        job,
                        model,
                        Retry(
                            "generation_failed",
                            "Generation failed on the worker; try again, and report it if it persists.",
                        ),
                    )
                return []
        RUN_TIME.labels(model, kind).observe(time.perf_counter() - started - load_s)
        BATCH_SIZE.labels(model).observe(len(live))
        delivered = []
        for job, images in zip(live, results, strict=True):
            if job.superseded:
                d.drop(job)
            elif job.cancelled:
                await d.cancelled(job, model)
            else:
                delivered.append((job, images))
        return delivered

    def _progress(self, jobs: list[Job], step: int, steps: int) -> None:
        for job in jobs:
            if not job.cancelled and not job.settled:
                job.pending.append(
                    asyncio.ensure_future(self.deliveries.event(job, "progress", step=step, steps=steps))
                )

    def _cancel_soon(self, job: Job, model: str) -> None:
        # Reported at the step where the generation noticed it; its images are never stored.
        if not job.settled and not job.cancel_reported:
            job.pending.append(asyncio.ensure_future(self.deliveries.cancelled(job, model)))
