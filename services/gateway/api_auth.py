"""`/api/v1/auth/*` and `/api/v1/keys`: accounts, sessions and API keys (all kept by auth)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from easel.auth.v1 import auth_pb2
from services.common import limits
from services.common.grpc_client import user_errors

from . import serialize
from .bodies import read_json
from .clients import CLIENTS
from .principal import SESSION_COOKIE, needs_scope, no_auth, require_principal
from .urls import client_address, cookie_secure

routes = web.RouteTableDef()


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


@routes.post("/api/v1/auth/register")
@no_auth
async def register(request: web.Request) -> web.Response:
    body = await read_json(request)
    username = body.string("username", required=True, max_len=200, allow_empty=False)
    email = body.string("email", required=True, max_len=320, allow_empty=False)
    password = body.string("password", required=True, max_len=1000, allow_empty=False)
    with user_errors("auth"):
        resp = await request.app[CLIENTS].auth.Register(
            auth_pb2.RegisterRequest(
                username=username or "",
                email=email or "",
                password=password or "",
                client_address=client_address(request),
            )
        )
    return web.json_response({"user": serialize.user(resp.user)}, status=201)


@routes.post("/api/v1/auth/login")
@no_auth
async def login(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = body.string("username", max_len=320) or body.string("email", max_len=320)
    if not name or not name.strip():
        body.string("username", required=True, allow_empty=False)  # raises missing_field
    password = body.string("password", required=True, max_len=1000, allow_empty=False)
    with user_errors("auth"):
        result = await request.app[CLIENTS].auth.Login(
            auth_pb2.LoginRequest(
                username=(name or "").strip(), password=password or "", client_address=client_address(request)
            )
        )
    resp = web.json_response(
        {
            "token": result.token,
            "expires_at": serialize.timestamp(result, "expires_at"),
            "user": serialize.user(result.user),
        }
    )
    set_session_cookie(request, resp, result)
    return resp


@routes.post("/api/v1/auth/logout")
async def logout(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("auth"):
        await request.app[CLIENTS].auth.Logout(auth_pb2.LogoutRequest(token=principal.token))
    resp = web.Response(status=204)
    if request.cookies.get(SESSION_COOKIE):
        clear_session_cookie(request, resp)
    return resp


@routes.get("/api/v1/auth/me")
async def me(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("auth"):
        found = await request.app[CLIENTS].auth.GetUser(auth_pb2.GetUserRequest(user_id=principal.user_id))
    return web.json_response(
        {
            "user": serialize.user(found),
            "credential": {
                "kind": principal.credential_kind,
                "id": principal.credential_id,
                "scopes": list(principal.scopes),
            },
        }
    )


async def change_password(request: web.Request, current: str, new: str) -> None:
    """Every other session of the user ends; the one making the change (if it is one) stays."""
    principal = require_principal(request)
    keep = principal.token if principal.credential_kind == "session" else ""
    with user_errors("auth"):
        await request.app[CLIENTS].auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(
                user_id=principal.user_id,
                current_password=current,
                new_password=new,
                keep_session_token=keep,
                client_address=client_address(request),
            )
        )


@routes.post("/api/v1/auth/password")
@needs_scope("account")
async def password(request: web.Request) -> web.Response:
    body = await read_json(request)
    current = body.string("current_password", required=True, max_len=1000, allow_empty=False)
    new = body.string("new_password", required=True, max_len=1000, allow_empty=False)
    await change_password(request, current or "", new or "")
    return web.Response(status=204)


def key_json(key: auth_pb2.ApiKey) -> dict[str, Any]:
    """A key as the API shows it: its record and what it may do (never its secret)."""
    return {**serialize.api_key(key), "scopes": list(key.scopes)}


@routes.post("/api/v1/keys")
@needs_scope("account")
async def create_key(request: web.Request) -> web.Response:
    principal = require_principal(request)
    body = await read_json(request)
    name = body.string("name", required=True, max_len=limits.API_KEY_NAME_MAX, allow_empty=False)
    ttl = body.integer("ttl_seconds", minimum=0, maximum=limits.API_KEY_TTL_MAX_S)
    scopes = body.string_list("scopes", max_items=20, max_len=50)
    with user_errors("auth"):
        created = await request.app[CLIENTS].auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(
                user_id=principal.user_id,
                name=(name or "").strip(),
                scopes=scopes or [],
                ttl_seconds=ttl or 0,
            )
        )
    out = key_json(created.key)
    out["key"] = created.secret
    return web.json_response(out, status=201, headers={"Cache-Control": "no-store"})


@routes.get("/api/v1/keys")
@needs_scope("account")
async def list_keys(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("auth"):
        found = await request.app[CLIENTS].auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(user_id=principal.user_id)
        )
    return web.json_response({"items": [key_json(k) for k in found.keys]})


@routes.delete("/api/v1/keys/{key_id}")
@needs_scope("account")
async def revoke_key(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("auth"):
        await request.app[CLIENTS].auth.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(user_id=principal.user_id, key_id=request.match_info["key_id"])
        )
    return web.Response(status=204)
