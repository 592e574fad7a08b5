"""What a generation asks for, and the checks a user sees when it asks for something wrong.

Plain data and validation over the manifests: no torch, no diffusers, so the job API can validate
requests without loading the generation stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from PIL import Image, ImageOps

from services.common import limits
from services.common.errors import EaselError, invalid

from ..models import KINDS, ModelManifest
from ..schedulers import resolve_sampler

MAX_IMAGES = limits.IMAGES_PER_JOB_MAX
MAX_PROMPT_CHARS = limits.PROMPT_MAX_CHARS
MAX_GUIDANCE = limits.GUIDANCE_MAX
MAX_SEED = limits.SEED_MAX
# Upscale is a "hires fix": a light pass that sharpens the enlarged picture without redrawing it.
UPSCALE_MAX_STRENGTH = 0.35
# A variation keeps the composition of its source and changes the details.
VARIATION_MAX_STRENGTH = 0.6
NEEDS_INIT = ("img2img", "inpaint", "upscale", "variation")
NEEDS_STRENGTH = NEEDS_INIT
# Which pipeline each kind runs on; upscale and variation are img2img passes.
TASK_OF_KIND = {
    "txt2img": "txt2img",
    "img2img": "img2img",
    "upscale": "img2img",
    "variation": "img2img",
    "inpaint": "inpaint",
}


@dataclass
class GenerationRequest:
    kind: str  # txt2img | img2img | inpaint | upscale | variation
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    sampler: str
    seeds: list[int]  # one seed per image
    strength: float = 0.75
    init_image: Image.Image | None = None  # img2img, inpaint, upscale, variation
    mask_image: Image.Image | None = None  # inpaint (white = repaint)


class Cancelled(Exception):
    """on_step asked to stop; no images were produced."""


@dataclass
class Item:
    """One image to make: the unit a batch is split into when memory runs short."""

    prompt: str
    negative_prompt: str
    seed: int
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None


@dataclass(frozen=True)
class Plan:
    """The settings every image of one pipeline call shares."""

    task: str  # which pipeline: txt2img | img2img | inpaint
    width: int
    height: int
    steps: int
    guidance: float
    sampler: str
    strength: float
    model: str = ""


def effective_strength(req: GenerationRequest) -> float:
    """The denoising strength a request runs with (upscale and variation are capped)."""
    if req.kind == "upscale":
        return min(req.strength, UPSCALE_MAX_STRENGTH)
    if req.kind == "variation":
        return min(req.strength, VARIATION_MAX_STRENGTH)
    return req.strength


def output_size(manifest: ModelManifest, req: GenerationRequest) -> tuple[int, int]:
    """Width and height of the images a request makes.

    Upscale doubles the init image, shrunk (keeping its shape) to fit the model's max_size and
    rounded down to multiples of the model's size_multiple (8, or 16 for the transformer families);
    every other kind makes the requested size.
    """
    if req.kind != "upscale" or req.init_image is None:
        return req.width, req.height
    w, h = req.init_image.size
    w2, h2 = 2 * w, 2 * h
    scale = min(1.0, manifest.max_size / max(w2, h2))
    step = manifest.size_multiple
    return int(w2 * scale) // step * step, int(h2 * scale) // step * step


def installed(models: dict[str, ModelManifest]) -> str:
    return ", ".join(sorted(models)) or "none"


def model_not_found(models: dict[str, ModelManifest], model: str) -> EaselError:
    return EaselError(
        "model_not_found",
        f"Model {model!r} is not installed; use one of: {installed(models)}.",
        grpc.StatusCode.NOT_FOUND,
        field="model",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_request(models: dict[str, ModelManifest], model: str, req: GenerationRequest) -> None:
    """Raises the EaselError a user should see for the first thing wrong with `req`."""
    manifest = models.get(model)
    if manifest is None:
        raise model_not_found(models, model)
    served = ("inpaint",) if manifest.inpainting else manifest.kinds
    if req.kind not in KINDS or req.kind not in served:
        raise invalid(
            "kind_not_supported",
            f"Model {model} does not do {req.kind!r}; it does: {', '.join(served)}.",
            field="kind",
        )
    for name, text, allow_empty in (
        ("prompt", req.prompt, False),
        ("negative_prompt", req.negative_prompt, True),
    ):
        if not isinstance(text, str) or (not allow_empty and not text.strip()):
            raise invalid("invalid_prompt", "Write a prompt describing the image.", field=name)
        if len(text) > MAX_PROMPT_CHARS:
            raise invalid(
                "invalid_prompt",
                f"The {name.replace('_', ' ')} is {len(text)} characters long; shorten it to at most "
                f"{MAX_PROMPT_CHARS}.",
                field=name,
            )
    if req.kind in NEEDS_INIT and req.init_image is None:
        raise invalid("missing_init_image", f"A {req.kind} needs an input image; attach one.", field="image")
    if req.kind == "inpaint" and req.mask_image is None:
        raise invalid(
            "missing_mask",
            "Inpainting needs a mask (white where the image should be repainted); attach one.",
            field="mask",
        )
    if req.kind == "upscale":
        w, h = output_size(manifest, req)
        if min(w, h) < manifest.min_size:
            raise invalid(
                "invalid_size",
                f"The image is too small to upscale with {model}: the result would be {w}x{h}, below its "
                f"minimum of {manifest.min_size}; use a larger image.",
                field="image",
            )
    else:
        for name, value in (("width", req.width), ("height", req.height)):
            step = manifest.size_multiple
            if not _is_int(value) or value % step or not manifest.min_size <= value <= manifest.max_size:
                raise invalid(
                    "invalid_size",
                    f"{name.capitalize()} {value!r} is not allowed for {model}: use a multiple of {step} "
                    f"from {manifest.min_size} to {manifest.max_size}.",
                    field=name,
                )
    if not _is_int(req.steps) or not 1 <= req.steps <= manifest.max_steps:
        raise invalid(
            "invalid_steps",
            f"Steps must be a whole number from 1 to {manifest.max_steps} for {model}; got {req.steps!r}.",
            field="steps",
        )
    if (
        isinstance(req.guidance, bool)
        or not isinstance(req.guidance, int | float)
        or not math.isfinite(req.guidance)
        or not 0 <= req.guidance <= MAX_GUIDANCE
    ):
        raise invalid(
            "invalid_guidance",
            f"Guidance must be a number from 0 to {MAX_GUIDANCE:g}; got {req.guidance!r}.",
            field="guidance",
        )
    sampler = resolve_sampler(req.sampler)  # raises unknown_sampler naming the valid ones
    if manifest.samplers and sampler not in manifest.samplers:
        raise invalid(
            "unknown_sampler",
            f"Sampler {req.sampler!r} does not work with {model} (a {manifest.family} model); use one of: "
            f"{', '.join(manifest.samplers)}.",
            field="sampler",
        )
    if req.kind in NEEDS_STRENGTH and (
        isinstance(req.strength, bool)
        or not isinstance(req.strength, int | float)
        or not 0 < req.strength <= 1
    ):
        raise invalid(
            "invalid_strength",
            f"Strength must be above 0 and at most 1; got {req.strength!r}.",
            field="strength",
        )
    if not isinstance(req.seeds, list) or not 1 <= len(req.seeds) <= MAX_IMAGES:
        count = len(req.seeds) if isinstance(req.seeds, list) else req.seeds
        raise invalid(
            "too_many_images",
            f"Ask for 1 to {MAX_IMAGES} images at a time; got {count!r}.",
            field="n",
        )
    for seed in req.seeds:
        if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
            raise invalid(
                "invalid_seed",
                f"Seed {seed!r} is not allowed: use a whole number from 0 to {MAX_SEED}.",
                field="seed",
            )


def fit(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """`image` scaled to cover `size` and center-cropped, so nothing is stretched."""
    image = ImageOps.exif_transpose(image) or image
    image = image.convert(mode)
    if image.size == size:
        return image
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


def binary_mask(mask: Image.Image) -> Image.Image:
    # The pipelines binarize at one half too; pasting with the same mask keeps edges consistent.
    return mask.point(lambda v: 255 if v >= 128 else 0)


def items_of(req: GenerationRequest, width: int, height: int) -> list[Item]:
    """The request's images as items, with its init image and mask fitted to the output size."""
    init = mask = None
    if req.init_image is not None:
        init = fit(req.init_image, (width, height), "RGB")
    if req.kind == "inpaint" and req.mask_image is not None:
        mask = binary_mask(fit(req.mask_image, (width, height), "L"))
    return [Item(req.prompt, req.negative_prompt, seed, init, mask) for seed in req.seeds]
