"""The worker loop: pull jobs, batch compatible ones, generate in a thread, store, report, ack.

Delivery rules (see ARCHITECTURE.md, Messaging):
- success: images to gallery (idempotent per job and index), then the completed event (de-duplicated
  by `<job_id>.completed`), then ack. A worker killed anywhere before the ack loses nothing: the
  message comes back after ack_wait and the same seeds make the same images again.
- retryable failure (gallery or NATS unavailable, a model that will not load here): nak with a
  delay; on the last allowed delivery it becomes a permanent failure.
- permanent failure (bad input): failed event with code and message, then term.
- cancelled: a cancelled event, then ack (the job is done, not retried).

Batches overlap: while one batch is on the GPU, the next is fetched and admitted, and the one
before is delivered. Only the generation itself holds the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from PIL import Image

from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from services.common.errors import EaselError, invalid
from services.common.messaging import (
    CANCEL_SUBJECT_PREFIX,
    JOBS_STREAM,
    event_subject,
    job_subject,
    publish,
    trace_headers,
    worker_consumer_name,
)
from services.common.telemetry import extract
from services.inference.engine import Cancelled, Engine, GenerationRequest, encode_png
from services.inference.messages import (
    EDIT_KINDS,
    ImageRefMessage,
    JobEventMessage,
    JobParams,
    MessageError,
    WorkMessage,
    completed_msg_id,
    image_params,
)
from services.inference.models import ModelManifest

from .generation_thread import GenerationThread
from .metrics import (
    BATCH_SIZE,
    IMAGES_GENERATED,
    JOBS_PROCESSED,
    JOBS_RUNNING,
    MODEL_LOAD_TIME,
    QUEUE_WAIT,
    RUN_TIME,
)
from .settings import WorkerSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("easel.inference.worker")

NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)
# gRPC codes after which the same call may well succeed later.
RETRYABLE_RPC = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
RECENT_CANCELS = 10_000
# Fetched batches in hand at once: one on the GPU and one being admitted (its images read) or
# delivered (PNG, gallery, events) meanwhile, so the GPU does not wait for either.
BATCHES_IN_HAND = 2


class Retry(Exception):
    """Worth another delivery; `code` and `message` are what the user sees if none is left."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class Job:
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

    @property
    def id(self) -> str:
        return self.work.job_id


def fit_size(width: int, height: int, manifest: ModelManifest) -> tuple[int, int]:
    """The size an edit without an explicit size runs at: its init image's, within the model's bounds."""
    scale = 1.0
    if max(width, height) > manifest.max_size:
        scale = manifest.max_size / max(width, height)
    elif min(width, height) < manifest.min_size:
        scale = manifest.min_size / min(width, height)
    w = int(width * scale) // 8 * 8
    h = int(height * scale) // 8 * 8
    return (
        min(max(w, manifest.min_size), manifest.max_size),
        min(max(h, manifest.min_size), manifest.max_size),
    )


def new_images(
    model: str, kind: str, params: JobParams, images: list[Image.Image]
) -> list[gallery_pb2.NewImage]:
    """A job's images as the gallery stores them: PNGs recording how each was made (CPU-bound)."""
    out = []
    for index, img in enumerate(images):
        made = image_params(model, kind, params, index, img.width, img.height)
        out.append(gallery_pb2.NewImage(index=index, png=encode_png(img, made), params_json=json.dumps(made)))
    return out


def decode_image(data: bytes, code: str, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.copy()
    except Exception:  # PIL raises many types for bad files (and DecompressionBombError)
        raise invalid(
            code, f"The {what} could not be read as an image; upload a PNG, JPEG or WebP."
        ) from None


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
        self.generation = GenerationThread()
        self._gpu = asyncio.Lock()
        self._slots = asyncio.Semaphore(BATCHES_IN_HAND)
        self._batches: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        # Set when the grace period ran out: the running batch stops at its next step and goes back.
        self._abort = False
        self._in_hand: dict[str, Job] = {}
        self._recent_cancels: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        log.info("consumers bound", extra={"models": list(self.models)})

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
        self._abort = True

    async def run(self) -> None:
        """Fetches until stopped, then waits for the batches in hand."""
        # With one model, a long poll; with several, short polls so each gets its turn at the GPU.
        poll_s = 2.0 if len(self._subs) == 1 else 0.5
        try:
            await asyncio.gather(*(self._loop(name, sub, poll_s) for name, sub in self._subs.items()))
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
        jobs: list[Job] = []
        for msg in msgs:
            job = self._open(model, msg)
            if job is not None:
                jobs.append(job)
                self._in_hand[job.id] = job
        JOBS_RUNNING.set(len(self._in_hand))
        heartbeat = asyncio.create_task(self._heartbeat(jobs))
        try:
            for job in jobs:
                await self._admit(model, job)
            groups: dict[tuple[object, ...], list[Job]] = {}
            for job in jobs:
                if not job.settled and job.req is not None:
                    groups.setdefault(self.engine.compatible_key(model, job.req), []).append(job)
            for group in groups.values():
                await self._run_group(model, group)
        except Exception:
            log.exception("unexpected error handling a batch of %s jobs", model)
            for job in jobs:
                await self._retry(
                    job, model, Retry("generation_failed", "The worker hit an unexpected error.")
                )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            for job in jobs:
                for task in job.pending:
                    with contextlib.suppress(Exception):
                        await task
                if not job.settled:
                    # Nothing decided (should not happen): let another delivery decide.
                    await self._nak(job, 1.0)
                job.span.end()
                self._in_hand.pop(job.id, None)
            JOBS_RUNNING.set(len(self._in_hand))

    def _open(self, model: str, msg: Msg) -> Job | None:
        try:
            work = WorkMessage.decode(msg.data)
        except MessageError as exc:
            log.error("dropping an unreadable job message on %s: %s", msg.subject, exc)
            self._background(msg.term())
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

    async def _heartbeat(self, jobs: list[Job]) -> None:
        """Keeps JetStream from handing our jobs to another worker while we still work on them."""
        interval = max(0.5, self.settings.worker_ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval)
            for job in jobs:
                if not job.settled:
                    with contextlib.suppress(*NATS_ERRORS):
                        await job.msg.in_progress()

    async def _admit(self, model: str, job: Job) -> None:
        """Turns the message into a checked GenerationRequest, or settles the job."""
        work = job.work
        if work.model != model:
            await self._fail(job, model, invalid("model_not_found", f"This job asks for {work.model}."))
            return
        if await self._is_cancelled(job.id):
            job.cancelled = True
            await self._report_cancelled(job, model)
            return
        if job.attempt == 1:
            QUEUE_WAIT.labels(model, work.kind).observe(max(0.0, time.time() - work.submitted_at))
        p = work.params
        try:
            init = mask = None
            if work.kind in EDIT_KINDS:
                init = await self._read_image(job, p.init_image_id, "init_image", "init image")
                if work.kind == "inpaint":
                    mask = await self._read_image(job, p.mask_image_id, "mask_image", "mask image")
            width, height = p.width, p.height
            if init is not None and not (width and height):
                width, height = fit_size(init.width, init.height, self.models[model])
            req = GenerationRequest(
                kind=work.kind,
                prompt=p.prompt,
                negative_prompt=p.negative_prompt,
                width=width,
                height=height,
                steps=p.steps,
                guidance=p.guidance,
                sampler=p.sampler,
                seeds=p.seeds(),
                strength=p.strength if p.strength is not None else 0.75,
                init_image=init,
                mask_image=mask,
            )
            self.engine.validate(model, req)
        except EaselError as exc:
            await self._fail(job, model, exc)
            return
        except Retry as exc:
            await self._retry(job, model, exc)
            return
        job.req = req
        job.width, job.height = self.engine.output_size(model, req)
        job.steps = p.steps

    async def _read_image(self, job: Job, image_id: str, code: str, what: str) -> Image.Image:
        owner = common_pb2.Actor(user_id=job.work.owner_id, username=job.work.owner_username, role="user")
        data = bytearray()
        try:
            stream = self.gallery.ReadImage(
                gallery_pb2.ReadImageRequest(actor=owner, image_id=image_id),
                timeout=self.settings.rpc_timeout_s * 3,
            )
            async for chunk in stream:
                data.extend(chunk.data)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in RETRYABLE_RPC:
                raise Retry("gallery_unavailable", f"The {what} could not be fetched; try again.") from None
            raise EaselError(
                f"{code}_not_found",
                f"The {what} {image_id!r} does not exist or is not yours; upload it again and retry.",
                grpc.StatusCode.NOT_FOUND,
                field=f"{code}_id",
            ) from None
        return await asyncio.to_thread(decode_image, bytes(data), f"invalid_{code}", what)

    # --- running a group of compatible jobs ------------------------------------------------------

    async def _run_group(self, model: str, group: list[Job]) -> None:
        async with self._gpu:
            delivered = await self._generate_group(model, group)
        # Delivered after the GPU is free, so the next batch's denoising overlaps this PNG encoding,
        # upload and reporting; the batch's _process awaits these before it ends.
        for job, images in delivered:
            job.pending.append(asyncio.ensure_future(self._deliver(job, model, images)))

    async def _generate_group(self, model: str, group: list[Job]) -> list[tuple[Job, list[Image.Image]]]:
        """Runs the group's generation (the GPU is ours); returns the images to deliver."""
        live: list[Job] = []
        for job in group:
            if job.cancelled:
                await self._report_cancelled(job, model)
            elif self._stopping.is_set():
                # Fetched ahead and not started: another worker can start it now.
                await self._nak(job, 0.0)
                JOBS_PROCESSED.labels(model, "retried").inc()
            else:
                live.append(job)
        if not live:
            return []
        kind = live[0].work.kind
        for job in live:
            await self._event(job, "running", step=0, steps=job.steps)
        loop = asyncio.get_running_loop()
        last = [0.0]

        def on_step(step: int, steps: int) -> bool:
            # Runs in the generation thread: only reads flags and hands work to the loop.
            now = time.monotonic()
            for job in live:
                job.step, job.steps = step, steps
            if step == 1 or now - last[0] >= self.settings.worker_progress_interval_s:
                last[0] = now
                loop.call_soon_threadsafe(self._progress, live, step, steps)
            for job in live:
                if job.cancelled and not job.cancel_reported:
                    loop.call_soon_threadsafe(self._cancel_soon, job, model)
            return not (self._abort or all(job.cancelled for job in live))

        def generate() -> tuple[float, list[list[Image.Image]]]:
            load = self.engine.load(model)
            if load:
                MODEL_LOAD_TIME.labels(model).observe(load)
            return load, self.engine.generate(model, [job.req for job in live if job.req], on_step)

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
                    if job.cancelled:
                        await self._report_cancelled(job, model)
                    else:
                        # Stopped for a shutdown: straight back to the queue for another worker.
                        await self._nak(job, 0.0)
                        JOBS_PROCESSED.labels(model, "retried").inc()
                return []
            except EaselError as exc:
                for job in live:
                    if exc.status == grpc.StatusCode.UNAVAILABLE:
                        await self._retry(job, model, Retry(exc.code, exc.message))
                    else:
                        await self._fail(job, model, exc)
                return []
            except Exception:
                log.exception("generation failed", extra={"model": model, "jobs": [j.id for j in live]})
                for job in live:
                    await self._retry(
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
            if job.cancelled:
                await self._report_cancelled(job, model)
            else:
                delivered.append((job, images))
        return delivered

    def _progress(self, jobs: list[Job], step: int, steps: int) -> None:
        for job in jobs:
            if not job.cancelled and not job.settled:
                job.pending.append(
                    asyncio.ensure_future(self._event(job, "progress", step=step, steps=steps))
                )

    def _cancel_soon(self, job: Job, model: str) -> None:
        # Reported at the step where the generation noticed it; its images are never stored.
        if not job.settled and not job.cancel_reported:
            job.pending.append(asyncio.ensure_future(self._report_cancelled(job, model)))

    async def _deliver(self, job: Job, model: str, images: list[Image.Image]) -> None:
        work = job.work
        with trace.use_span(job.span, end_on_exit=False):
            stored = await asyncio.to_thread(new_images, model, work.kind, work.params, images)
            try:
                resp = await self.gallery.AddImages(
                    gallery_pb2.AddImagesRequest(
                        job_id=job.id,
                        owner_id=work.owner_id,
                        owner_username=work.owner_username,
                        images=stored,
                    ),
                    timeout=self.settings.rpc_timeout_s * 3,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in RETRYABLE_RPC:
                    await self._retry(
                        job, model, Retry("gallery_unavailable", "The images could not be stored; try again.")
                    )
                else:
                    await self._fail(
                        job,
                        model,
                        EaselError(
                            "images_rejected",
                            f"The gallery refused the images ({exc.details()}); report it if it persists.",
                            grpc.StatusCode.FAILED_PRECONDITION,
                        ),
                    )
                return
            refs = [ImageRefMessage(id=img.id, index=img.index) for img in resp.images]
            event = JobEventMessage(
                job_id=job.id,
                type="completed",
                step=job.steps,
                steps=job.steps,
                images=refs,
                attempt=job.attempt,
                worker=self.name,
            )
            try:
                await publish(self.js, event_subject(job.id), event.encode(), msg_id=completed_msg_id(job.id))
            except NATS_ERRORS:
                await self._retry(job, model, Retry("queue_unavailable", "The result could not be reported."))
                return
        await self._settle(job, "ack")
        IMAGES_GENERATED.labels(model, work.kind).inc(len(refs))
        JOBS_PROCESSED.labels(model, "completed").inc()
        self._log(job, logging.INFO, "job completed", images=len(refs), attempt=job.attempt)

    # --- reporting and settling ------------------------------------------------------------------

    @staticmethod
    def _log(job: Job, level: int, message: str, **extra: Any) -> None:
        """A log line carrying the job's trace id, so it sits beside the api's and gallery's lines."""
        with trace.use_span(job.span, end_on_exit=False):
            log.log(level, message, extra={"job_id": job.id, **extra})

    async def _event(self, job: Job, type_: str, **fields: Any) -> None:
        event = JobEventMessage(job_id=job.id, type=type_, attempt=job.attempt, worker=self.name, **fields)
        with trace.use_span(job.span, end_on_exit=False):
            try:
                if type_ in ("progress", "running"):
                    # Progress is frequent and disposable, and "running" only comes before the job's
                    # final event, which is acknowledged: no JetStream ack round trip (one per job
                    # of a batch, while the GPU waits). The stream still stores them, in order.
                    await self.nc.publish(event_subject(job.id), event.encode(), headers=trace_headers())
                else:
                    await publish(self.js, event_subject(job.id), event.encode())
            except NATS_ERRORS as exc:
                log.warning(
                    "could not publish %s event: %s", type_, type(exc).__name__, extra={"job_id": job.id}
                )

    async def _report_cancelled(self, job: Job, model: str) -> None:
        if job.settled or job.cancel_reported:
            return
        job.cancel_reported = True
        await self._event(job, "cancelled", step=job.step, steps=job.steps)
        await self._settle(job, "ack")
        JOBS_PROCESSED.labels(model, "cancelled").inc()
        self._log(job, logging.INFO, "job cancelled", step=job.step)

    async def _fail(self, job: Job, model: str, exc: EaselError) -> None:
        if job.settled:
            return
        job.span.set_status(Status(StatusCode.ERROR, exc.code))
        await self._event(job, "failed", error_code=exc.code, error_message=exc.message, step=job.step)
        await self._settle(job, "term")
        JOBS_PROCESSED.labels(model, "failed").inc()
        self._log(job, logging.INFO, "job failed", error_code=exc.code, attempt=job.attempt)

    async def _retry(self, job: Job, model: str, exc: Retry) -> None:
        if job.settled:
            return
        if job.attempt >= self.settings.worker_max_deliver:
            await self._fail(job, model, EaselError(exc.code, exc.message, grpc.StatusCode.UNAVAILABLE))
            return
        delay = min(2.0**job.attempt, 30.0)
        self._log(job, logging.WARNING, "job will be retried", reason=exc.code, delay_s=delay)
        await self._nak(job, delay)
        JOBS_PROCESSED.labels(model, "retried").inc()

    async def _nak(self, job: Job, delay: float) -> None:
        await self._settle(job, "nak", delay)

    async def _settle(self, job: Job, how: str, delay: float = 0.0) -> None:
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
