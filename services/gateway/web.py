"""The web UI: server-rendered pages. The generate page talks to the REST API from the browser."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from easel.gallery.v1 import gallery_pb2
from services.common.errors import EaselError, invalid

from . import csrf, serialize, textcheck
from .api.auth import clear_session_cookie, set_session_cookie
from .api.images import (
    MAX_REASON,
    VISIBILITIES,
    create_share_link,
    fetch_image,
    hide_image,
    report_image,
    revoke_share_links,
    search_images,
)
from .principal import actor_of, no_auth, optional_auth, principal_of, require_principal
from .render import render
from .state import state_of
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


async def read_form(request: web.Request) -> Any:
    """The posted form; a body that is not a readable form is a 400, never a 500."""
    try:
        form = await request.post()
    except (HttpProcessingError, ValueError, LookupError):  # bad part headers, bytes or charset
        raise invalid(
            "invalid_form", "The form could not be read; reload the page and send it again."
        ) from None
    textcheck.check_form(form)
    return form


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
    form = await read_form(request)
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
        result = await state_of(request).backend.login(
            values["username"].strip(), password, client_address(request)
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
    form = await read_form(request)
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
    backend = state_of(request).backend
    username, address = values["username"].strip(), client_address(request)
    try:
        await backend.register(username, values["email"].strip(), password, address)
        result = await backend.login(username, password, address)
    except EaselError as exc:
        errors = _form_errors(exc, ("username", "email", "password"))
        return render(request, "register.html", exc.http_status, errors=errors, values=values)
    resp = redirect("/")
    set_session_cookie(request, resp, result)
    return resp


@routes.post("/logout")
async def logout_submit(request: web.Request) -> web.Response:
    principal = require_principal(request)
    await state_of(request).backend.logout(principal.token)
    resp = redirect("/login")
    clear_session_cookie(request, resp)
    return resp


# --- pages -------------------------------------------------------------------------------------


SOURCE_KEYS = frozenset({"init_image_id", "mask_image_id"})
REMIX_KEYS = ("prompt", "negative_prompt", "width", "height", "steps", "guidance", "sampler", "seed")
EDIT_KINDS = (
    ("img2img", "Restyle", "Redraws the whole picture from your prompt; strength sets how far it may move."),
    ("inpaint", "Inpaint", "Paint over a part of the picture: only that part is redrawn."),
    ("upscale", "Upscale", "Makes the picture larger with sharper detail."),
    ("variation", "Variation", "A new take on the same picture."),
)


async def _models(request: web.Request) -> tuple[list[dict[str, Any]], str]:
    """Installed models, and a notice for the page when there are none or inference is down."""
    try:
        found = await state_of(request).backend.list_models()
    except EaselError as exc:
        return [], exc.message
    models: list[dict[str, Any]] = [dict(serialize.model(m)) for m in found]
    if not models:
        return [], "No models are installed yet; run 'make models' and restart the studio."
    return models, ""


@routes.get("/")
async def generate_page(request: web.Request) -> web.Response:
    """The generate form; `?remix=<image id>` fills it in with that image's parameters."""
    require_principal(request)
    models, notice = await _models(request)
    default = next((m for m in models if m["default"]), models[0] if models else None)
    values: dict[str, Any] = {}
    remix: dict[str, Any] | None = None
    remix_id = request.query.get("remix", "")[:200]
    if remix_id:
        remix = dict(serialize.image(request, await fetch_image(request, remix_id), absolute=False))
        params = remix["params"]
        values = {k: params[k] for k in REMIX_KEYS if isinstance(params.get(k), str | int | float)}
        values["model"] = params.get("model") or ""
    selected = next((m for m in models if m["name"] == values.get("model")), default)
    return render(
        request,
        "generate.html",
        models=models,
        selected=selected,
        notice=notice,
        values=values,
        remix=remix,
    )


COMMUNITY_ORDERS = (("newest", "Newest"), ("most_liked", "Most liked"))


async def _grid(request: web.Request, mine: bool) -> web.Response:
    cursor = request.query.get("cursor", "")[:1024]
    order = request.query.get("order", "newest")
    if order not in dict(COMMUNITY_ORDERS):
        order = "newest"
    backend = state_of(request).backend
    if mine:
        # What the user made; uploads (edit inputs and inpainting masks) stay out of the grid.
        found = await backend.list_images(require_principal(request).actor, 24, cursor, kind="generated")
    else:
        found = await backend.list_public(actor_of(request), order, 24, cursor)
    page = serialize.image_page(request, found, absolute=False)
    first_url = request.path if mine or order == "newest" else f"{request.path}?order={order}"
    next_url = None
    if page["next_cursor"]:
        next_url = f"{request.path}?{urlencode({'order': order, 'cursor': page['next_cursor']})}"
        if mine:
            next_url = f"{request.path}?{urlencode({'cursor': page['next_cursor']})}"
    return render(
        request,
        "gallery.html",
        title="My gallery" if mine else "Community",
        mine=mine,
        images=page["items"],
        next_url=next_url,
        first_url=first_url,
        first_page=not cursor,
        order=order,
        orders=COMMUNITY_ORDERS,
    )


@routes.get("/gallery")
async def gallery_page(request: web.Request) -> web.Response:
    return await _grid(request, mine=True)


@routes.get("/community")
@optional_auth
async def community_page(request: web.Request) -> web.Response:
    return await _grid(request, mine=False)


@routes.get("/search")
@optional_auth
async def search_page(request: web.Request) -> web.Response:
    query = request.query.get("q", "")[:500]
    cursor = request.query.get("cursor", "")[:1024]
    context: dict[str, Any] = {"search_query": query, "images": [], "next_url": None, "error": ""}
    if query.strip():
        try:
            found = await search_images(request, query, cursor)
        except EaselError as exc:
            if exc.http_status >= 500 or exc.http_status == 401:
                raise
            context["error"] = exc.message
        else:
            page = serialize.image_page(request, found, absolute=False)
            context["images"] = page["items"]
            if page["next_cursor"]:
                context["next_url"] = f"/search?{urlencode({'q': query, 'cursor': page['next_cursor']})}"
    return render(request, "search.html", first_page=not cursor, **context)


@routes.get("/edit")
async def edit_page(request: web.Request) -> web.Response:
    """Edit one image (`?image=<id>`): restyle, inpaint with a painted mask, upscale, vary.
    Without an image: pick one of your own."""
    principal = require_principal(request)
    image_id = request.query.get("image", "")[:200]
    if not image_id:
        found = await state_of(request).backend.list_images(principal.actor, 24, kind="generated")
        page = serialize.image_page(request, found, absolute=False)
        return render(request, "edit_pick.html", images=page["items"])
    img = await fetch_image(request, image_id)
    data = serialize.image(request, img, absolute=False)
    models, notice = await _models(request)
    served = {kind for m in models for kind in m["kinds"]}
    kinds = [(k, label, hint) for k, label, hint in EDIT_KINDS if k in served or not models]
    kind = request.query.get("kind", "")
    if kind not in {k for k, _, _ in kinds}:
        kind = kinds[0][0] if kinds else "img2img"
    return render(
        request,
        "edit.html",
        image=data,
        models=models,
        kinds=kinds,
        kind=kind,
        notice=notice,
        prompt=str(data["params"].get("prompt", "")),
    )


def _param_rows(params: dict[str, Any]) -> list[tuple[str, str]]:
    kind = params.get("kind")
    rows: list[tuple[str, str]] = []
    if isinstance(kind, str) and kind != "txt2img":
        rows.append(("Made by", next((label for k, label, _ in EDIT_KINDS if k == kind), kind)))
    rows.extend((label, str(params[key])) for key, label in PARAM_LABELS if params.get(key) not in (None, ""))
    if isinstance(params.get("strength"), int | float):
        rows.append(("Strength", f"{float(params['strength']):g}"))
    # Ids of the edit's inputs are shown as a link (owners only), not as rows.
    known = {key for key, _ in PARAM_LABELS} | {"index", "kind", "n", "strength"} | SOURCE_KEYS
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
    notice: str = "",
    values: dict[str, str] | None = None,
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
        hidden=img.hidden,
        rows=_param_rows(data["params"]),
        source_id=str(data["params"].get("init_image_id") or "") if is_owner else "",
        is_owner=is_owner,
        is_admin=principal is not None and principal.role == "admin",
        can_remix=principal is not None and bool(data["params"].get("prompt")),
        visibilities=VISIBILITIES,
        share_url=share_url,
        errors=errors or {},
        notice=notice,
        values=values or {},
        max_reason=MAX_REASON,
    )


def _back_to_image(image_id: str) -> web.Response:
    return redirect(f"/images/{quote(image_id, safe='')}")


@routes.get("/images/{image_id}")
@optional_auth
async def image_page(request: web.Request) -> web.Response:
    return await _image_page(request)


@routes.post("/images/{image_id}")
async def image_update(request: web.Request) -> web.Response:
    principal = require_principal(request)
    form = await read_form(request)
    image_id = request.match_info["image_id"]
    update = gallery_pb2.UpdateImageRequest(actor=principal.actor, image_id=image_id)
    update.title = _form_str(form, "title", 200).strip()
    visibility = _form_str(form, "visibility")
    if visibility:
        update.visibility = visibility
    try:
        await state_of(request).backend.update_image(update)
    except EaselError as exc:
        if exc.http_status in (401, 403, 404):
            raise
        errors = _form_errors(exc, ("title", "visibility"))
        return await _image_page(request, errors=errors, status=exc.http_status)
    return _back_to_image(image_id)


@routes.post("/images/{image_id}/share")
async def image_share(request: web.Request) -> web.Response:
    link = await create_share_link(request, request.match_info["image_id"])
    return await _image_page(request, share_url=str(link["url"]))


@routes.post("/images/{image_id}/share/revoke")
async def image_share_revoke(request: web.Request) -> web.Response:
    await revoke_share_links(request, request.match_info["image_id"])
    return await _image_page(request, notice="Every share link of this image has stopped working.")


@routes.post("/images/{image_id}/like")
async def image_like(request: web.Request) -> web.Response:
    principal = require_principal(request)
    form = await read_form(request)
    image_id = request.match_info["image_id"]
    await state_of(request).backend.like(principal.actor, image_id, _form_str(form, "like") != "0")
    return _back_to_image(image_id)


@routes.post("/images/{image_id}/report")
async def image_report(request: web.Request) -> web.Response:
    form = await read_form(request)
    reason = _form_str(form, "reason", MAX_REASON + 1)
    try:
        await report_image(request, request.match_info["image_id"], reason)
    except EaselError as exc:
        if exc.http_status in (401, 403, 404) or exc.http_status >= 500:
            raise
        errors = _form_errors(exc, ("reason",))
        return await _image_page(request, errors=errors, status=exc.http_status, values={"reason": reason})
    return await _image_page(request, notice="Thank you: a moderator will look at this image.")


@routes.post("/images/{image_id}/hide")
async def image_hide(request: web.Request) -> web.Response:
    form = await read_form(request)
    image_id = request.match_info["image_id"]
    await hide_image(request, image_id, _form_str(form, "hidden") == "1")
    return _back_to_image(image_id)


@routes.post("/images/{image_id}/delete")
async def image_delete(request: web.Request) -> web.Response:
    principal = require_principal(request)
    await state_of(request).backend.delete_image(principal.actor, request.match_info["image_id"])
    return redirect("/gallery")
