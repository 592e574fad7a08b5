"""`/api/v1/auth/*` and `/api/v1/keys`: accounts, sessions and API keys (all kept by auth)."""

from __future__ import annotations

import time
from typing import Literal

from aiohttp import web

from easel.auth.v1 import auth_pb2
from services.common.errors import invalid

from .. import models, serialize
from ..principal import SESSION_COOKIE
from ..registry import REST, Area, Call
from ..urls import client_address, cookie_secure
from .params import BODY, CHANGE, KEY_ID, READ

AUTH = Area(REST, "auth")
KEYS = Area(REST, "keys", scope="account")
TAKEN = "The username or email is taken (`username_taken`, `email_taken`)."
COOKIE = {"Set-Cookie": "easel_session; HttpOnly; SameSite=Lax"}
LOGIN_NOTES = {
    401: "Wrong username or password (`invalid_credentials`).",
    429: "Too many failed attempts (`login_throttled`); wait for Retry-After seconds.",
}
LOGOUT = "The token is dead from the next request on; the session cookie is cleared."
SESSIONS_KEPT = (
    "Every other session of the account ends; the one making the change stays. API keys are left alone."
)
PASSWORD_NOTES = {
    400: "A field is missing, the current password is wrong (`wrong_password`) or the new one breaks the "
    "password rules; `field` names it.",
    409: "Changed by another request at the same moment; try again.",
}


def set_session_cookie(request: web.Request, resp: web.StreamResponse, login: auth_pb2.LoginResponse) -> None:
    max_age: int | None = None
    if login.HasField("expires_at") and login.expires_at.seconds:
        max_age = max(0, int(login.expires_at.seconds - time.time()))
    resp.set_cookie(
        SESSION_COOKIE,
        login.token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=cookie_secure(request),
    )


def clear_session_cookie(request: web.Request, resp: web.StreamResponse) -> None:
    resp.del_cookie(SESSION_COOKIE, path="/", secure=cookie_secure(request), samesite="Lax")


@AUTH.op(
    "POST", "/api/v1/auth/register", "Create an account", models.RegisterResponse,
    body=models.RegisterRequest, status=201, errors=(400, 409, 415, 429, 503), auth="none",
    notes={409: TAKEN},
)  # fmt: skip
async def register(call: Call[models.RegisterRequest]) -> models.RegisterResponse:
    b = call.body
    user = await call.backend.register(b.username, b.email, b.password, client_address(call.request))
    return {"user": serialize.user(user)}


@AUTH.op(
    "POST", "/api/v1/auth/login", "Log in with a username or email and a password", models.LoginResponse,
    body=models.LoginRequest, errors=(400, 401, 415, 429, 503), auth="none", headers=COOKIE,
    notes=LOGIN_NOTES,
)  # fmt: skip
async def login(call: Call[models.LoginRequest]) -> web.Response:
    """Logged in; the session cookie `easel_session` is set too."""
    name = (call.body.username or "").strip() or (call.body.email or "").strip()
    if not name:
        # The same answers as a missing or empty required field.
        blank = call.body.username is not None
        message = "'username' must not be empty." if blank else "'username' is required."
        raise invalid("missing_field", message, field="username")
    result = await call.backend.login(name, call.body.password, client_address(call.request))
    answer: models.LoginResponse = {
        "token": result.token,
        "expires_at": serialize.timestamp(result, "expires_at"),
        "user": serialize.user(result.user),
    }
    resp = web.json_response(answer)
    set_session_cookie(call.request, resp, result)
    return resp


@AUTH.op(
    "POST", "/api/v1/auth/logout", "End the session (or token) this request used", status=204,
    errors=(401, 403, 503), description=LOGOUT,
)  # fmt: skip
async def logout(call: Call[None]) -> web.Response:
    await call.backend.logout(call.principal.token)
    resp = web.Response(status=204)
    if call.request.cookies.get(SESSION_COOKIE):
        clear_session_cookie(call.request, resp)
    return resp


@AUTH.op("GET", "/api/v1/auth/me", "Who am I", models.Me, errors=READ)
async def me(call: Call[None]) -> models.Me:
    p = call.principal
    found = await call.backend.get_user(p.user_id)
    kind: Literal["session", "api_key"] = "api_key" if p.credential_kind == "api_key" else "session"
    return {
        "user": serialize.user(found),
        "credential": {"kind": kind, "id": p.credential_id, "scopes": list(p.scopes)},
    }


async def change_password(request: web.Request, current: str, new: str) -> None:
    """Every other session of the user ends; the one making the change (if it is one) stays."""
    call: Call[None] = Call(request, None)
    principal = call.principal
    keep = principal.token if principal.credential_kind == "session" else ""
    await call.backend.change_password(principal.user_id, current, new, keep, client_address(request))


@AUTH.op(
    "POST", "/api/v1/auth/password", "Change my password", body=models.PasswordChange, status=204,
    errors=(*BODY, 409, 429), scope="account", notes=PASSWORD_NOTES, description=SESSIONS_KEPT,
)  # fmt: skip
async def password(call: Call[models.PasswordChange]) -> None:
    await change_password(call.request, call.body.current_password, call.body.new_password)


@KEYS.op(
    "POST", "/api/v1/keys", "Create an API key", models.ApiKeyCreated, body=models.CreateApiKeyRequest,
    status=201, errors=BODY,
)  # fmt: skip
async def create_key(call: Call[models.CreateApiKeyRequest]) -> models.ApiKeyCreated:
    """Created; `key` is shown only this once."""
    b = call.body
    created = await call.backend.create_api_key(
        call.principal.user_id, b.name.strip(), b.scopes or [], b.ttl_seconds or 0
    )
    call.headers["Cache-Control"] = "no-store"
    return {**serialize.api_key(created.key), "key": created.secret}


@KEYS.op("GET", "/api/v1/keys", "List my API keys", models.ApiKeyList, errors=READ)
async def list_keys(call: Call[None]) -> models.ApiKeyList:
    return {"items": [serialize.api_key(k) for k in await call.backend.list_api_keys(call.principal.user_id)]}


@KEYS.op("DELETE", "/api/v1/keys/{key_id}", "Revoke an API key", status=204, errors=CHANGE, params=(KEY_ID,))
async def revoke_key(call: Call[None]) -> None:
    await call.backend.revoke_api_key(call.principal.user_id, call.path("key_id"))
