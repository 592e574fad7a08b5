"""Who is calling: the principal auth returned for this request, and how routes declare their needs.

Every route needs an authenticated caller unless its handler is marked `@optional_auth` (anonymous
callers welcome, a credential is still checked when sent) or `@no_auth` (credentials are not even
looked at: health, metrics, login).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from aiohttp import web

from easel.common.v1 import common_pb2
from services.common.errors import EaselError, forbidden, unauthenticated

SESSION_COOKIE = "easel_session"

AuthNeed = Literal["required", "optional", "none"]
F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    role: str
    credential_kind: str  # "session" | "api_key"
    credential_id: str
    token: str
    via_cookie: bool
    scopes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def actor(self) -> common_pb2.Actor:
        return common_pb2.Actor(user_id=self.user_id, username=self.username, role=self.role)


PRINCIPAL = web.RequestKey("principal", Principal)  # set only when a credential checked out
CLEAR_SESSION_COOKIE = web.RequestKey("clear_session_cookie", bool)


def optional_auth(handler: F) -> F:
    handler.easel_auth = "optional"  # type: ignore[attr-defined]
    return handler


def no_auth(handler: F) -> F:
    handler.easel_auth = "none"  # type: ignore[attr-defined]
    return handler


def needs_scope(scope: str) -> Callable[[F], F]:
    """The credential must carry `scope` (sessions carry all; API keys what they were made with)."""

    def mark(handler: F) -> F:
        handler.easel_scope = scope  # type: ignore[attr-defined]
        return handler

    return mark


def scope_of(handler: object) -> str | None:
    scope = getattr(handler, "easel_scope", None)
    return scope if isinstance(scope, str) else None


def check_scope(principal: Principal, scope: str | None) -> None:
    if scope is not None and scope not in principal.scopes:
        raise forbidden(
            "insufficient_scope",
            f"This credential lacks the '{scope}' scope; use an API key made with it, or log in.",
        )


def auth_need(handler: object) -> AuthNeed:
    need = getattr(handler, "easel_auth", "required")
    return "optional" if need == "optional" else "none" if need == "none" else "required"


def principal_of(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)


def require_principal(request: web.Request) -> Principal:
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        raise unauthenticated(
            "unauthenticated", "Log in, or send an API key as 'Authorization: Bearer <key>'."
        )
    return principal


def actor_of(request: web.Request) -> common_pb2.Actor:
    """The actor for gallery and inference calls; anonymous when nobody is logged in."""
    principal = request.get(PRINCIPAL)
    return principal.actor if principal is not None else common_pb2.Actor()


__all__ = [
    "CLEAR_SESSION_COOKIE",
    "PRINCIPAL",
    "SESSION_COOKIE",
    "EaselError",
    "Principal",
    "actor_of",
    "auth_need",
    "check_scope",
    "needs_scope",
    "no_auth",
    "optional_auth",
    "principal_of",
    "require_principal",
    "scope_of",
]
