"""Reading image uploads: multipart files, form fields and base64 strings.

Gallery checks the bytes themselves (formats, sizes, pixel counts) when they are uploaded to it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from services.common.errors import invalid

from .. import textcheck

# An image and a mask, possibly as base64 inside JSON, need more room than the API's ordinary JSON
# bodies (EASEL_MAX_BODY_BYTES). Gallery still enforces its own per-image limits on each upload.
UPLOAD_MAX_BODY_BYTES = 48 * 1024 * 1024


def with_upload_limit(request: web.Request) -> web.Request:
    """The request with room for uploads. Use the returned copy only to read the body: the principal
    and request id stay on the original."""
    if request.content.is_eof():
        # Already read (the CSRF check parsed a cookie-authenticated form, or there is no body):
        # the parsed form is kept on the original, so that is the one to read from.
        return request
    limit = max(request.client_max_size, UPLOAD_MAX_BODY_BYTES)
    try:
        return request.clone(client_max_size=limit)
    except RuntimeError:  # read with request.read() already
        return request


def is_multipart(request: web.Request) -> bool:
    return request.content_type == "multipart/form-data"


async def read_form(request: web.Request) -> tuple[dict[str, str], dict[str, list[web.FileField]]]:
    """A multipart or urlencoded form: its text fields (first value wins) and its files by name."""
    try:
        form = await request.post()
    except (ValueError, LookupError, HttpProcessingError):  # malformed: no boundary, bad part headers
        raise invalid(
            "invalid_form", "The form body could not be read; send well-formed multipart/form-data."
        ) from None
    textcheck.check_form(form)  # NUL and lone surrogates in names, values and file names: 400
    fields: dict[str, str] = {}
    files: dict[str, list[web.FileField]] = {}
    for name, value in form.items():
        if isinstance(value, web.FileField):
            files.setdefault(name, []).append(value)
        elif isinstance(value, str):
            fields.setdefault(name, value)
        else:  # bytes: a part without a filename but with a binary content type
            fields.setdefault(name, value.decode("utf-8", "replace"))
    return fields, files


async def file_bytes(upload: web.FileField) -> bytes:
    # The form parser spooled the part to a temporary file: reading it is blocking I/O.
    return await asyncio.to_thread(upload.file.read)


def typed_form(fields: Mapping[str, str], ints: frozenset[str], numbers: frozenset[str]) -> dict[str, Any]:
    """Form fields (all text) as JSON-like values: the named numeric fields parsed, empty ones absent."""
    data: dict[str, Any] = {}
    for name, raw in fields.items():
        text = raw.strip()
        if text == "":
            continue
        if name in ints:
            try:
                data[name] = int(text)
            except ValueError:
                raise invalid("invalid_field", f"'{name}' must be a whole number.", field=name) from None
        elif name in numbers:
            try:
                value = float(text)
            except ValueError:
                raise invalid("invalid_field", f"'{name}' must be a number.", field=name) from None
            if not math.isfinite(value):
                raise invalid("invalid_field", f"'{name}' must be a number.", field=name)
            data[name] = value
        else:
            data[name] = raw
    return data


def _decode_base64(value: str, field: str) -> bytes:
    text = value.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise invalid(
                "invalid_base64",
                f"'{field}' is a data URL without base64 data; send plain base64 or a base64 data URL.",
                field=field,
            )
    # Some encoders wrap base64 at 76 columns; whitespace carries nothing.
    compact = "".join(text.split())
    if not compact:
        raise invalid("missing_image", f"'{field}' is empty; send the image as base64.", field=field)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(
            "invalid_base64",
            f"'{field}' is not valid base64; send the image file's bytes base64-encoded.",
            field,
        ) from None


async def decode_base64(value: str, field: str) -> bytes:
    if len(value) < 64 * 1024:
        return _decode_base64(value, field)
    return await asyncio.to_thread(_decode_base64, value, field)
