"""Account settings pages: API keys (create, list, revoke) and the password."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from easel.auth.v1 import auth_pb2
from services.common.errors import EaselError
from services.common.grpc_client import user_errors

from . import serialize
from .api.auth import change_password
from .clients import CLIENTS
from .principal import needs_scope, require_principal
from .render import render
from .web import read_form

routes = web.RouteTableDef()

SCOPES = (
    ("generate", "Generate", "submit, watch and cancel jobs"),
    ("images:read", "Read images", "list and open your images and the community"),
    ("images:write", "Change images", "change, share, like and delete images"),
    ("account", "Account", "manage API keys"),
)
DEFAULT_SCOPES = ("generate", "images:read", "images:write")
KEY_NAME_MAX = 100


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _form_str(form: Any, name: str, limit: int = 1000) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


async def _list_keys(request: web.Request) -> list[dict[str, Any]]:
    principal = require_principal(request)
    with user_errors("auth"):
        found = await request.app[CLIENTS].auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(user_id=principal.user_id)
        )
    keys = []
    for k in found.keys:
        item: dict[str, Any] = dict(serialize.api_key(k))
        item["scopes"] = list(k.scopes)
        keys.append(item)
    return keys


async def _keys_page(
    request: web.Request,
    status: int = 200,
    created: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    notice: str = "",
) -> web.Response:
    return render(
        request,
        "settings_keys.html",
        status=status,
        keys=await _list_keys(request),
        created=created,
        errors=errors or {},
        values=values or {"name": "", "scopes": list(DEFAULT_SCOPES)},
        scopes=SCOPES,
        notice=notice,
        name_max=KEY_NAME_MAX,
    )


@routes.get("/settings")
async def settings_home(request: web.Request) -> web.Response:
    require_principal(request)
    return _redirect("/settings/keys")


@routes.get("/settings/keys")
@needs_scope("account")
async def keys_page(request: web.Request) -> web.Response:
    notice = "The key was revoked; it no longer works." if request.query.get("revoked") else ""
    return await _keys_page(request, notice=notice)


@routes.post("/settings/keys")
@needs_scope("account")
async def keys_create(request: web.Request) -> web.Response:
    principal = require_principal(request)
    form = await read_form(request)
    name = _form_str(form, "name", KEY_NAME_MAX + 1).strip()
    chosen = [s for s in form.getall("scopes", []) if isinstance(s, str)]
    values = {"name": name, "scopes": chosen}
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = "Give the key a name, so you can tell it apart later."
    elif len(name) > KEY_NAME_MAX:
        errors["name"] = f"Keep the name to at most {KEY_NAME_MAX} characters."
    if not chosen:
        errors["scopes"] = "Pick at least one thing the key may do."
    if errors:
        return await _keys_page(request, 400, errors=errors, values=values)
    try:
        with user_errors("auth"):
            created = await request.app[CLIENTS].auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(user_id=principal.user_id, name=name, scopes=chosen)
            )
    except EaselError as exc:
        if exc.http_status in (401, 403) or exc.http_status >= 500:
            raise
        field = exc.field if exc.field in ("name", "scopes") else "form"
        return await _keys_page(
            request, exc.http_status, errors={field or "form": exc.message}, values=values
        )
    shown: dict[str, Any] = dict(serialize.api_key(created.key))
    shown["secret"] = created.secret
    resp = await _keys_page(request, 201, created=shown)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@routes.post("/settings/keys/{key_id}/revoke")
@needs_scope("account")
async def keys_revoke(request: web.Request) -> web.Response:
    principal = require_principal(request)
    key_id = request.match_info["key_id"]
    with user_errors("auth"):
        await request.app[CLIENTS].auth.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(user_id=principal.user_id, key_id=key_id)
        )
    return _redirect(f"/settings/keys?revoked={quote(key_id, safe='')}")


# --- password ----------------------------------------------------------------------------------

PASSWORD_FIELDS = ("current_password", "new_password", "new_password_confirm")


@routes.get("/settings/password")
@needs_scope("account")
async def password_page(request: web.Request) -> web.Response:
    require_principal(request)
    return render(request, "settings_password.html", errors={}, notice="")


@routes.post("/settings/password")
@needs_scope("account")
async def password_submit(request: web.Request) -> web.Response:
    require_principal(request)
    form = await read_form(request)
    current = _form_str(form, "current_password")
    new = _form_str(form, "new_password")
    errors: dict[str, str] = {}
    if not current:
        errors["current_password"] = "Enter the password you sign in with now."  # nosec B105
    if not new:
        errors["new_password"] = "Choose a new password."  # nosec B105
    elif new != _form_str(form, "new_password_confirm"):
        errors["new_password_confirm"] = "The two new passwords differ; type the same one twice."  # nosec B105
    if errors:
        return render(request, "settings_password.html", 400, errors=errors, notice="")
    try:
        await change_password(request, current, new)
    except EaselError as exc:
        if exc.http_status in (401, 403) or exc.http_status >= 500:
            raise
        field = exc.field if exc.field in PASSWORD_FIELDS else "form"
        resp = render(
            request,
            "settings_password.html",
            exc.http_status,
            errors={field or "form": exc.message},
            notice="",
        )
        if exc.retry_after is not None:
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    return render(
        request,
        "settings_password.html",
        errors={},
        notice="Your password is changed. Your other sessions have been signed out.",
    )
