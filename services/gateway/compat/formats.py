"""Re-encoding result PNGs into the formats the compatible APIs let callers ask for.

Images are stored as PNG (with their generation parameters in text chunks); OpenAI's
`output_format`/`output_compression` and A1111's `samples_format`/`jpeg_quality` ask for JPEG or WebP
instead, which the gateway makes on the way out.
"""

from __future__ import annotations

import asyncio
import io

from PIL import Image

# Our name for each format -> (Pillow's name, MIME type, file extension).
FORMATS: dict[str, tuple[str, str, str]] = {
    "png": ("PNG", "image/png", "png"),
    "jpeg": ("JPEG", "image/jpeg", "jpeg"),
    "webp": ("WEBP", "image/webp", "webp"),
}
ALIASES = {"jpg": "jpeg"}


def canonical(fmt: str) -> str:
    """'png', 'jpeg' or 'webp' for any spelling the APIs use ('jpg', 'JPEG', ...); '' if unknown."""
    name = fmt.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in FORMATS else ""


def mime_type(fmt: str) -> str:
    return FORMATS[canonical(fmt) or "png"][1]


def _convert(png: bytes, fmt: str, quality: int) -> bytes:
    pil_name = FORMATS[fmt][0]
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        out = io.BytesIO()
        if pil_name == "JPEG":
            im.convert("RGB").save(out, "JPEG", quality=quality)
        else:
            im.save(out, pil_name, quality=quality)
        return out.getvalue()


async def convert(png: bytes, fmt: str, quality: int = 100) -> bytes:
    """The image in `fmt` ('png' returns it unchanged). `quality` 0-100 as OpenAI's
    output_compression and A1111's jpeg_quality mean it. Runs in a thread (CPU work)."""
    name = canonical(fmt) or "png"
    if name == "png":
        return png
    return await asyncio.to_thread(_convert, png, name, max(1, min(100, quality)))
