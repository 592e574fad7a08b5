"""The web UI: server-rendered pages. The generate page talks to the REST API from the browser."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from aiohttp import web

from easel.auth.v1 import auth_pb2
from easel.gallery.v1 import gallery_pb2
from easel.inference.v1 import inference_pb2
from services.common.errors import EaselError
from services.common.grpc_client import user_errors

from . import csrf, serialize
from .api_auth import clear_session_cookie, set_session_cookie
from .api_images import VISIBILITIES, create_share_link, fetch_image
from .clients import CLIENTS
from .principal import actor_of, no_auth, optional_auth, principal_of, require_principal
from .render import render
from .urls import client_address, safe_next

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

PARAM_LABELS = (
    ("prompt", "Prompt"),
    ("negative_prompt", "Negative prompt"),
    ("model", "Model"),
    ("width", "Width"),
    ("height", "Height"),
    ("steps", "Steps"),
    ("guidance", "Guidance"),
    ("sampler", "Sampler"),
    ("seed", "Seed"),
)


def redirect(location: str) -> web.Response:
    """A 303 to `location` that can carry cookies (a raised HTTPException would drop them)."""
    return web.Response(status=303, headers={"Location": location})


def _form_str(form: Any, name: str, limit: int = 1000) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def _presession_ok(request: web.Request, form: Any) -> bool:
    cookie = request.cookies.get(csrf.PRESESSION_COOKIE) or ""
    return bool(cookie) and csrf.matches(cookie, _form_str(form, csrf.FIELD))


def _form_errors(exc: EaselError, fields: tuple[str, ...]) -> dict[str, str]:
    if exc.field in fields:
        return {exc.field or "": exc.message}
    return {"form": exc.message}


def _expired_form() -> dict[str, str]:
    return {"form": "This form expired before it was sent; please try again."}


# --- login, register, logout -------------------------------------------------------------------


@routes.get("/login")
@optional_auth
async def login_page(request: web.Request) -> web.Response:
    next_path = safe_next(request.query.get("next"))
    if principal_of(request) is not None:
        return redirect(next_path)
    return render(request, "login.html", errors={}, values={}, next=next_path)


@routes.post("/login")
@no_auth
async def login_submit(request: web.Request) -> web.Response:
    form = await request.post()
    next_path = safe_next(_form_str(form, "next"))
    values = {"username": _form_str(form, "username", 320)}
    if not _presession_ok(request, form):
        return render(request, "login.html", 403, errors=_expired_form(), values=values, next=next_path)
    errors: dict[str, str] = {}
    if not values["username"].strip():
        errors["username"] = "Enter your username or email address."
    password = _form_str(form, "password")
    if not password:
        errors["password"] = "Enter your password."  # nosec B105
    if errors:
        return render(request, "login.html", 400, errors=errors, values=values, next=next_path)
    try:
        with user_errors("auth"):
            result = await request.app[CLIENTS].auth.Login(
                auth_pb2.LoginRequest(
                    username=values["username"].strip(),
                    password=password,
                    client_address=client_address(request),
                )
            )
    except EaselError as exc:
        resp = render(
            request,
            "login.html",
            exc.http_status,
            errors=_form_errors(exc, ("username", "password")),
            values=values,
            next=next_path,
        )
        if exc.retry_after is not None:
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    resp = redirect(next_path)
    set_session_cookie(request, resp, result)
    return resp


@routes.get("/register")
@optional_auth
async def register_page(request: web.Request) -> web.Response:
    if principal_of(request) is not None:
        return redirect("/")
    return render(request, "register.html", errors={}, values={})


@routes.post("/register")
@no_auth
async def register_submit(request: web.Request) -> web.Response:
    form = await request.post()
    values = {"username": _form_str(form, "username", 200), "email": _form_str(form, "email", 320)}
    if not _presession_ok(request, form):
        return render(request, "register.html", 403, errors=_expired_form(), values=values)
    password = _form_str(form, "password")
    errors: dict[str, str] = {}
    if not values["username"].strip():
        errors["username"] = "Choose a username."
    if not values["email"].strip():
        errors["email"] = "Enter your email address."
    if not password:
        errors["password"] = "Choose a password."  # nosec B105
    elif password != _form_str(form, "password_confirm"):
        errors["password_confirm"] = "The two passwords differ; type the same password twice."  # nosec B105
    if errors:
        return render(request, "register.html", 400, errors=errors, values=values)
    auth = request.app[CLIENTS].auth
    try:
        with user_errors("auth"):
            await auth.Register(
                auth_pb2.RegisterRequest(
                    username=values["username"].strip(),
                    email=values["email"].strip(),
                    password=password,
                    client_address=client_address(request),
                )
            )
            result = await auth.Login(
                auth_pb2.LoginRequest(
                    username=values["username"].strip(),
                    password=password,
                    client_address=client_address(request),
                )
            )
    except EaselError as exc:
        errors = _form_errors(exc, ("username", "email", "password"))
        return render(request, "register.html", exc.http_status, errors=errors, values=values)
    resp = redirect("/")
    set_session_cookie(request, resp, result)
    return resp


@routes.post("/logout")
async def logout_submit(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("auth"):
        await request.app[CLIENTS].auth.Logout(auth_pb2.LogoutRequest(token=principal.token))
    resp = redirect("/login")
    clear_session_cookie(request, resp)
    return resp


# --- pages -------------------------------------------------------------------------------------


@routes.get("/")
async def generate_page(request: web.Request) -> web.Response:
    require_principal(request)
    models: list[dict[str, Any]] = []
    notice = ""
    try:
        with user_errors("inference"):
            found = await request.app[CLIENTS].inference.ListModels(inference_pb2.ListModelsRequest())
        models = [serialize.model(m) for m in found.models]
    except EaselError as exc:
        notice = exc.message
    if not models and not notice:
        notice = "No models are installed yet; run 'make models' and restart the studio."
    default = next((m for m in models if m["default"]), models[0] if models else None)
    return render(request, "generate.html", models=models, default=default, notice=notice)


async def _grid(request: web.Request, mine: bool) -> web.Response:
    cursor = request.query.get("cursor", "")[:500]
    with user_errors("gallery"):
        if mine:
            principal = require_principal(request)
            found = await request.app[CLIENTS].gallery.ListImages(
                gallery_pb2.ListImagesRequest(actor=principal.actor, limit=24, cursor=cursor)
            )
        else:
            found = await request.app[CLIENTS].gallery.ListPublic(
                gallery_pb2.ListPublicRequest(
                    actor=actor_of(request), order="newest", limit=24, cursor=cursor
                )
            )
    page = serialize.image_page(request, found, absolute=False)
    next_url = f"{request.path}?cursor={quote(page['next_cursor'])}" if page["next_cursor"] else None
    return render(
        request,
        "gallery.html",
        title="My gallery" if mine else "Community",
        mine=mine,
        images=page["items"],
        next_url=next_url,
        first_page=not cursor,
    )


@routes.get("/gallery")
async def gallery_page(request: web.Request) -> web.Response:
    return await _grid(request, mine=True)


@routes.get("/community")
@optional_auth
async def community_page(request: web.Request) -> web.Response:
    return await _grid(request, mine=False)


def _param_rows(params: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(label, str(params[key])) for key, label in PARAM_LABELS if params.get(key) not in (None, "")]
    known = {key for key, _ in PARAM_LABELS} | {"index", "kind", "n"}
    rows.extend(
        (key.replace("_", " ").capitalize(), str(value))
        for key, value in params.items()
        if key not in known and isinstance(value, str | int | float) and not isinstance(value, bool)
    )
    return rows


async def _image_page(
    request: web.Request,
    share_url: str | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    image_id = request.match_info["image_id"]
    img = await fetch_image(request, image_id)
    data = serialize.image(request, img, absolute=False)
    principal = principal_of(request)
    is_owner = principal is not None and principal.user_id == img.owner_id
    return render(
        request,
        "image.html",
        status=status,
        image=data,
        rows=_param_rows(data["params"]),
        is_owner=is_owner,
        visibilities=VISIBILITIES,
        share_url=share_url,
        errors=errors or {},
    )


@routes.get("/images/{image_id}")
@optional_auth
async def image_page(request: web.Request) -> web.Response:
    return await _image_page(request)


@routes.post("/images/{image_id}")
async def image_update(request: web.Request) -> web.Response:
    principal = require_principal(request)
    form = await request.post()
    image_id = request.match_info["image_id"]
    update = gallery_pb2.UpdateImageRequest(actor=principal.actor, image_id=image_id)
    update.title = _form_str(form, "title", 200).strip()
    visibility = _form_str(form, "visibility")
    if visibility:
        update.visibility = visibility
    try:
        with user_errors("gallery"):
            await request.app[CLIENTS].gallery.UpdateImage(update)
    except EaselError as exc:
        if exc.http_status in (401, 403, 404):
            raise
        errors = _form_errors(exc, ("title", "visibility"))
        return await _image_page(request, errors=errors, status=exc.http_status)
    return redirect(f"/images/{quote(image_id, safe='')}")


@routes.post("/images/{image_id}/share")
async def image_share(request: web.Request) -> web.Response:
    link = await create_share_link(request, request.match_info["image_id"])
    return await _image_page(request, share_url=str(link["url"]))


@routes.post("/images/{image_id}/delete")
async def image_delete(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("gallery"):
        await request.app[CLIENTS].gallery.DeleteImage(
            gallery_pb2.DeleteImageRequest(actor=principal.actor, image_id=request.match_info["image_id"])
        )
    return redirect("/gallery")
