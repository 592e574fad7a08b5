"""Opaque page cursors for keyset pagination.

A cursor is the sort key of the last item on a page, tagged with the listing it belongs to, in
URL-safe base64 of JSON. The next page starts strictly after that key, so every item is returned
exactly once while new (newer) items are added, and no page costs an OFFSET scan.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime, timedelta

from services.common.errors import EaselError, invalid

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(ts: datetime) -> int:
    """Exact: Postgres timestamps have microsecond resolution, so the round trip loses nothing."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def encode(listing: str, key: list[object]) -> str:
    raw = json.dumps({"l": listing, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _bad() -> EaselError:
    return invalid(
        "invalid_cursor",
        "The page cursor is not valid for this listing; start again from the first page.",
        "cursor",
    )


def decode(cursor: str, listing: str, types: tuple[type, ...]) -> list[object]:
    """The sort key in `cursor`, checked against the listing and the key's types."""
    if len(cursor) > 1024:
        raise _bad()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad() from None
    if not isinstance(body, dict) or body.get("l") != listing:
        raise _bad()
    key = body.get("k")
    if not isinstance(key, list) or len(key) != len(types):
        raise _bad()
    out: list[object] = []
    for value, kind in zip(key, types, strict=True):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _bad()
        out.append(value)
    return out


def decode_with_id(cursor: str, listing: str, types: tuple[type, ...]) -> tuple[list[object], uuid.UUID]:
    """Like `decode`, for keys whose last element is an image id (sent as a string)."""
    values = decode(cursor, listing, (*types, str))
    try:
        image_id = uuid.UUID(str(values[-1]))
    except ValueError:
        raise _bad() from None
    return values[:-1], image_id
