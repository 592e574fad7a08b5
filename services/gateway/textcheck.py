"""Text checked once, at the edge, for every face (REST, OpenAI, AUTOMATIC1111, web pages).

No store can keep a NUL character, and a lone surrogate cannot even be encoded as UTF-8 for a gRPC
call; before this check either one in any field became a 500 somewhere behind the gateway. Here:

- `text_middleware` looks at what arrives before any handler: the path, every query parameter and
  every header value (a byte that is not UTF-8 in a header arrives as a surrogate escape). Bad text
  is a 400 `invalid_field` naming the parameter or header. Credentials that cannot be real (a
  bearer token or Basic user with a character outside printable ASCII, a NUL, broken UTF-8) are a
  401 before auth is asked.
- `loads` is the one JSON decoder of request bodies: it refuses NaN and Infinity, numbers with more
  digits than any field takes (Python's own limit would otherwise answer with its internals), and
  NUL or lone surrogates in any key or string, naming the field.
- `check_form` is the same check for a parsed form (multipart or urlencoded).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

import grpc
from aiohttp import web

from services.common.errors import EaselError, invalid
from services.common.text import problem, refused

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Far more digits than any field takes (seeds are 64-bit: 20 digits), far fewer than Python's limit.
MAX_NUMBER_DIGITS = 100


class _HugeNumber:
    """Stands in for a number too long to take, so that the walk can name its field."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(text: str) -> int | _HugeNumber:
    if len(text) > MAX_NUMBER_DIGITS:
        return _HugeNumber(len(text))
    return int(text)


def _parse_float(text: str) -> float | _HugeNumber:
    if len(text) > MAX_NUMBER_DIGITS * 4:
        return _HugeNumber(len(text))
    return float(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number or null")


def safe_name(name: str) -> str:
    """A field name that can go into an error answer: bad characters shown as U+FFFD."""
    return "".join("\ufffd" if c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF else c for c in name)[:100]


def _short(path: str) -> str | None:
    """A field path fit for an answer: deep ones keep their first 200 characters."""
    return (path[:200] + "...") if len(path) > 200 else (path or None)


def _walk(data: Any) -> None:
    """Every key and string in `data`, depth first, without recursion (whatever depth the parser
    took must not overflow the stack here)."""
    todo: list[tuple[Any, str]] = [(data, "")]
    while todo:
        value, path = todo.pop()
        if isinstance(value, str):
            what = problem(value)
            if what is not None:
                raise refused(_short(path), what)
        elif isinstance(value, _HugeNumber):
            raise invalid(
                "invalid_field",
                f"'{_short(path)}' is a number with {value.digits} digits; send a number in the "
                "field's range.",
                field=_short(path),
            )
        elif isinstance(value, dict):
            items: list[tuple[Any, str]] = []
            for key, item in value.items():
                name = safe_name(key)
                where = f"{path}.{name}" if path else name
                what = problem(key)
                if what is not None:
                    raise refused(_short(where), what)
                items.append((item, where))
            todo.extend(reversed(items))
        elif isinstance(value, list):
            todo.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(value))))


def loads(raw: bytes) -> Any:
    """The JSON value in `raw`, or the 400 that says what is wrong (never Python's own words)."""
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_int=_parse_int, parse_float=_parse_float)
    except UnicodeDecodeError:
        raise invalid("invalid_json", "The body is not valid JSON: it is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        raise invalid("invalid_json", f"The body is not valid JSON ({exc}); fix the syntax.") from None
    except ValueError as exc:  # NaN or Infinity: Python's parser takes them, JSON has no such thing
        raise invalid("invalid_json", f"The body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise invalid("invalid_json", "The body is not valid JSON: it is nested too deeply.") from None
    _walk(data)
    return data


def check_form(form: Mapping[str, Any]) -> None:
    """Every field name, text value and file name of a parsed form."""
    for name, value in form.items():
        field = safe_name(name)
        what = problem(name)
        if what is None and isinstance(value, str):
            what = problem(value)
        elif what is None and isinstance(value, web.FileField):
            what = problem(value.filename or "")
        if what is not None:
            raise refused(field, what)


# --- the middleware ---------------------------------------------------------------------------------


def bad_credentials(message: str) -> EaselError:
    return EaselError("bad_authorization", message, grpc.StatusCode.UNAUTHENTICATED)


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def check_authorization(value: str) -> None:
    """A credential that cannot be real is a 401 here, before it reaches auth (or a gRPC call that
    cannot encode it). Basic credentials may hold any Unicode except control characters."""
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            raise bad_credentials(
                "The Basic credentials are not valid base64 of UTF-8 'username:password'."
            ) from None
        if problem(decoded) is not None or any(not c.isprintable() for c in decoded):
            raise bad_credentials(
                "The Basic credentials hold a control character; send a real username and password."
            )
        return
    if not _printable_ascii(value):
        raise bad_credentials(
            "The Authorization header holds characters no credential has; send "
            "'Authorization: Bearer <session token or API key>'."
        )


def _check_query_bytes(raw: str) -> None:
    """A lone surrogate can reach a query string only as bytes that are not UTF-8 (%ED%A0%80); the
    parsed query shows them as U+FFFD, so they are looked for in the raw string."""
    if "%" not in raw:
        return
    for pair in raw.split("&"):
        name, _, value = pair.partition("=")
        try:
            unquote_to_bytes(name).decode("utf-8")
        except UnicodeDecodeError:
            raise refused(None, "bytes that are not UTF-8 text in a parameter name") from None
        try:
            unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            field = unquote_to_bytes(name).decode("utf-8", "replace")
            raise refused(safe_name(field), "bytes that are not UTF-8 text") from None


def check_request(request: web.Request) -> None:
    """The path, query parameters and headers of `request`; raises the first problem found."""
    if problem(request.path) is not None:
        raise refused("path", problem(request.path) or "")
    for name, value in request.query.items():
        what = problem(name) or problem(value)
        if what is not None:
            raise refused(safe_name(name), what)
    _check_query_bytes(request.rel_url.raw_query_string)
    for name, value in request.headers.items():
        if name.lower() == "authorization":
            check_authorization(value)
            continue
        what = problem(value)
        if what is not None:
            raise refused(name, what)


@web.middleware
async def text_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    check_request(request)
    return await handler(request)
