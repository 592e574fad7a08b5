"""The generation engine: validates requests, keeps models loaded, runs batches of images.

Requests and validation need only the manifests, so this module imports torch and diffusers
lazily: the job API can validate and batch-key requests without loading the generation stack.
`Engine.generate` is synchronous; the worker calls it in a thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from PIL import Image, ImageOps

from services.common import limits
from services.common.config import SettingsError
from services.common.errors import EaselError, invalid, unavailable

from .accel import Accel
from .models import KINDS, ModelManifest
from .pngmeta import encode_png, read_png_params
from .schedulers import resolve_sampler

if TYPE_CHECKING:
    from .accel import FastPath
    from .pipelines import LoadedModel

log = logging.getLogger(__name__)
# Spans for the stages of a generation (model load, prompt encoding, denoising, VAE decode). They are
# children of whatever span is current in the calling thread: the worker runs `generate` in a thread
# with its job's context copied in.
tracer = trace.get_tracer("easel.inference.engine")

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
# Share of memory the loaded weights may take by default; the rest is for activations.
DEFAULT_BUDGET_SHARE = 0.5

__all__ = [
    "Cancelled",
    "Engine",
    "GenerationRequest",
    "effective_strength",
    "encode_png",
    "output_size",
    "read_png_params",
    "validate_request",
]


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
class _Item:
    """One image to make: the unit a batch is split into when memory runs short."""

    prompt: str
    negative_prompt: str
    seed: int
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None


@dataclass(frozen=True)
class _Plan:
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
    rounded down to multiples of 8; every other kind makes the requested size.
    """
    if req.kind != "upscale" or req.init_image is None:
        return req.width, req.height
    w, h = req.init_image.size
    w2, h2 = 2 * w, 2 * h
    scale = min(1.0, manifest.max_size / max(w2, h2))
    return int(w2 * scale) // 8 * 8, int(h2 * scale) // 8 * 8


def _installed(models: dict[str, ModelManifest]) -> str:
    return ", ".join(sorted(models)) or "none"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_request(models: dict[str, ModelManifest], model: str, req: GenerationRequest) -> None:
    """Raises the EaselError a user should see for the first thing wrong with `req`."""
    manifest = models.get(model)
    if manifest is None:
        raise EaselError(
            "model_not_found",
            f"Model {model!r} is not installed; use one of: {_installed(models)}.",
            grpc.StatusCode.NOT_FOUND,
            field="model",
        )
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
            if not _is_int(value) or value % 8 or not manifest.min_size <= value <= manifest.max_size:
                raise invalid(
                    "invalid_size",
                    f"{name.capitalize()} {value!r} is not allowed for {model}: use a multiple of 8 from "
                    f"{manifest.min_size} to {manifest.max_size}.",
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
    resolve_sampler(req.sampler)  # raises unknown_sampler naming the valid ones
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


def _fit(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """`image` scaled to cover `size` and center-cropped, so nothing is stretched."""
    image = ImageOps.exif_transpose(image) or image
    image = image.convert(mode)
    if image.size == size:
        return image
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


def _binary_mask(mask: Image.Image) -> Image.Image:
    # The pipelines binarize at one half too; pasting with the same mask keeps edges consistent.
    return mask.point(lambda v: 255 if v >= 128 else 0)


class Engine:
    """Loaded pipelines in an LRU bounded by a memory budget, and batched generation on them."""

    def __init__(
        self,
        models: dict[str, ModelManifest],
        device: str = "auto",
        dtype: str = "auto",
        memory_budget_bytes: int | None = None,
        batch_invariant: bool | None = None,
        accel: Accel | None = None,
    ) -> None:
        import torch
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from . import pipelines

        self._p = pipelines
        self.models = dict(models)
        self.device = pipelines.resolve_device(device)
        self.dtype = pipelines.resolve_dtype(dtype, self.device)
        self.memory_budget_bytes = (
            memory_budget_bytes if memory_budget_bytes is not None else self._default_budget()
        )
        # Bit-identical images in any batch cost the batching speed-up; a CPU has little of that to
        # lose, a GPU has most of its throughput in it (there batches match solo runs to rounding).
        self.batch_invariant = self.device == "cpu" if batch_invariant is None else batch_invariant
        self.accel = accel or Accel()
        self.cache_folder = None
        if self.accel.compiled and self.accel.cache_dir is not None:
            from . import accel as accel_module

            self.cache_folder = accel_module.use_cache(self.accel.cache_dir, self.device)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        # One generation at a time: pipelines and their schedulers hold per-call state.
        self._lock = threading.RLock()
        threads = os.environ.get("EASEL_TORCH_THREADS", "").strip()
        if threads:
            if not threads.isdigit() or int(threads) < 1:
                raise SettingsError("EASEL_TORCH_THREADS", "set it to a whole number of threads, 1 or more")
            torch.set_num_threads(int(threads))
        diffusers_logging.disable_progress_bar()
        logging.getLogger("diffusers.models.modeling_utils").addFilter(_quiet_cast_warning)
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        log.info(
            "engine on %s (%s), weight budget %.1f GiB, %s, compile cache %s, models: %s",
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.memory_budget_bytes / 2**30,
            self.accel.describe(),
            self.cache_folder or "torch's default",
            _installed(self.models),
        )

    # --- requests -------------------------------------------------------------------------

    def validate(self, model: str, req: GenerationRequest) -> None:
        validate_request(self.models, model, req)

    def output_size(self, model: str, req: GenerationRequest) -> tuple[int, int]:
        return output_size(self.models[model], req)

    def compatible_key(self, model: str, req: GenerationRequest) -> tuple[object, ...]:
        """Requests with equal keys can run as one pipeline call."""
        width, height = (
            output_size(self.models[model], req) if model in self.models else (req.width, req.height)
        )
        strength = effective_strength(req) if req.kind in NEEDS_STRENGTH else None
        try:
            sampler = resolve_sampler(req.sampler)
        except EaselError:
            sampler = req.sampler
        return (model, req.kind, width, height, req.steps, sampler, float(req.guidance), strength)

    # --- models ---------------------------------------------------------------------------

    def _default_budget(self) -> int:
        import torch

        if self.device.startswith("cuda"):
            _, total = torch.cuda.mem_get_info(torch.device(self.device))
            return int(total * DEFAULT_BUDGET_SHARE)
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 16 * 2**30
        return int(total * DEFAULT_BUDGET_SHARE)

    def compiled(self, model: str) -> FastPath | None:
        """The loaded model's compiled path (sizes, buckets, warm-up time), if it has one."""
        with self._lock:
            loaded = self._loaded.get(model)
            return loaded.fast if loaded is not None else None

    def loaded_models(self) -> list[str]:
        """Loaded models, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def unload(self, model: str) -> bool:
        with self._lock:
            loaded = self._loaded.pop(model, None)
            if loaded is None:
                return False
            self._p.release(loaded)
            log.info("unloaded model %s", model)
            return True

    def _evict_for(self, incoming: int, keep: str | None = None) -> None:
        used = sum(m.nbytes for m in self._loaded.values())
        for name in list(self._loaded):
            if used + incoming <= self.memory_budget_bytes:
                break
            if name == keep:
                continue
            used -= self._loaded[name].nbytes
            log.info("evicting model %s to stay within the memory budget", name)
            self.unload(name)

    def _load_failed(self, model: str, reason: str) -> EaselError:
        # The details (paths, the loader's own error) go to the log, not to the user.
        log.error("model %s at %s could not be loaded: %s", model, self.models[model].path, reason)
        return unavailable(
            "model_load_failed",
            f"Model {model} is installed but its files could not be loaded; an operator should rebuild "
            f"or fetch it again (`make models`). Meanwhile use another installed model: "
            f"{_installed(self.models)}.",
        )

    def load(self, model: str) -> float:
        """Loads `model` unless it is loaded; returns the seconds spent."""
        if model not in self.models:
            raise EaselError(
                "model_not_found",
                f"Model {model!r} is not installed; use one of: {_installed(self.models)}.",
                grpc.StatusCode.NOT_FOUND,
                field="model",
            )
        with self._lock:
            if model in self._loaded:
                self._loaded.move_to_end(model)
                return 0.0
            started = time.perf_counter()
            with tracer.start_as_current_span(
                "inference.model_load", attributes={"easel.model": model, "easel.device": self.device}
            ):
                self._loaded[model] = self._load(model)
                self._evict_for(0, keep=model)
            return time.perf_counter() - started

    def _load(self, model: str) -> LoadedModel:
        manifest = self.models[model]
        p = self._p
        if not p.folder_exists(manifest.path):
            raise self._load_failed(model, "its folder or model_index.json is missing")
        try:
            estimate = p.estimate_bytes(manifest, self.dtype)
        except OSError as exc:
            raise self._load_failed(model, str(exc)) from None
        self._evict_for(estimate)
        for attempt in (1, 2):
            try:
                loaded: LoadedModel = p.load_model(manifest, self.device, self.dtype, self.batch_invariant)
                if self.accel.enabled:
                    self._accelerate(loaded)
                return loaded
            except Exception as exc:
                if not p.is_out_of_memory(exc):
                    log.exception("loading model %s failed", model)
                    raise self._load_failed(model, str(exc)[:400]) from None
            # Out of memory. Freeing happens here, outside the except block, once the traceback
            # no longer holds the half-loaded weights.
            if attempt == 1:
                log.warning("out of memory loading %s; unloading every other model and retrying", model)
                for name in list(self._loaded):
                    self.unload(name)
                self._empty_cache()
        raise self._out_of_memory(model, f"loading {model}")

    def _accelerate(self, loaded: LoadedModel) -> None:
        """Channels-last, fused QKV and the compiled UNet, warmed for every bucket at load.

        A warm-up that fails leaves the model on its eager UNet: slower, never broken.
        """
        from . import accel

        manifest = loaded.manifest
        fast = accel.prepare(loaded.base, self.accel)
        if fast is None:
            return
        sizes = [(manifest.default_width, manifest.default_height)]
        sizes += [
            (w, h)
            for w, h in self.accel.sizes
            if (w, h) not in sizes and manifest.min_size <= min(w, h) and max(w, h) <= manifest.max_size
        ]
        task = "inpaint" if manifest.inpainting else "txt2img"
        timer = accel.WarmTimer()
        try:
            for width, height in sizes:
                plan = _Plan(task, width, height, self.accel.warm_steps, 7.5, "euler", 1.0, manifest.name)
                init = mask = None
                if task == "inpaint":
                    init = Image.new("RGB", (width, height), (127, 127, 127))
                    mask = Image.new("L", (width, height), 255)
                for bucket in fast.buckets:
                    items = [_Item("warm-up", "", seed, init, mask) for seed in range(bucket)]
                    with accel.installed(loaded.pipe(task), fast):
                        _run_batch(loaded, plan, items, None, self.batch_invariant)
                fast.sizes.add((width, height))
        except Exception as exc:
            oom = self._p.is_out_of_memory(exc)
            reason = "out of memory" if oom else f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("compiling %s failed (%s); it runs uncompiled", manifest.name, reason)
            if oom:
                self._empty_cache()
            return
        seconds, cache = timer.done()
        fast.warm_seconds = seconds
        loaded.fast = fast
        log.info(
            "compiled %s for %s at batch sizes %s in %.1fs (compile cache: %d hits, %d misses)",
            manifest.name,
            ", ".join(f"{w}x{h}" for w, h in sorted(fast.sizes)),
            ",".join(map(str, fast.buckets)),
            seconds,
            cache["hits"],
            cache["misses"],
        )

    def _empty_cache(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _out_of_memory(self, model: str, what: str) -> EaselError:
        import torch

        if self.device.startswith("cuda"):
            _, total = torch.cuda.mem_get_info(torch.device(self.device))
            limit = f"the {total / 2**30:.0f} GiB of GPU memory"
        else:
            limit = f"the memory of this machine (weight budget {self.memory_budget_bytes / 2**30:.1f} GiB)"
        return EaselError(
            "out_of_memory",
            f"{what.capitalize()} with {model} needs more than {limit}; ask for fewer images or a smaller "
            "size, then try again.",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )

    def memory_stats(self) -> dict[str, int]:
        import torch

        stats = {
            "rss": _rss_bytes(),
            "loaded_bytes": sum(m.nbytes for m in self._loaded.values()),
            "budget_bytes": self.memory_budget_bytes,
            "loaded_models": len(self._loaded),
        }
        if self.device.startswith("cuda"):
            free, total = torch.cuda.mem_get_info(torch.device(self.device))
            stats.update(
                gpu_total=total,
                gpu_free=free,
                gpu_used=total - free,
                gpu_allocated=torch.cuda.memory_allocated(self.device),
                gpu_reserved=torch.cuda.memory_reserved(self.device),
            )
        else:
            # No GPU: zeros, so the GPU series exist on every worker and dashboards and alerts need no
            # special case (the alerts divide by gpu_total only where it is above zero).
            stats.update(gpu_total=0, gpu_free=0, gpu_used=0)
        return stats

    # --- generation -----------------------------------------------------------------------

    def generate(
        self,
        model: str,
        reqs: list[GenerationRequest],
        on_step: Callable[[int, int], bool] | None = None,
    ) -> list[list[Image.Image]]:
        """Images for each request, made in one pipeline call; raises Cancelled when on_step says so.

        on_step(step, total) runs after every denoising step; returning False (exactly) cancels.
        Every image has its own seeded generator, so it comes out the same alone or in a batch.
        """
        if not reqs:
            return []
        for req in reqs:
            self.validate(model, req)
        keys = {self.compatible_key(model, req) for req in reqs}
        if len(keys) != 1:
            raise ValueError("requests in one generate() call must have the same compatible_key")
        first = reqs[0]
        width, height = self.output_size(model, first)
        plan = _Plan(
            task=self._p.TASK_OF_KIND[first.kind],
            width=width,
            height=height,
            steps=first.steps,
            guidance=float(first.guidance),
            sampler=resolve_sampler(first.sampler),
            strength=effective_strength(first),
            model=model,
        )
        items = [item for req in reqs for item in self._items(req, width, height)]
        with self._lock:
            self.load(model)
            loaded = self._loaded[model]
            started = time.perf_counter()
            images = self._run_with_retry(loaded, plan, items, on_step)
        log.info(
            "generated %d %s image(s) %dx%d with %s in %.2fs",
            len(images),
            first.kind,
            width,
            height,
            model,
            time.perf_counter() - started,
        )
        if plan.task == "inpaint":
            # Outside the mask the picture stays exactly the input, not its VAE round trip.
            images = [
                Image.composite(img, item.init_image, item.mask_image)
                if item.init_image is not None and item.mask_image is not None
                else img
                for img, item in zip(images, items, strict=True)
            ]
        out: list[list[Image.Image]] = []
        at = 0
        for req in reqs:
            out.append(images[at : at + len(req.seeds)])
            at += len(req.seeds)
        return out

    def _items(self, req: GenerationRequest, width: int, height: int) -> list[_Item]:
        init = mask = None
        if req.init_image is not None:
            init = _fit(req.init_image, (width, height), "RGB")
        if req.kind == "inpaint" and req.mask_image is not None:
            mask = _binary_mask(_fit(req.mask_image, (width, height), "L"))
        return [_Item(req.prompt, req.negative_prompt, seed, init, mask) for seed in req.seeds]

    def _run_with_retry(
        self,
        loaded: LoadedModel,
        plan: _Plan,
        items: list[_Item],
        on_step: Callable[[int, int], bool] | None,
    ) -> list[Image.Image]:
        p = self._p
        try:
            fast = loaded.fast
            if fast is not None and fast.serves(plan.width, plan.height, plan.guidance > 1):
                return self._run_compiled(loaded, fast, plan, items, on_step)
            return _run_batch(loaded, plan, items, on_step, self.batch_invariant)
        except Exception as exc:
            if not p.is_out_of_memory(exc):
                raise
        log.warning(
            "out of memory on a batch of %d %dx%d images with %s; retrying in halves with VAE tiling "
            "and attention slicing",
            len(items),
            plan.width,
            plan.height,
            plan.model,
        )
        self._empty_cache()
        pipe = loaded.pipe(plan.task)
        _set_low_memory(pipe, True)
        try:
            half = max(1, (len(items) + 1) // 2)
            images: list[Image.Image] = []
            for at in range(0, len(items), half):
                images += _run_batch(loaded, plan, items[at : at + half], on_step, self.batch_invariant)
            return images
        except Exception as exc:
            if p.is_out_of_memory(exc):
                self._empty_cache()
                raise self._out_of_memory(
                    plan.model, f"making {len(items)} {plan.width}x{plan.height} image(s)"
                ) from None
            raise
        finally:
            _set_low_memory(pipe, False)

    def _run_compiled(
        self,
        loaded: LoadedModel,
        fast: FastPath,
        plan: _Plan,
        items: list[_Item],
        on_step: Callable[[int, int], bool] | None,
    ) -> list[Image.Image]:
        """The batch on the compiled UNet, padded to its bucket sizes (static shapes, no recompile).

        A padding row repeats the last image (same prompt and seed); its output is dropped. Each row
        has its own generator, so padding does not change the real images' starting noise.
        """
        from . import accel

        images: list[Image.Image] = []
        at = 0
        with accel.installed(loaded.pipe(plan.task), fast):
            for real, padded in accel.chunks(len(items), fast.buckets):
                part = items[at : at + real]
                at += real
                padding = [part[-1]] * (padded - real)
                images += _run_batch(loaded, plan, part + padding, on_step, self.batch_invariant)[:real]
        return images


def _quiet_cast_warning(record: logging.LogRecord) -> bool:
    # SDXL pipelines cast their VAE to float32 and back around every encode and decode by design;
    # diffusers warns about each cast, which would fill the worker's log.
    return not record.getMessage().startswith("There are modules in")


def _set_low_memory(pipe: Any, on: bool) -> None:
    """VAE tiling and attention slicing trade speed for memory; they change pixels slightly."""
    try:
        if on:
            pipe.vae.enable_tiling()
            pipe.enable_attention_slicing()
        else:
            pipe.vae.disable_tiling()
            pipe.disable_attention_slicing()
    except (AttributeError, RuntimeError) as exc:
        log.warning("could not switch low-memory mode %s: %s", "on" if on else "off", exc)


_EMBEDDING_NAMES = ("prompt_embeds", "negative_prompt_embeds")
_SDXL_EMBEDDING_NAMES = (*_EMBEDDING_NAMES, "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


def _encode(
    pipe: Any, loaded: LoadedModel, items: list[_Item], cfg: bool, one_by_one: bool
) -> dict[str, Any]:
    """Prompt embeddings per image; each distinct prompt is encoded once.

    With `one_by_one` (batch-invariant mode) every prompt is encoded on its own, so batching cannot
    change its embedding in the last bits. Otherwise the distinct prompts go through the text
    encoders together, one call for those with a negative prompt and one for those without: a GPU
    spends as long on one prompt as on sixteen.
    """
    import torch

    device = loaded.device
    names = _SDXL_EMBEDDING_NAMES if loaded.manifest.is_sdxl else _EMBEDDING_NAMES
    keys = list(dict.fromkeys((item.prompt, item.negative_prompt) for item in items))
    if one_by_one:
        calls = [[key] for key in keys]
    else:
        calls = [group for group in ([k for k in keys if k[1]], [k for k in keys if not k[1]]) if group]
    rows: dict[tuple[str, str], tuple[Any, ...]] = {}
    with torch.no_grad():
        for call in calls:
            # An empty negative prompt is None, so SDXL uses zeros for it as it does by default.
            negatives = [negative for _, negative in call]
            encoded = pipe.encode_prompt(
                prompt=[prompt for prompt, _ in call],
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=cfg,
                negative_prompt=negatives if all(negatives) else None,
            )
            for i, key in enumerate(call):
                rows[key] = tuple(None if part is None else part[i : i + 1] for part in encoded)
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        parts = [rows[(item.prompt, item.negative_prompt)][i] for item in items]
        out[name] = None if any(part is None for part in parts) else torch.cat(parts, dim=0)
    return out


def _run_batch(
    loaded: LoadedModel,
    plan: _Plan,
    items: list[_Item],
    on_step: Callable[[int, int], bool] | None,
    one_by_one: bool,
) -> list[Image.Image]:
    import torch

    from .schedulers import make_scheduler

    pipe = loaded.pipe(plan.task)
    pipe.scheduler = make_scheduler(plan.sampler, loaded.scheduler_config)
    cfg = plan.guidance > 1
    # CPU generators: the same seed gives the same starting noise on any GPU or CPU.
    generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
    stages = _StageClock()

    def callback(pipeline: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        stages.step(i + 1)
        if on_step is not None and on_step(i + 1, int(pipeline.num_timesteps)) is False:
            raise Cancelled(f"cancelled after step {i + 1}")
        return kwargs

    with tracer.start_as_current_span("inference.encode_prompt", attributes={"easel.images": len(items)}):
        embeddings = _encode(pipe, loaded, items, cfg, one_by_one)
    kwargs: dict[str, Any] = {
        **embeddings,
        "guidance_scale": plan.guidance,
        "generator": generators,
        "output_type": "pil",
        "callback_on_step_end": callback,
    }
    if plan.task == "txt2img":
        kwargs.update(num_inference_steps=plan.steps, width=plan.width, height=plan.height)
    else:
        # Image-to-image runs int(steps * strength) steps; make that at least one.
        steps = plan.steps
        while int(steps * plan.strength) < 1:
            steps += 1
        kwargs.update(num_inference_steps=steps, strength=plan.strength, image=[i.init_image for i in items])
        if plan.task == "inpaint":
            kwargs.update(mask_image=[i.mask_image for i in items], width=plan.width, height=plan.height)
    attributes = {"easel.model": plan.model, "easel.task": plan.task, "easel.images": len(items)}
    with stages.watch(pipe, attributes):
        result = pipe(**kwargs)
    stages.emit()
    images: list[Image.Image] = list(result.images)
    return images


class _StageClock:
    """Times the denoising loop and the VAE decode inside one pipeline call, without changing it.

    The pipeline runs as it always does (pixels stay identical): the step callback marks the end of
    each denoising step, and forward hooks on the VAE's decoder mark the decode. The two spans are
    written afterwards with those timestamps, as children of the current span. A call that stops
    early (cancelled, or failed) still gets its denoising span, marked as such.
    """

    def __init__(self) -> None:
        self.attributes: dict[str, Any] = {}
        self.started = 0
        self.last_step = 0
        self.steps = 0
        self.decode_started = 0
        self.decode_ended = 0
        self.ended = 0

    def step(self, step: int) -> None:
        self.last_step = time.time_ns()
        self.steps = step

    def _decode_start(self, *_: Any) -> None:
        if not self.decode_started:
            self.decode_started = time.time_ns()

    def _decode_end(self, *_: Any) -> None:
        # With VAE slicing the decoder runs once per image: the decode ends with the last one.
        self.decode_ended = time.time_ns()

    @contextlib.contextmanager
    def watch(self, pipe: Any, attributes: dict[str, Any]) -> Iterator[None]:
        self.attributes = attributes
        decoder = getattr(getattr(pipe, "vae", None), "decoder", None)
        handles = []
        if decoder is not None and hasattr(decoder, "register_forward_pre_hook"):
            handles = [
                decoder.register_forward_pre_hook(self._decode_start),
                decoder.register_forward_hook(self._decode_end),
            ]
        self.started = time.time_ns()
        try:
            yield
        except BaseException as exc:
            self.ended = time.time_ns()
            if self.steps:
                denoise = tracer.start_span(
                    "inference.denoise", start_time=self.started, attributes=self.attributes
                )
                denoise.set_attribute("easel.steps", self.steps)
                denoise.set_attribute("easel.outcome", "cancelled" if isinstance(exc, Cancelled) else "error")
                denoise.end(end_time=self.last_step)
            raise
        finally:
            for handle in handles:
                handle.remove()
        self.ended = time.time_ns()

    def emit(self) -> None:
        attributes = self.attributes
        denoise_end = self.last_step or self.decode_started or self.ended
        denoise = tracer.start_span("inference.denoise", start_time=self.started, attributes=attributes)
        denoise.set_attribute("easel.steps", self.steps)
        denoise.end(end_time=denoise_end)
        # Without decoder hooks (another VAE class), the decode is what follows the last step.
        decode_start = self.decode_started or denoise_end
        decode_end = self.decode_ended or self.ended
        tracer.start_span("inference.vae_decode", start_time=decode_start, attributes=attributes).end(
            end_time=decode_end
        )


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
