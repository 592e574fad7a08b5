"""Admission: a job message becomes a checked GenerationRequest (edit images read from the gallery),
or the job is settled (failed, cancelled, retried) before it reaches the GPU."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable

import grpc
from PIL import Image

from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from services.common.errors import EaselError, invalid
from services.inference.engine import Engine, GenerationRequest
from services.inference.messages import EDIT_KINDS
from services.inference.models import ModelManifest

from .delivery import Deliveries, Job, Retry
from .handoff import RETRYABLE_RPC
from .metrics import QUEUE_WAIT


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


def decode_image(data: bytes, code: str, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.copy()
    except Exception:  # PIL raises many types for bad files (and DecompressionBombError)
        raise invalid(
            code, f"The {what} could not be read as an image; upload a PNG, JPEG or WebP."
        ) from None


class Admission:
    def __init__(
        self,
        engine: Engine,
        models: dict[str, ModelManifest],
        gallery: gallery_pb2_grpc.GalleryStub,
        deliveries: Deliveries,
        is_cancelled: Callable[[str], Awaitable[bool]],
        rpc_timeout_s: float,
    ) -> None:
        self.engine = engine
        self.models = models
        self.gallery = gallery
        self.deliveries = deliveries
        self.is_cancelled = is_cancelled
        self.rpc_timeout_s = rpc_timeout_s

    async def admit(self, model: str, job: Job) -> None:
        """Turns the message into a checked GenerationRequest (job.req), or settles the job."""
        if job.settled:  # finished already (see Deliveries.take)
            return
        work = job.work
        if work.model != model:
            await self.deliveries.fail(
                job, model, invalid("model_not_found", f"This job asks for {work.model}.")
            )
            return
        if await self.is_cancelled(job.id):
            job.cancelled = True
            await self.deliveries.cancelled(job, model)
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
            await self.deliveries.fail(job, model, exc)
            return
        except Retry as exc:
            await self.deliveries.retry(job, model, exc)
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
                timeout=self.rpc_timeout_s * 3,
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
