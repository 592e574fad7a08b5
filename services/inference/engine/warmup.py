"""Acceleration and warm-up at load: the family's fast path, compiled for every bucket and size.

Every shape the compiled denoiser serves is compiled and run once when the model loads, so no job
pays for a compile. A warm-up that fails leaves the model on its eager path: slower, never broken.
"""

from __future__ import annotations

import logging

from PIL import Image

from ..accel import Accel
from . import batching
from .cache import empty_cache
from .family import LoadedModel
from .requests import Item, Plan

log = logging.getLogger(__name__)


def warm_sizes(loaded: LoadedModel, accel: Accel) -> list[tuple[int, int]]:
    """The model's default size and each configured size it allows (in range, in its multiples)."""
    manifest = loaded.manifest
    sizes = [(manifest.default_width, manifest.default_height)]
    sizes += [
        (w, h)
        for w, h in accel.sizes
        if (w, h) not in sizes
        and manifest.min_size <= min(w, h)
        and max(w, h) <= manifest.max_size
        and not w % manifest.size_multiple
        and not h % manifest.size_multiple
    ]
    return sizes


def accelerate(loaded: LoadedModel, accel: Accel, one_by_one: bool) -> None:
    """Channels-last, fused QKV and the compiled denoiser, warmed for every bucket at load."""
    from .. import accel as accel_module
    from .. import pipelines

    manifest = loaded.manifest
    family = loaded.family
    fast = family.accelerate(loaded.base, accel)
    if fast is None:
        return
    task = family.base_task(manifest)
    timer = accel_module.WarmTimer()
    try:
        for width, height in warm_sizes(loaded, accel):
            plan = Plan(
                task,
                width,
                height,
                accel.warm_steps,
                family.warm_guidance(manifest),
                family.warm_sampler(manifest),
                1.0,
                manifest.name,
            )
            init = mask = None
            if task == "inpaint":
                init = Image.new("RGB", (width, height), (127, 127, 127))
                mask = Image.new("L", (width, height), 255)
            for bucket in fast.buckets:
                items = [Item("warm-up", "", seed, init, mask) for seed in range(bucket)]
                with family.compiled(loaded.pipe(task), fast):
                    batching.run_batch(loaded, plan, items, None, one_by_one)
            fast.sizes.add((width, height))
    except Exception as exc:
        oom = pipelines.is_out_of_memory(exc)
        reason = "out of memory" if oom else f"{type(exc).__name__}: {str(exc)[:300]}"
        log.warning("compiling %s failed (%s); it runs uncompiled", manifest.name, reason)
        if oom:
            empty_cache(loaded.device)
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
