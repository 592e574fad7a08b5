"""Cross-site request forgery protection for requests that ride on the session cookie.

With a session the token is derived from the session token itself (a keyed hash), so it needs no
storage, changes with every login and cannot be computed without the session. Before login (the
login and register forms) a random token sits in its own cookie and must come back in the form.
Requests authenticated with `Authorization: Bearer` need no token: browsers never add that header
on their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from aiohttp import web

from services.common.errors import forbidden

HEADER = "X-CSRF-Token"
FIELD = "csrf_token"
PRESESSION_COOKIE = "easel_csrf"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_KEY = b"easel-csrf-v1"


def token_for_session(session_token: str) -> str:
    digest = hmac.new(_KEY, session_token.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def new_presession_token() -> str:
    return secrets.token_urlsafe(32)


def matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


async def submitted_token(request: web.Request) -> str | None:
    """The token from the header, or from the form field of a form post."""
    header = request.headers.get(HEADER)
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.post()  # aiohttp keeps the parsed form for the handler
        except (ValueError, LookupError):
            return None  # an unreadable form carries no token: refused like a missing one
        value = form.get(FIELD)
        return value if isinstance(value, str) else None
    return None


def refused() -> Exception:
    return forbidden(
        "csrf_failed",
        "The request's security token is missing or out of date; reload the page and try again.",
    )
