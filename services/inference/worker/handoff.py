"""The hand-off of a finished generation: PNGs to the gallery, the completed event, then ack."""

from __future__ import annotations

import asyncio
import json
import logging

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

from .delivery import NATS_ERRORS, Deliveries, Job, Retry
from .metrics import IMAGES_GENERATED, JOBS_PROCESSED

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
        made = image_params(model, kind, params, index, img.width, img.height)
        out.append(gallery_pb2.NewImage(index=index, png=encode_png(img, made), params_json=json.dumps(made)))
    return out


class Handoff:
    def __init__(
        self, gallery: gallery_pb2_grpc.GalleryStub, deliveries: Deliveries, rpc_timeout_s: float
    ) -> None:
        self.gallery = gallery
        self.deliveries = deliveries
        self.rpc_timeout_s = rpc_timeout_s

    async def deliver(self, job: Job, model: str, images: list[Image.Image]) -> None:
        """Stores the images, reports the job completed, acks; or naks/fails it by the rules."""
        work = job.work
        d = self.deliveries
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
                    timeout=self.rpc_timeout_s * 3,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in RETRYABLE_RPC:
                    await d.retry(
                        job, model, Retry("gallery_unavailable", "The images could not be stored; try again.")
                    )
                else:
                    await d.fail(
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
                worker=d.worker,
            )
            try:
                await publish(d.js, event_subject(job.id), event.encode(), msg_id=completed_msg_id(job.id))
            except NATS_ERRORS:
                await d.retry(job, model, Retry("queue_unavailable", "The result could not be reported."))
                return
        await d.settle(job, "ack")
        IMAGES_GENERATED.labels(model, work.kind).inc(len(refs))
        JOBS_PROCESSED.labels(model, "completed").inc()
        d.log(job, logging.INFO, "job completed", images=len(refs), attempt=job.attempt)
