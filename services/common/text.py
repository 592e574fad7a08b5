"""Text no service stores: NUL characters and lone surrogates.

Postgres refuses NUL in `text` and `jsonb`, and a lone surrogate (`"\\ud800"` in JSON, or a byte that
is not UTF-8 in a header, which aiohttp keeps as a surrogate escape) cannot be encoded as UTF-8 at
all, so neither can go into a gRPC message or a row. The gateway refuses such text at the edge, for
every face; the stores check again (defence in depth), so a caller that skips the gateway gets the
same 400 `invalid_field` rather than a database error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .errors import EaselError, invalid


def problem(value: str) -> str | None:
    """What is wrong with `value` ("a NUL character", "a lone surrogate"), or None when nothing is."""
    if "\x00" in value:
        return "a NUL character"
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "a character that is not valid Unicode (a lone surrogate)"
    return None


def refused(field: str | None, what: str) -> EaselError:
    name = f"'{field}'" if field else "The request"
    return invalid(
        "invalid_field",
        f"{name} contains {what}; send plain text without NUL characters or broken Unicode.",
        field=field,
    )


def check(value: str, field: str | None) -> None:
    """Raises 400 invalid_field naming `field` when `value` holds text no store can keep."""
    what = problem(value)
    if what is not None:
        raise refused(field, what)


def check_all(values: Iterable[tuple[str, str]]) -> None:
    """`check` for (field, value) pairs: the first bad one is the error."""
    for field, value in values:
        check(value, field)


def check_message(message: Message, prefix: str = "") -> None:
    """Every string in a protobuf message (nested ones and lists too), naming the field that holds a
    NUL character. Protobuf already refuses invalid UTF-8 on the wire, so NUL is what is left."""
    for descriptor, value in message.ListFields():
        name = f"{prefix}{descriptor.name}"
        repeated = bool(descriptor.is_repeated)
        items: list[Any] = list(value) if repeated else [value]
        if descriptor.type == FieldDescriptor.TYPE_STRING:
            for item in items:
                check(item, name)
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            kind = descriptor.message_type
            if kind is not None and kind.GetOptions().map_entry:
                continue  # no gallery or auth request carries a map
            for i, item in enumerate(items):
                check_message(item, f"{name}[{i}]." if repeated else f"{name}.")
