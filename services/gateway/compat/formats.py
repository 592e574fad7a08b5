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


_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


def _exif_for(parameters: str | None) -> Image.Exif:
    """EXIF carrying A1111's parameters text in UserComment, where A1111 writes it for JPEG and
    WebP (and where /sdapi/v1/png-info reads it back)."""
    exif = Image.Exif()
    if parameters:
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\x00" + parameters.encode("utf-16-be")
    return exif


def _convert(png: bytes, fmt: str, quality: int) -> bytes:
    pil_name = FORMATS[fmt][0]
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        parameters = im.info.get("parameters")
        exif = _exif_for(parameters if isinstance(parameters, str) else None)
        out = io.BytesIO()
        if pil_name == "JPEG":
            im.convert("RGB").save(out, "JPEG", quality=quality, exif=exif)
        else:
            im.save(out, pil_name, quality=quality, exif=exif)
        return out.getvalue()


async def convert(png: bytes, fmt: str, quality: int = 100) -> bytes:
    """The image in `fmt` ('png' returns it unchanged, text chunks and all; JPEG and WebP carry the
    parameters text in EXIF). `quality` 0-100 as OpenAI's output_compression and A1111's
    jpeg_quality mean it. Runs in a thread (CPU work)."""
    name = canonical(fmt) or "png"
    if name == "png":
        return png
    return await asyncio.to_thread(_convert, png, name, max(1, min(100, quality)))
