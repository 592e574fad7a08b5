"""Signed, expiring image URLs: what `response_format=url` answers in the OpenAI-compatible API.

OpenAI's image URLs need no API key (clients such as LibreChat's DALL-E tool download them with a
plain GET) and expire after an hour. Ours work the same way: the path names the image and format,
the query names its owner and expiry, and an HMAC-SHA256 over all of them, keyed with
EASEL_SIGNED_URL_SECRET, proves the gateway made the URL. Anyone holding the URL can fetch that one
image in that one format until it expires; nothing else. The gateway reads the image from gallery
as its owner, so a deleted image is gone from its URLs too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from urllib.parse import quote, urlencode

from aiohttp import web

from services.common.errors import EaselError, forbidden, invalid

from ..urls import base_url, settings_of
from . import formats

FILES_PATH = "/v1/images/files"
_NAME = re.compile(r"^([0-9A-Za-z-]{1,64})\.(png|jpeg|webp)$")


def _key(request: web.Request) -> bytes:
    return settings_of(request).signed_url_secret.get_secret_value().encode()


def signature(key: bytes, image_id: str, fmt: str, quality: int, owner: str, expires: int) -> str:
    message = "\n".join((image_id, fmt, str(quality), owner, str(expires))).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signed_url(request: web.Request, owner: str, image_id: str, fmt: str = "png", quality: int = 100) -> str:
    """An absolute URL that serves the image (as `fmt`) without credentials until it expires."""
    fmt = formats.canonical(fmt) or "png"
    quality = 100 if fmt == "png" else quality
    expires = int(time.time()) + settings_of(request).signed_url_ttl_s
    query = {"owner": owner, "expires": str(expires)}
    if fmt != "png":
        query["quality"] = str(quality)
    query["sig"] = signature(_key(request), image_id, fmt, quality, owner, expires)
    return f"{base_url(request)}{FILES_PATH}/{quote(image_id, safe='')}.{fmt}?{urlencode(query)}"


def _refused() -> EaselError:
    return forbidden(
        "invalid_signature",
        "This image URL is not valid (altered, or made by another server); ask for the image again.",
    )


def verify(request: web.Request) -> tuple[str, str, str, int, int]:
    """(owner, image_id, format, quality, seconds left) of a valid, unexpired signed URL; else 403."""
    match = _NAME.match(request.match_info.get("name", ""))
    if match is None:
        raise invalid("invalid_url", "This is not an image URL this server made.")
    image_id, fmt = match.group(1), match.group(2)
    query = request.query
    owner, sig = query.get("owner", ""), query.get("sig", "")
    try:
        expires = int(query.get("expires", ""))
        quality = int(query.get("quality", "100"))
    except ValueError:
        raise _refused() from None
    expected = signature(_key(request), image_id, fmt, quality, owner, expires)
    if not owner or not hmac.compare_digest(expected, sig):
        raise _refused()
    left = expires - int(time.time())
    if left <= 0:
        raise forbidden("url_expired", "This image URL has expired; ask for the image again.")
    return owner, image_id, fmt, quality, left
