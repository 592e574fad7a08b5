"""Running a batch of images through one model: one pipeline call, the compiled path's bucket
padding, and the out-of-memory fallback (halves, with VAE tiling and attention slicing).

Every image has its own generator seeded on the CPU, so an image comes out the same alone or in a
batch and on any device; which family the model belongs to only changes how the call is made
(Family.encode and Family.denoise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from .cache import empty_cache, out_of_memory
from .family import LoadedModel
from .requests import Cancelled, Item, Plan
from .stages import StageClock, tracer

if TYPE_CHECKING:
    from ..accel import FastPath

log = logging.getLogger(__name__)

OnStep = Callable[[int, int], bool]


def run_batch(
    loaded: LoadedModel,
    plan: Plan,
    items: list[Item],
    on_step: OnStep | None,
    one_by_one: bool,
) -> list[Image.Image]:
    """The images for `items` from one pipeline call on `loaded`, with its stages timed."""
    import torch

    family = loaded.family
    pipe = loaded.pipe(plan.task)
    pipe.scheduler = family.scheduler(loaded, plan.sampler)
    # CPU generators: the same seed gives the same starting noise on any GPU or CPU.
    generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
    stages = StageClock()

    def callback(pipeline: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        stages.step(i + 1)
        if on_step is not None and on_step(i + 1, int(pipeline.num_timesteps)) is False:
            raise Cancelled(f"cancelled after step {i + 1}")
        return kwargs

    with tracer.start_as_current_span("inference.encode_prompt", attributes={"easel.images": len(items)}):
        embeddings = family.encode(pipe, loaded, items, plan, one_by_one)
    attributes = {"easel.model": plan.model, "easel.task": plan.task, "easel.images": len(items)}
    with stages.watch(family.decoder(pipe), attributes):
        images = family.denoise(pipe, plan, items, embeddings, generators, callback)
    stages.emit()
    return images


def run_compiled(
    loaded: LoadedModel,
    fast: FastPath,
    plan: Plan,
    items: list[Item],
    on_step: OnStep | None,
    one_by_one: bool,
) -> list[Image.Image]:
    """The batch on the compiled denoiser, padded to its bucket sizes (static shapes, no recompile).

    A padding row repeats the last image (same prompt and seed); its output is dropped. Each row has
    its own generator, so padding does not change the real images' starting noise.
    """
    from .. import accel

    images: list[Image.Image] = []
    at = 0
    with loaded.family.compiled(loaded.pipe(plan.task), fast):
        for real, padded in accel.chunks(len(items), fast.buckets):
            part = items[at : at + real]
            at += real
            padding = [part[-1]] * (padded - real)
            images += run_batch(loaded, plan, part + padding, on_step, one_by_one)[:real]
    return images


def run_with_retry(
    loaded: LoadedModel,
    plan: Plan,
    items: list[Item],
    on_step: OnStep | None,
    one_by_one: bool,
    budget_bytes: int,
) -> list[Image.Image]:
    """The batch, on the compiled path where it serves the plan; out of memory, in halves."""
    from .. import pipelines

    try:
        fast = loaded.fast
        if fast is not None and loaded.family.serves_compiled(fast, plan):
            return run_compiled(loaded, fast, plan, items, on_step, one_by_one)
        return run_batch(loaded, plan, items, on_step, one_by_one)
    except Exception as exc:
        if not pipelines.is_out_of_memory(exc):
            raise
    log.warning(
        "out of memory on a batch of %d %dx%d images with %s; retrying in halves with VAE tiling "
        "and attention slicing",
        len(items),
        plan.width,
        plan.height,
        plan.model,
    )
    empty_cache(loaded.device)
    pipe = loaded.pipe(plan.task)
    set_low_memory(pipe, True)
    try:
        half = max(1, (len(items) + 1) // 2)
        images: list[Image.Image] = []
        for at in range(0, len(items), half):
            images += run_batch(loaded, plan, items[at : at + half], on_step, one_by_one)
        return images
    except Exception as exc:
        if pipelines.is_out_of_memory(exc):
            empty_cache(loaded.device)
            raise out_of_memory(
                loaded.device,
                budget_bytes,
                plan.model,
                f"making {len(items)} {plan.width}x{plan.height} image(s)",
            ) from None
        raise
    finally:
        set_low_memory(pipe, False)


def set_low_memory(pipe: Any, on: bool) -> None:
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


def paste_outside_mask(images: list[Image.Image], items: list[Item]) -> list[Image.Image]:
    """Inpainted images with the input kept exactly outside the mask, not its VAE round trip."""
    return [
        Image.composite(img, item.init_image, item.mask_image)
        if item.init_image is not None and item.mask_image is not None
        else img
        for img, item in zip(images, items, strict=True)
    ]
