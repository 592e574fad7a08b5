"""The hand-off of a finished generation: PNGs to the gallery, the completed event, then ack."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import grpc
from opentelemetry import trace
from PIL import Image

from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from services.common.errors import EaselError
from services.common.messaging import event_subject, publish
from services.inference.engine import encode_png
from services.inference.messages import (
    ImageRefMessage,
    JobEventMessage,
    JobParams,
    completed_msg_id,
    image_params,
)
from services.inference.pngmeta import with_engine_marks

from .delivery import NATS_ERRORS, Deliveries, Job, Retry
from .metrics import HANDOFF_RETRIES, IMAGES_GENERATED, JOBS_PROCESSED

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


def new_images(
    model: str, kind: str, params: JobParams, images: list[Image.Image]
) -> list[gallery_pb2.NewImage]:
    """A job's images as the gallery stores them: PNGs recording how each was made (CPU-bound)."""
    out = []
    for index, img in enumerate(images):
        # The gallery's record gets what the PNG gets, the engine's marks (offload, model hash) too.
        made = with_engine_marks(img, image_params(model, kind, params, index, img.width, img.height))
        out.append(gallery_pb2.NewImage(index=index, png=encode_png(img, made), params_json=json.dumps(made)))
    return out


def rejected(exc: grpc.aio.AioRpcError) -> EaselError:
    return EaselError(
        "images_rejected",
        f"The gallery refused the images ({exc.details()}); report it if it persists.",
        grpc.StatusCode.FAILED_PRECONDITION,
    )


class Handoff:
    """Hands a finished generation over. A brief outage of the gallery or of NATS does not throw the
    images away: each step is tried again with the PNGs in hand, with backoff, for up to
    EASEL_WORKER_HANDOFF_S (the heartbeat keeps the message meanwhile); only then does the job go back
    to the queue. Both steps are idempotent (the gallery keys images by job and index, the completed
    event is de-duplicated by its msg id), so a call that timed out but landed is harmless to repeat."""

    def __init__(
        self,
        gallery: gallery_pb2_grpc.GalleryStub,
        deliveries: Deliveries,
        rpc_timeout_s: float,
        handoff_s: float,
    ) -> None:
        self.gallery = gallery
        self.deliveries = deliveries
        self.rpc_timeout_s = rpc_timeout_s
        self.handoff_s = handoff_s

    async def deliver(self, job: Job, model: str, images: list[Image.Image]) -> None:
        """Stores the images, reports the job completed, acks; or naks/fails it by the rules."""
        work = job.work
        d = self.deliveries
        with trace.use_span(job.span, end_on_exit=False):
            stored = await asyncio.to_thread(new_images, model, work.kind, work.params, images)
            request = gallery_pb2.AddImagesRequest(
                job_id=job.id, owner_id=work.owner_id, owner_username=work.owner_username, images=stored
            )
            backoff = Backoff(self.handoff_s)
            while True:
                if not await self._still_wanted(job):
                    return
                try:
                    resp = await self.gallery.AddImages(request, timeout=self.rpc_timeout_s * 3)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in RETRYABLE_RPC:
                        await d.fail(job, model, rejected(exc))
                        return
                    if not await backoff.wait(
                        job, f"the gallery did not take the images ({exc.code().name})"
                    ):
                        await d.retry(
                            job,
                            model,
                            Retry("gallery_unavailable", "The images could not be stored; try again."),
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
                worker=d.worker,
            )
            while True:
                if not await self._still_wanted(job):
                    return
                try:
                    await publish(
                        d.js, event_subject(job.id), event.encode(), msg_id=completed_msg_id(job.id)
                    )
                    break
                except NATS_ERRORS as exc:
                    if not await backoff.wait(
                        job, f"the completed event was not taken ({type(exc).__name__})"
                    ):
                        await d.retry(
                            job, model, Retry("queue_unavailable", "The result could not be reported.")
                        )
                        return
            await d.finish(job, "completed")
        await d.settle(job, "ack")
        IMAGES_GENERATED.labels(model, work.kind).inc(len(refs))
        JOBS_PROCESSED.labels(model, "completed").inc()
        d.log(job, logging.INFO, "job completed", images=len(refs), attempt=job.attempt)

    async def _still_wanted(self, job: Job) -> bool:
        """False (the job let go) when a later delivery took it over. A cancel arriving now is too
        late, as before retries: an earlier attempt may have stored the images already."""
        if not await self.deliveries.still_ours(job):
            self.deliveries.drop(job)
            return False
        return not job.settled


class Backoff:
    """Waits between hand-off attempts: 0.5 s doubling to 10 s, within a total budget."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s
        self.delay = 0.5

    async def wait(self, job: Job, why: str) -> bool:
        """Sleeps before the next attempt; False when the budget does not allow one."""
        if time.monotonic() + self.delay > self.deadline:
            return False
        HANDOFF_RETRIES.inc()
        Deliveries.log(job, logging.WARNING, f"{why}; trying again", delay_s=self.delay)
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 10.0)
        return True
