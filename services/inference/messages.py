"""What the inference api and its workers say to each other over NATS.

- Work message (stream `EASEL_JOBS`, subject `easel.jobs.<model>.<kind>`, msg id = job id):
  `WorkMessage` as JSON. The api fills every parameter (seed included), so a redelivered message
  produces the same pixels on any worker.
- Job event (stream `EASEL_EVENTS`, subject `easel.events.job.<job_id>`): `JobEventMessage` as JSON.
  The stream sequence of an event orders it: the api applies an event to the jobs table only when
  its sequence is newer than the row's, and never moves a finished job back.
- Cancellation: the api writes the job id into the KV bucket `EASEL_CANCELLED` (so a worker that
  pulls the job later skips it) and publishes on `easel.control.cancel.<job_id>` (so a worker
  running it stops between denoising steps). The payload of the control message is empty.

Every message carries `v` (schema version); readers ignore fields they do not know.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1

EVENT_TYPES = ("queued", "running", "progress", "completed", "failed", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
EDIT_KINDS = frozenset({"img2img", "inpaint", "upscale", "variation"})

CANCEL_BUCKET = "EASEL_CANCELLED"
# A cancellation only matters while its job message can still be delivered.
CANCEL_TTL_S = 24 * 3600.0

EventType = Literal["queued", "running", "progress", "completed", "failed", "cancelled"]


class MessageError(ValueError):
    """A message that cannot be read; it will never become readable, so it is dropped."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = SCHEMA_VERSION

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class JobParams(BaseModel):
    """Normalised generation parameters; `seed` is the seed of image 0, image i uses seed + i."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str = ""
    negative_prompt: str = ""
    # 0 for an edit means "the size of the init image" (the worker resolves it).
    width: int = 0
    height: int = 0
    steps: int
    guidance: float
    sampler: str
    seed: int
    n: int = 1
    strength: float | None = None
    init_image_id: str = ""
    mask_image_id: str = ""

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]


class WorkMessage(_Message):
    job_id: str
    owner_id: str
    owner_username: str = ""
    kind: str
    model: str
    params: JobParams
    submitted_at: float = Field(default_factory=time.time)

    @classmethod
    def decode(cls, data: bytes) -> WorkMessage:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise MessageError(f"unreadable work message: {exc.error_count()} errors") from None


class ImageRefMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    index: int


class JobEventMessage(_Message):
    job_id: str
    type: EventType
    at: float = Field(default_factory=time.time)
    step: int = 0
    steps: int = 0
    images: list[ImageRefMessage] = Field(default_factory=list)
    error_code: str = ""
    error_message: str = ""
    cached: bool = False
    # Which delivery of the work message produced this event (1 = first); for logs and metrics.
    attempt: int = 0
    worker: str = ""

    @classmethod
    def decode(cls, data: bytes) -> JobEventMessage:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise MessageError(f"unreadable job event: {exc.error_count()} errors") from None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL


def completed_msg_id(job_id: str) -> str:
    """JetStream de-duplication id of a job's completion: a redelivered job does not complete twice."""
    return f"{job_id}.completed"


def params_dict(params: JobParams) -> dict[str, Any]:
    """Parameters as stored and shown (no empty edit fields on a txt2img job)."""
    out = params.model_dump()
    for key in ("init_image_id", "mask_image_id"):
        if not out[key]:
            del out[key]
    if out["strength"] is None:
        del out["strength"]
    return out


def image_params(
    model: str, kind: str, params: JobParams, index: int, width: int, height: int
) -> dict[str, Any]:
    """What one image records about how it was made (PNG metadata and the gallery record).

    No job id: identical requests make identical files, which the gallery stores once.
    """
    out = params_dict(params)
    out.pop("n", None)
    out.update(model=model, kind=kind, seed=params.seed + index, index=index, width=width, height=height)
    return out


async def cancel_bucket(js: JetStreamContext) -> KeyValue:
    """The KV bucket of cancelled job ids, created if missing (api and workers both call this)."""
    try:
        return await js.key_value(CANCEL_BUCKET)
    except BucketNotFoundError:
        pass  # made below
    try:
        return await js.create_key_value(
            KeyValueConfig(bucket=CANCEL_BUCKET, ttl=CANCEL_TTL_S, storage=StorageType.FILE, history=1)
        )
    except BadRequestError:
        # Another process created it between our two calls.
        return await js.key_value(CANCEL_BUCKET)
