"""The output size of an edit, known at submit from its init image's size (the gallery's record).

Why at submit: a job must report the size it makes (edits said 0x0), its cost counts against the
owner's allowance and the fair queue, and an upscale that cannot grow is refused before it waits in
the queue. The rules are the worker's and the engine's (`services.inference.worker.runner.fit_size`,
`services.inference.engine.output_size`), without torch: the worker honours the size the api fills
in, and computes the same one itself for a job stored without it.
"""

from __future__ import annotations

from services.common.errors import EaselError, invalid
from services.inference.models import ModelManifest


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


def upscale_size(width: int, height: int, manifest: ModelManifest) -> tuple[int, int]:
    """Twice the init image, shrunk (keeping its shape) to the model's max_size, multiples of 8."""
    w2, h2 = 2 * width, 2 * height
    scale = min(1.0, manifest.max_size / max(w2, h2))
    return int(w2 * scale) // 8 * 8, int(h2 * scale) // 8 * 8


def upscale_problem(width: int, height: int, manifest: ModelManifest) -> EaselError | None:
    """Why an upscale of a `width` x `height` image with this model cannot work, or None."""
    w, h = upscale_size(width, height, manifest)
    if min(w, h) < manifest.min_size:
        return invalid(
            "invalid_size",
            f"The image is too small to upscale with {manifest.name}: the result would be {w}x{h}, below "
            f"its minimum of {manifest.min_size}; use a larger image.",
            field="init_image_id",
        )
    if w <= width and h <= height:
        return invalid(
            "upscale_cannot_grow",
            f"The image is {width}x{height}, and {manifest.name} makes images of at most "
            f"{manifest.max_size} pixels a side, so an upscale would not enlarge it; use a smaller image "
            "or a model with a larger max_size.",
            field="init_image_id",
        )
    return None


def edit_size(
    kind: str, width: int, height: int, init_width: int, init_height: int, manifest: ModelManifest
) -> tuple[int, int]:
    """The size an edit of an `init_width` x `init_height` image makes; raises if it cannot be made."""
    if kind == "upscale":
        problem = upscale_problem(init_width, init_height, manifest)
        if problem is not None:
            raise problem
        return upscale_size(init_width, init_height, manifest)
    if width and height:
        return width, height
    return fit_size(init_width, init_height, manifest)
