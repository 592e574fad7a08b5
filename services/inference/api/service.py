"""The gRPC `easel.inference.v1.Inference` service."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from easel.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.errors import EaselError, conflict, invalid, unauthenticated, unavailable
from services.common.messaging import EVENTS_STREAM, cancel_subject, event_subject, publish, trace_headers
from services.inference.messages import (
    EDIT_KINDS,
    TERMINAL,
    JobEventMessage,
    JobParams,
    MessageError,
    image_params,
)
from services.inference.models import ModelManifest
from services.inference.schedulers import sampler_names

from .dispatch import Dispatcher
from .events import frees_dispatch, note_applied
from .metrics import CACHE_HITS, JOBS_SUBMITTED, WATCH_STREAMS
from .settings import InferenceApiSettings
from .sizes import edit_size
from .store import JobRow, JobStore, NewJob, job_cost, refuse_nul
from .validation import ModelCatalog, normalize

log = logging.getLogger(__name__)

NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20
MAX_IDEMPOTENCY_KEY = 200
# WatchJob seq = stream sequence of the last event * this + a counter of position updates since:
# position changes have no event of their own, and seq must still grow.
SEQ_SCALE = 1000
# How long a job the result cache may answer is kept from the workers: the copy takes well under a
# second; an api that dies meanwhile leaves the job to be sent when this runs out.
CACHE_HOLD_S = 30.0


def require_user(actor: common_pb2.Actor, what: str) -> str:
    user_id = actor.user_id.strip()
    if not user_id:
        raise unauthenticated("sign_in_required", f"Sign in to {what}.")
    return user_id


def _set_ts(field: Any, value: datetime | None) -> None:
    if value is not None:
        field.FromDatetime(value)


def to_proto(row: JobRow, position: int = 0) -> inference_pb2.Job:
    job = inference_pb2.Job(
        id=row.id,
        owner_id=row.owner_id,
        kind=row.kind,
        model=row.model,
        status=row.status,
        params_json=json.dumps(row.params, sort_keys=True),
        position=position,
        step=row.step,
        steps=row.steps,
        images=[inference_pb2.ImageRef(id=i["id"], index=i["index"]) for i in row.images],
        error_code=row.error_code or "",
        error_message=row.error_message or "",
        cached=row.cached,
    )
    _set_ts(job.created_at, row.created_at)
    _set_ts(job.started_at, row.started_at)
    _set_ts(job.finished_at, row.finished_at)
    return job


def apply_to_proto(job: inference_pb2.Job, event: JobEventMessage) -> bool:
    """The same transition as `JobStore.apply_event`, on a watcher's copy; False when stale."""
    if job.status in TERMINAL or event.type == "queued":
        return False
    at = datetime.fromtimestamp(event.at, UTC)
    job.position = 0
    if event.type in ("running", "progress"):
        job.status = "running"
        job.step = event.step
        job.steps = max(event.steps, 1)
        if not job.HasField("started_at"):
            job.started_at.FromDatetime(at)
        return True
    job.status = event.type
    job.finished_at.FromDatetime(at)
    if event.type == "completed":
        job.step = job.steps
        job.cached = event.cached
        del job.images[:]
        job.images.extend(inference_pb2.ImageRef(id=i.id, index=i.index) for i in event.images)
        if not job.HasField("started_at"):
            job.started_at.FromDatetime(at)
    elif event.type == "failed":
        job.error_code = event.error_code or "generation_failed"
        job.error_message = event.error_message
    elif event.type == "cancelled":
        job.step = max(job.step, event.step)
    return True


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(
        self,
        settings: InferenceApiSettings,
        store: JobStore,
        catalog: ModelCatalog,
        nc: NATS,
        js: JetStreamContext,
        cancelled: KeyValue,
        gallery: gallery_pb2_grpc.GalleryStub | None,
        dispatcher: Dispatcher,
    ) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.nc = nc
        self.js = js
        self.cancelled = cancelled
        self.gallery = gallery
        self._stopping = asyncio.Event()

    def stop_watches(self) -> None:
        """Ends open WatchJob streams with UNAVAILABLE so their clients reconnect to another replica."""
        self._stopping.set()

    async def _proto(self, row: JobRow) -> inference_pb2.Job:
        return to_proto(row, await self.store.position(row))

    # --- SubmitJob -------------------------------------------------------------------------------

    async def SubmitJob(
        self, request: inference_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.Job:
        owner = require_user(request.actor, "create images")
        key = request.idempotency_key.strip()
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise invalid(
                "invalid_idempotency_key",
                f"idempotency_key must be at most {MAX_IDEMPOTENCY_KEY} characters.",
                field="idempotency_key",
            )
        models = await self.catalog.models()
        norm = normalize(request, models, self.catalog, self.settings.prompt_max_chars)
        if key:
            existing = await self.store.find_by_key(owner, key)
            if existing is not None:
                if existing.request_hash != norm.request_hash:
                    raise conflict(
                        "idempotency_key_reused",
                        "This idempotency key was already used for a different request; "
                        "use a new key for a new request.",
                        field="idempotency_key",
                    )
                if existing.status == "queued":
                    # The first attempt may have died before its job was sent; sending again is safe:
                    # the message id is the job id, so JetStream drops a duplicate.
                    await self._republish(existing)
                return await self._proto(existing)
        params = norm.params
        refuse_nul(params.init_image_id, "init_image_id", "init image id")
        refuse_nul(params.mask_image_id, "mask_image_id", "mask image id")
        if norm.kind in EDIT_KINDS:
            params = await self._resolve_edit(request.actor, norm.kind, norm.model, params)
        cacheable = self.settings.result_cache and norm.cache_key is not None and self.gallery is not None
        new = NewJob(
            id=str(uuid.uuid4()),
            owner_id=owner,
            owner_username=request.actor.username,
            kind=norm.kind,
            model=norm.model.name,
            params=params,
            request_hash=norm.request_hash,
            idempotency_key=key or None,
            cache_key=norm.cache_key,
            cost=job_cost(params),
            trace=trace_headers(),
        )
        # The limits, the insert and the fair-queue tag in one statement: a refused job leaves nothing
        # behind. A job the result cache may answer is held back from the workers meanwhile.
        row, created, position = await self.store.submit(new, hold_s=CACHE_HOLD_S if cacheable else 0.0)
        if not created:
            return await self._proto(row)
        JOBS_SUBMITTED.labels(row.model, row.kind).inc()
        if cacheable and norm.cache_key:
            images = await self._from_cache(norm.cache_key, new)
            if images is not None:
                done = await self.store.complete_cached(row.id, images)
                if done is not None:
                    CACHE_HITS.labels(new.model).inc()
                    log.info("job answered from the result cache", extra={"job_id": row.id})
                    return to_proto(done)
            await self.store.release(row.id)
            position = await self.store.position(row)
        self.dispatcher.kick(row.model)
        log.info("job queued", extra={"job_id": row.id, "model": row.model, "kind": row.kind})
        return to_proto(row, position)

    async def _resolve_edit(
        self, actor: common_pb2.Actor, kind: str, manifest: ModelManifest, params: JobParams
    ) -> JobParams:
        """Fills in the size an edit makes, from its init image's record; refuses what cannot work.

        The init image must be the caller's: one that is not (or no longer) is refused here, before
        the job waits in the queue. Without a gallery (tests of the api alone) the worker decides.
        """
        if self.gallery is None:
            return params
        try:
            image = await self.gallery.GetImage(
                gallery_pb2.GetImageRequest(actor=actor, image_id=params.init_image_id),
                timeout=self.settings.rpc_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise EaselError(
                    "init_image_not_found",
                    f"The init image {params.init_image_id!r} does not exist or is not yours; upload it "
                    "again and retry.",
                    grpc.StatusCode.NOT_FOUND,
                    field="init_image_id",
                ) from None
            log.warning("could not read the init image's record: %s", exc.code().name)
            raise unavailable(
                "gallery_unavailable", "The input image cannot be read right now; try again in a moment."
            ) from None
        width, height = edit_size(kind, params.width, params.height, image.width, image.height, manifest)
        return params.model_copy(update={"width": width, "height": height})

    async def _republish(self, row: JobRow) -> None:
        try:
            await self.dispatcher.republish(row)
        except NATS_ERRORS as exc:
            log.warning("could not send job %s again: %s", row.id, type(exc).__name__)
            raise unavailable(
                "queue_unavailable", "The job queue is not reachable right now; try again in a moment."
            ) from None

    async def _from_cache(self, cache_key: str, new: NewJob) -> list[dict[str, Any]] | None:
        """Copies the owner's finished identical job's images into a new job; None on a miss."""
        if self.gallery is None:
            return None
        source = await self.store.find_cached(cache_key, new.owner_id)
        if source is None:
            return None
        reader = common_pb2.Actor(user_id=source.owner_id, username=source.owner_username, role="user")
        timeout = self.settings.rpc_timeout_s
        images: list[gallery_pb2.NewImage] = []
        try:
            for ref in sorted(source.images, key=lambda i: int(i["index"])):
                data = bytearray()
                stream = self.gallery.ReadImage(
                    gallery_pb2.ReadImageRequest(actor=reader, image_id=ref["id"]), timeout=timeout
                )
                async for chunk in stream:
                    data.extend(chunk.data)
                params = image_params(
                    new.model, new.kind, new.params, int(ref["index"]), new.params.width, new.params.height
                )
                images.append(
                    gallery_pb2.NewImage(
                        index=int(ref["index"]), png=bytes(data), params_json=json.dumps(params)
                    )
                )
            resp = await self.gallery.AddImages(
                gallery_pb2.AddImagesRequest(
                    job_id=new.id, owner_id=new.owner_id, owner_username=new.owner_username, images=images
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            # The source images may be gone (deleted by their owner) or gallery busy: generate instead.
            log.info("result cache not usable for this job: %s", exc.code().name, extra={"job_id": new.id})
            return None
        return [{"id": img.id, "index": img.index} for img in resp.images]

    # --- Reading ---------------------------------------------------------------------------------

    async def GetJob(
        self, request: inference_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.Job:
        owner = require_user(request.actor, "see your jobs")
        return await self._proto(await self.store.get_owned(request.job_id, owner))

    async def ListJobs(
        self, request: inference_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.ListJobsResponse:
        owner = require_user(request.actor, "see your jobs")
        limit = request.limit or DEFAULT_LIST_LIMIT
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise invalid("invalid_limit", f"limit must be from 1 to {MAX_LIST_LIMIT}.", field="limit")
        rows, cursor = await self.store.list(owner, limit, request.cursor)
        return inference_pb2.ListJobsResponse(jobs=[await self._proto(r) for r in rows], next_cursor=cursor)

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.ListModelsResponse:
        models = await self.catalog.models()
        default = self.catalog.default_name(models)
        samplers = sampler_names()
        return inference_pb2.ListModelsResponse(
            models=[
                inference_pb2.ModelInfo(
                    name=m.name,
                    family=m.family,
                    kinds=list(m.kinds),
                    default_width=m.default_width,
                    default_height=m.default_height,
                    default_steps=m.default_steps,
                    default_guidance=m.default_guidance,
                    default_sampler=m.default_sampler,
                    min_size=m.min_size,
                    max_size=m.max_size,
                    samplers=list(m.samplers) or samplers,
                    is_default=m.name == default,
                    max_steps=m.max_steps,
                    size_multiple=m.size_multiple,
                    sha256=m.sha256 or "",
                )
                for m in sorted(models.values(), key=lambda m: m.name)
            ]
        )

    # --- CancelJob -------------------------------------------------------------------------------

    async def CancelJob(
        self, request: inference_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.Job:
        owner = require_user(request.actor, "cancel jobs")
        row = await self.store.get_owned(request.job_id, owner)
        if row.terminal:
            return await self._proto(row)
        try:
            # First the record a worker checks before it starts the job, then the live signal for a
            # worker already running it (the row may still say queued: events lag a little).
            await self.cancelled.put(row.id, b"1")
            cancelled = await self.store.cancel_queued(row.id)
            if cancelled is not None:
                seq = await publish(
                    self.js,
                    event_subject(row.id),
                    JobEventMessage(job_id=row.id, type="cancelled", step=row.step, steps=row.steps).encode(),
                    msg_id=f"{row.id}.cancelled",
                )
                await self.store.note_seq(row.id, seq)
                row = cancelled
            await self.nc.publish(cancel_subject(row.id), b"")
            self.dispatcher.kick(row.model)
        except NATS_ERRORS as exc:
            log.warning("cancel of %s not delivered: %s", row.id, type(exc).__name__)
            raise unavailable(
                "queue_unavailable", "The job queue is not reachable right now; try cancelling again."
            ) from None
        log.info("job cancel requested", extra={"job_id": row.id, "status": row.status})
        return await self._proto(row)

    # --- WatchJob --------------------------------------------------------------------------------

    async def WatchJob(
        self, request: inference_pb2.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[inference_pb2.JobEvent]:
        owner = require_user(request.actor, "follow your jobs")
        row = await self.store.get_owned(request.job_id, owner)
        job = await self._proto(row)
        base, minor = row.event_seq, 0
        yield inference_pb2.JobEvent(type=job.status, job=job, seq=base * SEQ_SCALE)
        if row.terminal:
            return
        WATCH_STREAMS.inc()
        try:
            # Events after the snapshot, replayed from the stream and then live: nothing between
            # reading the row and subscribing is lost, and nothing is seen twice.
            sub = await self.js.subscribe(
                event_subject(row.id),
                stream=EVENTS_STREAM,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                config=ConsumerConfig(opt_start_seq=row.event_seq + 1),
            )
        except NATS_ERRORS:
            WATCH_STREAMS.dec()
            raise unavailable(
                "events_unavailable", "Live job updates are not available right now; reconnect in a moment."
            ) from None
        try:
            while True:
                if self._stopping.is_set():
                    raise unavailable(
                        "inference_restarting",
                        "This server is restarting; reconnect to keep following the job.",
                    )
                queued = job.status == "queued"
                try:
                    msg = await sub.next_msg(
                        timeout=self.settings.watch_position_interval_s if queued else 1.0
                    )
                except TimeoutError:  # nats raises its own or the plain one
                    if queued:
                        fresh = await self.store.get(row.id)
                        position = await self.store.position(fresh) if fresh else 0
                        if fresh is not None and fresh.status == "queued" and position != job.position:
                            job.position = position
                            minor = min(minor + 1, SEQ_SCALE - 1)
                            yield inference_pb2.JobEvent(type="queued", job=job, seq=base * SEQ_SCALE + minor)
                    continue
                try:
                    event = JobEventMessage.decode(msg.data)
                except MessageError:
                    continue
                if not apply_to_proto(job, event):
                    continue
                seq = msg.metadata.sequence.stream
                if frees_dispatch(event):
                    # The durable applier may not have got here yet; applying is idempotent, and then
                    # a GetJob right after this event agrees with it.
                    applied = await self.store.apply_event(event, seq)
                    note_applied(event, applied)
                    if applied is not None:
                        self.dispatcher.kick(applied.model)
                base, minor = seq, 0
                yield inference_pb2.JobEvent(type=event.type, job=job, seq=base * SEQ_SCALE)
                if job.status in TERMINAL:
                    return
        finally:
            WATCH_STREAMS.dec()
            try:
                await sub.unsubscribe()
            except NATS_ERRORS:
                pass
