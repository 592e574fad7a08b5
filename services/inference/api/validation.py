"""Turns a SubmitJob request into normalised parameters, or the error that says what to fix.

The api validates against the manifests on the model volume only (no torch here); a worker checks
the same request again with the engine before it runs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from easel.inference.v1 import inference_pb2
from services.common import limits
from services.common.errors import EaselError, invalid
from services.inference.messages import EDIT_KINDS, JobParams
from services.inference.models import KINDS, ModelManifest, ModelsDirError, discover_models
from services.inference.schedulers import resolve_sampler

log = logging.getLogger(__name__)

MAX_IMAGES = limits.IMAGES_PER_JOB_MAX
MAX_SEED = limits.SEED_MAX
MAX_GUIDANCE = limits.GUIDANCE_MAX
DEFAULT_STRENGTH = 0.75
PREFERRED_DEFAULT = "tiny-sd"


class ModelCatalog:
    """The installed models, re-read from the volume every few seconds so new models show up."""

    def __init__(self, models_dir: Path, default_model: str = "", refresh_s: float = 5.0) -> None:
        self.models_dir = models_dir
        self.configured_default = default_model
        self.refresh_s = refresh_s
        self._models: dict[str, ModelManifest] = {}
        self._problem = ""
        self._read_at = -1e9
        self._lock = asyncio.Lock()

    async def models(self) -> dict[str, ModelManifest]:
        if time.monotonic() - self._read_at < self.refresh_s:
            return self._models
        async with self._lock:
            if time.monotonic() - self._read_at >= self.refresh_s:
                try:
                    found = await asyncio.to_thread(discover_models, self.models_dir)
                    if set(found) != set(self._models):
                        log.info("models installed: %s", ", ".join(sorted(found)))
                    self._models = found
                    self._problem = ""
                except ModelsDirError as exc:
                    if str(exc) != self._problem:
                        log.warning("no usable models: %s", exc)
                    self._models, self._problem = {}, str(exc)
                self._read_at = time.monotonic()
        return self._models

    def default_name(self, models: dict[str, ModelManifest]) -> str:
        if self.configured_default:
            return self.configured_default
        if PREFERRED_DEFAULT in models:
            return PREFERRED_DEFAULT
        return min(models) if models else ""

    def not_found(self, name: str, models: dict[str, ModelManifest]) -> EaselError:
        if not models:
            message = (
                f"Model {name!r} is not installed and no models are installed at all; "
                "ask the operator to run `make models`."
                if name
                else "No models are installed; ask the operator to run `make models`."
            )
        else:
            message = f"Model {name!r} is not installed; use one of: {', '.join(sorted(models))}."
        return EaselError("model_not_found", message, grpc.StatusCode.NOT_FOUND, field="model")


@dataclass(frozen=True)
class Normalized:
    kind: str
    model: ModelManifest
    params: JobParams
    # Hash of the request as sent: tells a retried submit from a different one under the same key.
    request_hash: str
    # Set when the result cache may answer this request.
    cache_key: str | None


def request_hash(req: inference_pb2.SubmitJobRequest) -> str:
    copy = inference_pb2.SubmitJobRequest()
    copy.CopyFrom(req)
    copy.ClearField("actor")
    copy.ClearField("idempotency_key")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _size(value: int, name: str, manifest: ModelManifest, default: int) -> int:
    if value == 0:
        return default
    step = manifest.size_multiple
    if value % step or not manifest.min_size <= value <= manifest.max_size:
        raise invalid(
            "invalid_size",
            f"{name} must be a multiple of {step} from {manifest.min_size} to {manifest.max_size} "
            f"for model {manifest.name}; got {value}.",
            field=name,
        )
    return value


def normalize(
    req: inference_pb2.SubmitJobRequest,
    models: dict[str, ModelManifest],
    catalog: ModelCatalog,
    prompt_max_chars: int,
) -> Normalized:
    kind = req.kind or "txt2img"
    if kind not in KINDS:
        raise invalid("unknown_kind", f"kind must be one of: {', '.join(KINDS)}; got {kind!r}.", field="kind")
    name = req.model or catalog.default_name(models)
    manifest = models.get(name)
    if manifest is None:
        raise catalog.not_found(name, models)
    if kind not in manifest.kinds:
        raise invalid(
            "kind_not_supported",
            f"Model {name} does not do {kind}; it does: {', '.join(manifest.kinds)}. "
            "Pick another model or kind.",
            field="kind",
        )
    p = req.params
    # The same codes as the engine's own checks (services.inference.engine.validate_request).
    if not p.prompt.strip():
        raise invalid("invalid_prompt", "Write a prompt describing the image.", field="prompt")
    for field, text in (("prompt", p.prompt), ("negative_prompt", p.negative_prompt)):
        if len(text) > prompt_max_chars:
            raise invalid(
                "invalid_prompt",
                f"The {field.replace('_', ' ')} is {len(text)} characters long; shorten it to at most "
                f"{prompt_max_chars}.",
                field=field,
            )

    edit = kind in EDIT_KINDS
    # An edit without a size keeps the size of its init image (known only to the worker).
    width = _size(p.width, "width", manifest, 0 if edit else manifest.default_width)
    height = _size(p.height, "height", manifest, 0 if edit else manifest.default_height)

    steps = p.steps or manifest.default_steps
    if not 1 <= steps <= manifest.max_steps:
        raise invalid(
            "invalid_steps",
            f"steps must be from 1 to {manifest.max_steps} for model {name}; got {steps}.",
            field="steps",
        )
    guidance = float(p.guidance) if p.has_guidance else manifest.default_guidance
    if not 0 <= guidance <= MAX_GUIDANCE or guidance != guidance:
        raise invalid(
            "invalid_guidance",
            f"guidance must be from 0 to {MAX_GUIDANCE:g}; got {guidance:g}.",
            field="guidance",
        )
    sampler = resolve_sampler(p.sampler) if p.sampler else manifest.default_sampler
    if manifest.samplers and sampler not in manifest.samplers:
        # The same check and sentence as the worker's (engine/requests.py): refused at submit.
        raise invalid(
            "unknown_sampler",
            f"Sampler {p.sampler!r} does not work with {manifest.name} (a {manifest.family} model); "
            f"use one of: {', '.join(manifest.samplers)}.",
            field="sampler",
        )

    n = p.n or 1
    if n > MAX_IMAGES:
        raise invalid("too_many_images", f"n must be from 1 to {MAX_IMAGES}; got {n}.", field="n")
    if n < 1:
        raise invalid("invalid_n", f"n must be from 1 to {MAX_IMAGES}; got {n}.", field="n")

    # -1 asks for a random seed, as in AUTOMATIC1111.
    explicit_seed = p.HasField("seed") and p.seed != -1
    if explicit_seed and not 0 <= p.seed <= MAX_SEED - (n - 1):
        raise invalid(
            "invalid_seed",
            f"seed must be from 0 to {MAX_SEED - (n - 1)} (or -1 for random); got {p.seed}.",
            field="seed",
        )
    seed = p.seed if explicit_seed else secrets.randbelow(MAX_SEED - MAX_IMAGES)

    strength: float | None = None
    if edit:
        strength = float(p.strength) if p.has_strength else DEFAULT_STRENGTH
        if not 0 < strength <= 1 or strength != strength:
            raise invalid(
                "invalid_strength",
                f"strength must be above 0 and at most 1; got {strength:g}.",
                field="strength",
            )
        if not p.init_image_id:
            raise invalid(
                "missing_init_image",
                f"A {kind} needs an input image: set init_image_id.",
                field="init_image_id",
            )
        if kind == "inpaint" and not p.mask_image_id:
            raise invalid(
                "missing_mask",
                "Inpainting needs a mask (white where the image should be repainted): set mask_image_id.",
                field="mask_image_id",
            )

    params = JobParams(
        prompt=p.prompt,
        negative_prompt=p.negative_prompt,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        seed=seed,
        n=n,
        strength=strength,
        init_image_id=p.init_image_id if edit else "",
        mask_image_id=p.mask_image_id if kind == "inpaint" else "",
    )
    cache_key = None
    # Only txt2img with an explicit seed is fully determined by its parameters; an edit depends on
    # image ids that belong to one user.
    if explicit_seed and kind == "txt2img":
        blob = json.dumps(
            {"model": name, "source": manifest.source, "kind": kind, "params": params.model_dump()},
            sort_keys=True,
            separators=(",", ":"),
        )
        cache_key = hashlib.sha256(blob.encode()).hexdigest()
    return Normalized(kind, manifest, params, request_hash(req), cache_key)
