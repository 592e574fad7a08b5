"""Checking, normalising and thumbnailing image bytes. Pure CPU work: call it through a thread.

Untrusted bytes meet as little of Pillow as possible: the format is recognised from its magic bytes
first, and only the PNG, JPEG or WebP decoder is ever given the data.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from services.common.errors import invalid

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Pillow warns between MAX_IMAGE_PIXELS and twice that; we refuse those ourselves with our own code,
# so the warning would only be noise in the logs.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def configure_pillow(max_pixels: int) -> None:
    """Pillow's decompression-bomb guard is process-wide: an image header announcing more than twice
    this many pixels raises `DecompressionBombError` before a single pixel is decoded."""
    Image.MAX_IMAGE_PIXELS = max_pixels


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int
    thumb_size: int
    thumb_quality: int


@dataclass(frozen=True)
class PreparedImage:
    """An original ready to store: PNG bytes, their hash and size, and its WebP thumbnail."""

    png: bytes
    sha256: str
    width: int
    height: int
    thumb: bytes

    @property
    def original_key(self) -> str:
        return f"sha256/{self.sha256[:2]}/{self.sha256}.png"

    @property
    def thumb_key(self) -> str:
        return f"thumb/{self.sha256[:2]}/{self.sha256}.webp"


def sniff(data: bytes) -> str | None:
    """The allowed format these bytes claim to be, None when they claim none of them."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


# Formats people do upload, named so the answer can say which one it was.
_OTHER_IMAGE_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"8BPS", 0, "PSD"),
    (b"%PDF", 0, "PDF"),
)


def _other_image_format(data: bytes) -> str | None:
    for magic, offset, name in _OTHER_IMAGE_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def _open(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Opens and fully decodes `data`, mapping every failure to the error a user can act on."""
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise _bomb() from None
    except ValueError as exc:
        # PNG text chunks that inflate past Pillow's limits are the same attack in another place.
        if "decompress" in str(exc).lower():
            raise _bomb() from None
        raise _undecodable(fmt) from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, IndexError, TypeError):
        raise _undecodable(fmt) from None
    width, height = im.size
    if width < 1 or height < 1:
        raise _undecodable(fmt)
    if width * height > max_pixels:
        raise invalid(
            "image_too_many_pixels",
            f"The image is {width}x{height} pixels; images may have at most {max_pixels:,} pixels. "
            "Scale it down and upload it again.",
            "image",
        )
    try:
        im.load()
    except Image.DecompressionBombError:
        raise _bomb() from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, MemoryError):
        raise _undecodable(fmt) from None
    return im


def _bomb() -> Exception:
    return invalid(
        "decompression_bomb",
        "The image declares far more pixels than it could reasonably hold and was refused as a "
        "decompression bomb; upload an ordinary PNG, JPEG or WebP file.",
        "image",
    )


def _undecodable(fmt: str) -> Exception:
    return invalid(
        "not_an_image",
        f"The file looks like {fmt} but could not be decoded (it may be truncated or damaged); "
        "upload a complete PNG, JPEG or WebP file.",
        "image",
    )


def _thumbnail(im: Image.Image, limits: Limits) -> bytes:
    thumb = im.copy()
    thumb.thumbnail((limits.thumb_size, limits.thumb_size), Image.Resampling.LANCZOS)
    if thumb.mode not in ("RGB", "RGBA"):
        thumb = thumb.convert("RGBA" if thumb.has_transparency_data else "RGB")
    out = io.BytesIO()
    thumb.save(out, "WEBP", quality=limits.thumb_quality, method=4)
    return out.getvalue()


def _prepared(png: bytes, im: Image.Image, limits: Limits) -> PreparedImage:
    return PreparedImage(
        png=png,
        sha256=hashlib.sha256(png).hexdigest(),
        width=im.width,
        height=im.height,
        thumb=_thumbnail(im, limits),
    )


def prepare_generated(png: bytes, limits: Limits) -> PreparedImage:
    """A worker's PNG, stored byte for byte (its hash is its identity), checked and thumbnailed."""
    if not png:
        raise invalid("not_an_image", "An image in the request is empty; send PNG bytes.", "images")
    if sniff(png) != "PNG":
        raise invalid("not_a_png", "Generated images must be sent as PNG bytes.", "images")
    # Workers may write images larger than users may upload (upscaling); only the bomb guard applies.
    im = _open(png, "PNG", max_pixels=2 * limits.max_pixels)
    return _prepared(png, im, limits)


def check_upload_size(data: bytes, limits: Limits) -> None:
    if len(data) > limits.max_bytes:
        raise invalid(
            "image_too_large",
            f"The file is {len(data):,} bytes; uploads may be at most {limits.max_bytes:,} bytes. "
            "Upload a smaller or more compressed image.",
            "image",
        )
    if not data:
        raise invalid("not_an_image", "The upload is empty; choose a PNG, JPEG or WebP file.", "image")


def prepare_upload(data: bytes, purpose: str, limits: Limits) -> PreparedImage:
    """An uploaded init image or mask: checked against the limits, turned upright, re-encoded as a
    PNG without metadata (EXIF, GPS, text chunks and ICC profiles are dropped), and thumbnailed."""
    check_upload_size(data, limits)
    fmt = sniff(data)
    if fmt is None:
        other = _other_image_format(data)
        if other is not None:
            raise invalid(
                "unsupported_image_format",
                f"{other} images are not supported; convert it to PNG, JPEG or WebP and upload it again.",
                "image",
            )
        raise invalid(
            "not_an_image",
            "The file is not an image; upload a PNG, JPEG or WebP file.",
            "image",
        )
    im = _open(data, fmt, limits.max_pixels)
    try:
        upright = ImageOps.exif_transpose(im)
        if purpose == "mask":
            clean = upright.convert("L")
        else:
            clean = upright.convert("RGBA" if upright.has_transparency_data else "RGB")
    except (OSError, ValueError) as exc:
        raise invalid(
            "unsupported_image_format",
            f"This kind of {fmt} image ({im.mode} pixels) is not supported ({exc}); "
            "save it as an ordinary 8-bit RGB image and upload it again.",
            "image",
        ) from None
    # A fresh image carries no info dict, so nothing from the original's metadata can be written.
    stripped = Image.new(clean.mode, clean.size)
    stripped.paste(clean)
    out = io.BytesIO()
    stripped.save(out, "PNG", optimize=False, compress_level=6)
    return _prepared(out.getvalue(), stripped, limits)
