"""Reading request bodies and query strings: wrong input becomes a 400 that names the field.

`read_model` is how the REST face reads a body into its model; `read_json` and `Body` are the
untyped reading the compatible APIs still use.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.common.errors import EaselError, invalid

from . import textcheck
from .fields import parse, refusal

M = TypeVar("M", bound=BaseModel)
# Not JSON, though Python's parser takes them; a body that has them goes the slow way to be refused.
_NOT_JSON = (b"NaN", b"Infinity")
# Text the stores cannot hold (NUL, a lone UTF-16 surrogate) and numbers too long to be real: pydantic's
# reader takes them, so a body that may have them goes the slow way, where textcheck refuses them.
_SUSPECT = re.compile(rb"\\u0000|\x00|\\u[dD][89a-fA-F]|[0-9]{%d}" % textcheck.MAX_NUMBER_DIGITS)

JSON_TYPES = ("application/json",)
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
INT32_MIN = -(2**31)


async def read_json(request: web.Request, required: bool = True) -> Body:
    """The JSON object in the body. Form encodings are refused (they are what forged cross-site
    posts use); an empty body is an empty object when `required` is false."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise invalid("missing_body", "Send a JSON object as the request body.")
        return Body({})
    ctype = request.content_type
    if ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise web.HTTPUnsupportedMediaType()  # answered as JSON 415 unsupported_media_type
    data = textcheck.loads(raw)  # the one JSON decoder of bodies: syntax, numbers, NUL, surrogates
    if not isinstance(data, dict):
        raise invalid("invalid_body", 'The body must be a JSON object, like {"prompt": "..."}.')
    return Body(data)


def _is_json(request: web.Request) -> bool:
    ctype = request.content_type
    return ctype in JSON_TYPES or ctype.endswith("+json")


async def read_model(request: web.Request, model: type[M], required: bool = True) -> M:
    """The body as `model`. Parsed and validated in one pass (pydantic's JSON reader, about twice
    as fast as json.loads and checks in Python); bodies it cannot read take `read_json`'s path, so
    every refusal reads as it always has."""
    raw = await request.read()
    if raw.strip() and _is_json(request):
        found = model_from_json(model, raw)
        if found is not None:
            return found
    return parse(model, (await read_json(request, required)).data)


def model_from_json(model: type[M], raw: bytes) -> M | None:
    """`raw` as `model`, or the refusal naming its first wrong field; None when `raw` is not plain
    JSON (read_json then says what is wrong with it)."""
    if any(word in raw for word in _NOT_JSON) or _SUSPECT.search(raw):
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors(include_url=False)[0]["type"] == "json_invalid":
            return None
        raise refusal(model, exc) from None


class Body:
    """Typed access to a JSON object's fields; each wrong field is a 400 naming it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def _missing(self, name: str) -> EaselError:
        return invalid("missing_field", f"'{name}' is required.", field=name)

    def _wrong(self, name: str, what: str) -> EaselError:
        return invalid("invalid_field", f"'{name}' must be {what}.", field=name)

    def string(
        self, name: str, required: bool = False, max_len: int = 10_000, allow_empty: bool = True
    ) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self._missing(name)
            return None
        if not isinstance(value, str):
            raise self._wrong(name, "a string")
        if not allow_empty and not value.strip():
            if required:
                raise invalid("missing_field", f"'{name}' must not be empty.", field=name)
            raise self._wrong(name, "a non-empty string")
        if len(value) > max_len:
            raise self._wrong(name, f"at most {max_len} characters long")
        return value

    def integer(self, name: str, minimum: int = 0, maximum: int = INT32_MAX) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(name, "a whole number")
        if value < minimum:
            raise self._wrong(name, f"at least {minimum}")
        if value > maximum:
            raise self._wrong(name, f"at most {maximum}")
        return value

    def number(self, name: str, minimum: float = -1e9, maximum: float = 1e9) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._wrong(name, "a number")
        if not minimum <= value <= maximum:
            raise self._wrong(name, f"between {minimum:g} and {maximum:g}")
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(name)
        if value is not None and value not in choices:
            raise self._wrong(name, "one of " + ", ".join(choices))
        return value

    def string_list(self, name: str, max_items: int = 50, max_len: int = 100) -> list[str] | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(name, "a list of strings")
        if len(value) > max_items or any(len(v) > max_len for v in value):
            raise self._wrong(name, f"at most {max_items} strings of at most {max_len} characters")
        return list(value)


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid("invalid_query", f"'{name}' must be a whole number.", field=name) from None
    if not minimum <= value <= maximum:
        raise invalid("invalid_query", f"'{name}' must be between {minimum} and {maximum}.", field=name)
    return value


def query_choice(request: web.Request, name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.query.get(name) or default
    if value not in choices:
        raise invalid("invalid_query", f"'{name}' must be one of {', '.join(choices)}.", field=name)
    return value
