"""`/api/v1/images`, `/api/v1/community`, share links and `/s/{token}`: images (kept by gallery)."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from aiohttp import web

from easel.gallery.v1 import gallery_pb2
from services.common.errors import EaselError, from_rpc_error, invalid
from services.common.grpc_client import user_errors

from . import serialize
from .bodies import Body, query_choice, query_int, read_json
from .clients import CLIENTS
from .principal import actor_of, needs_scope, no_auth, optional_auth, principal_of, require_principal
from .render import render
from .urls import base_url, settings_of, wants_json

routes = web.RouteTableDef()

CACHE_FOREVER = "private, max-age=31536000, immutable"
VISIBILITIES = ("private", "unlisted", "public")
MAX_QUERY = 200
MAX_REASON = 1000
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
EXTENSIONS = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpg"}


async def fetch_image(request: web.Request, image_id: str, share_token: str = "") -> gallery_pb2.Image:
    with user_errors("gallery"):
        img: gallery_pb2.Image = await request.app[CLIENTS].gallery.GetImage(
            gallery_pb2.GetImageRequest(actor=actor_of(request), image_id=image_id, share_token=share_token)
        )
    return img


@routes.get("/api/v1/images")
@needs_scope("images:read")
async def list_images(request: web.Request) -> web.Response:
    principal = require_principal(request)
    limit = query_int(request, "limit", 24, 1, 100)
    with user_errors("gallery"):
        found = await request.app[CLIENTS].gallery.ListImages(
            gallery_pb2.ListImagesRequest(
                actor=principal.actor, limit=limit, cursor=request.query.get("cursor", "")
            )
        )
    return web.json_response(serialize.image_page(request, found))


@routes.get("/api/v1/community")
@needs_scope("images:read")
@optional_auth
async def community(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 24, 1, 100)
    order = query_choice(request, "order", ("newest", "most_liked"), "newest")
    with user_errors("gallery"):
        found = await request.app[CLIENTS].gallery.ListPublic(
            gallery_pb2.ListPublicRequest(
                actor=actor_of(request), order=order, limit=limit, cursor=request.query.get("cursor", "")
            )
        )
    return web.json_response(serialize.image_page(request, found))


async def search_images(
    request: web.Request, query: str, cursor: str = "", limit: int = 24, only_mine: bool = False
) -> gallery_pb2.ListImagesResponse:
    """Public images (and the caller's own) whose prompt, title or tags match `query`. Errors name
    the `q` parameter, whatever gallery calls it."""
    if not query.strip():
        raise invalid("missing_query", "Type a few words to search for.", field="q")
    if len(query) > MAX_QUERY:
        raise invalid("query_too_long", f"Search for at most {MAX_QUERY} characters.", field="q")
    if only_mine and principal_of(request) is None:
        require_principal(request)
    try:
        with user_errors("gallery"):
            found: gallery_pb2.ListImagesResponse = await request.app[CLIENTS].gallery.Search(
                gallery_pb2.SearchRequest(
                    actor=actor_of(request), query=query, limit=limit, cursor=cursor, only_mine=only_mine
                )
            )
    except EaselError as exc:
        if exc.field == "query":
            exc.field = "q"
        raise
    return found


def query_bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").strip().lower()
    if raw in ("", *FALSE_WORDS):
        return False
    if raw in TRUE_WORDS:
        return True
    raise invalid("invalid_query", f"'{name}' must be true or false.", field=name)


@routes.get("/api/v1/search")
@needs_scope("images:read")
@optional_auth
async def search(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 24, 1, 100)
    only_mine = query_bool(request, "mine")
    found = await search_images(
        request, request.query.get("q", ""), request.query.get("cursor", ""), limit, only_mine
    )
    return web.json_response(serialize.image_page(request, found))


@routes.get("/api/v1/images/{image_id}")
@needs_scope("images:read")
@optional_auth
async def get_image(request: web.Request) -> web.Response:
    img = await fetch_image(request, request.match_info["image_id"])
    return web.json_response(serialize.image(request, img))


@routes.patch("/api/v1/images/{image_id}")
@needs_scope("images:write")
async def update_image(request: web.Request) -> web.Response:
    principal = require_principal(request)
    body = await read_json(request)
    visibility = body.choice("visibility", VISIBILITIES)
    title = body.string("title", max_len=200)
    tags = body.string_list("tags", max_items=30, max_len=50)
    update = gallery_pb2.UpdateImageRequest(actor=principal.actor, image_id=request.match_info["image_id"])
    if visibility is not None:
        update.visibility = visibility
    if title is not None:
        update.title = title
    if tags is not None:
        update.set_tags = True
        update.tags.extend(tags)
    with user_errors("gallery"):
        img = await request.app[CLIENTS].gallery.UpdateImage(update)
    return web.json_response(serialize.image(request, img))


@routes.delete("/api/v1/images/{image_id}")
@needs_scope("images:write")
async def delete_image(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("gallery"):
        await request.app[CLIENTS].gallery.DeleteImage(
            gallery_pb2.DeleteImageRequest(actor=principal.actor, image_id=request.match_info["image_id"])
        )
    return web.Response(status=204)


@routes.post("/api/v1/images/{image_id}/like")
@needs_scope("images:write")
async def like(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("gallery"):
        img = await request.app[CLIENTS].gallery.Like(
            gallery_pb2.LikeRequest(actor=principal.actor, image_id=request.match_info["image_id"])
        )
    return web.json_response(serialize.image(request, img))


@routes.delete("/api/v1/images/{image_id}/like")
@needs_scope("images:write")
async def unlike(request: web.Request) -> web.Response:
    principal = require_principal(request)
    with user_errors("gallery"):
        img = await request.app[CLIENTS].gallery.Unlike(
            gallery_pb2.LikeRequest(actor=principal.actor, image_id=request.match_info["image_id"])
        )
    return web.json_response(serialize.image(request, img))


async def report_image(request: web.Request, image_id: str, reason: str) -> None:
    principal = require_principal(request)
    if len(reason) > MAX_REASON:
        raise invalid("reason_too_long", f"Say it in at most {MAX_REASON} characters.", field="reason")
    with user_errors("gallery"):
        await request.app[CLIENTS].gallery.Report(
            gallery_pb2.ReportRequest(actor=principal.actor, image_id=image_id, reason=reason.strip())
        )


@routes.post("/api/v1/images/{image_id}/report")
@needs_scope("images:write")
async def report(request: web.Request) -> web.Response:
    """Flags an image for the moderators; reporting again replaces the earlier reason."""
    body = await read_json(request, required=False)
    reason = body.string("reason", max_len=MAX_REASON) or ""
    await report_image(request, request.match_info["image_id"], reason)
    return web.json_response({"status": "reported"}, status=202)


async def hide_image(request: web.Request, image_id: str, hidden: bool) -> gallery_pb2.Image:
    principal = require_principal(request)
    with user_errors("gallery"):
        img: gallery_pb2.Image = await request.app[CLIENTS].gallery.Hide(
            gallery_pb2.HideRequest(actor=principal.actor, image_id=image_id, hidden=hidden)
        )
    return img


def _boolean(body: Body, name: str) -> bool:
    value = body.data.get(name)
    if value is None:
        raise invalid("missing_field", f"'{name}' is required.", field=name)
    if not isinstance(value, bool):
        raise invalid("invalid_field", f"'{name}' must be true or false.", field=name)
    return value


@routes.post("/api/v1/images/{image_id}/hide")
@needs_scope("images:write")
async def hide(request: web.Request) -> web.Response:
    """Administrators only: hide an image from everyone but its owner (or show it again)."""
    body = await read_json(request)
    img = await hide_image(request, request.match_info["image_id"], _boolean(body, "hidden"))
    out = serialize.image(request, img)
    out["hidden"] = img.hidden
    return web.json_response(out)


def share_url(request: web.Request, token: str) -> str:
    return f"{base_url(request)}/s/{token}"


async def create_share_link(request: web.Request, image_id: str) -> dict[str, Any]:
    principal = require_principal(request)
    with user_errors("gallery"):
        link = await request.app[CLIENTS].gallery.CreateShareLink(
            gallery_pb2.CreateShareLinkRequest(actor=principal.actor, image_id=image_id)
        )
    return {
        "url": share_url(request, link.token),
        "token": link.token,
        "image_id": link.image_id or image_id,
        "created_at": serialize.timestamp(link, "created_at"),
    }


@routes.post("/api/v1/images/{image_id}/share")
@needs_scope("images:write")
async def share(request: web.Request) -> web.Response:
    return web.json_response(await create_share_link(request, request.match_info["image_id"]))


async def revoke_share_links(request: web.Request, image_id: str, token: str = "") -> None:
    principal = require_principal(request)
    with user_errors("gallery"):
        await request.app[CLIENTS].gallery.RevokeShareLink(
            gallery_pb2.RevokeShareLinkRequest(actor=principal.actor, image_id=image_id, token=token)
        )


@routes.delete("/api/v1/images/{image_id}/share")
@needs_scope("images:write")
async def revoke_share(request: web.Request) -> web.Response:
    """Ends the share link named by `?token=`, or every share link of the image without it."""
    token = request.query.get("token", "")
    if len(token) > 200:
        raise invalid("invalid_query", "'token' is not a share token of this image.", field="token")
    await revoke_share_links(request, request.match_info["image_id"], token)
    return web.Response(status=204)


# --- image bytes -------------------------------------------------------------------------------


def etag_header(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith(('"', 'W/"')):
        return etag
    return f'"{etag}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match or not etag:
        return False
    wanted = etag_header(etag).removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


async def stream_image(request: web.Request, image_id: str, share_token: str = "") -> web.StreamResponse:
    """Relays gallery's ReadImage stream; 304 when the browser already holds this version."""
    size = query_choice(request, "size", ("original", "thumb"), "original")
    call = request.app[CLIENTS].gallery.ReadImage(
        gallery_pb2.ReadImageRequest(
            actor=actor_of(request), image_id=image_id, size=size, share_token=share_token
        ),
        timeout=max(30.0, settings_of(request).rpc_timeout_s * 3),
    )
    chunks = call.__aiter__()
    try:
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = gallery_pb2.ImageChunk()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "gallery") from None
        headers = {"Cache-Control": CACHE_FOREVER}
        if first.etag:
            headers["ETag"] = etag_header(first.etag)
        if etag_matches(request.headers.get("If-None-Match"), first.etag):
            return web.Response(status=304, headers=headers)
        ext = EXTENSIONS.get(first.content_type or "image/png", "bin")
        suffix = "-thumb" if size == "thumb" else ""
        headers["Content-Disposition"] = f'inline; filename="{image_id}{suffix}.{ext}"'
        resp = web.StreamResponse(headers=headers)
        resp.content_type = first.content_type or "image/png"
        if first.total_size > 0:
            resp.content_length = first.total_size
        await resp.prepare(request)
        if request.method == "HEAD":  # headers only (aiohttp would send a streamed body as is)
            await resp.write_eof()
            return resp
        try:
            if first.data:
                await resp.write(first.data)
            async for chunk in chunks:
                await resp.write(chunk.data)
        except grpc.aio.AioRpcError:
            # Headers are gone already: all we can do is cut the response short.
            if request.transport is not None:
                request.transport.close()
            return resp
        except ConnectionResetError:
            return resp
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp
    finally:
        call.cancel()


@routes.get("/api/v1/images/{image_id}/file")
@needs_scope("images:read")
@optional_auth
async def image_file(request: web.Request) -> web.StreamResponse:
    return await stream_image(request, request.match_info["image_id"])


# --- share links -------------------------------------------------------------------------------


async def resolve_share(request: web.Request, token: str) -> gallery_pb2.Image:
    with user_errors("gallery"):
        img: gallery_pb2.Image = await request.app[CLIENTS].gallery.ResolveShareLink(
            gallery_pb2.ResolveShareLinkRequest(token=token)
        )
    return img


@routes.get("/s/{token}")
@optional_auth
async def open_share(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    img = await resolve_share(request, token)
    if wants_json(request):
        return web.json_response(serialize.image(request, img, share_token=token))
    data = serialize.image(request, img, share_token=token, absolute=False)
    return render(request, "shared.html", image=data, share_url=share_url(request, token))


@routes.get("/s/{token}/file")
@no_auth
async def shared_file(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    img = await resolve_share(request, token)
    return await stream_image(request, img.id, share_token=token)
