"""Image bytes (`/api/v1/images/{id}/file`) and share links (`/s/{token}`, `/s/{token}/file`)."""

from __future__ import annotations

import contextlib

from aiohttp import web

from services.common.errors import EaselError

from .. import models, serialize
from ..principal import actor_of
from ..registry import REST, Area, Call
from ..render import render
from ..state import state_of
from ..urls import wants_json
from .images import share_url
from .params import IF_NONE_MATCH, IMAGE_ID, SHARE_TOKEN, SIZE

CACHE_FOREVER = "private, max-age=31536000, immutable"
FILES = Area(REST, "images", scope="images:read", auth="optional")
SHARED = Area(REST, "images", auth="optional")
EXTENSIONS = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpg"}
_STRING = {"type": "string"}
PNG = {
    "200": {
        "description": "The image bytes: the original as PNG, the thumbnail (size=thumb) as WebP.",
        "headers": {
            "ETag": {"schema": _STRING, "description": "The image's content hash."},
            "Cache-Control": {"schema": _STRING, "description": CACHE_FOREVER},
        },
        "content": {
            "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
            "image/webp": {"schema": {"type": "string", "contentMediaType": "image/webp"}},
        },
    },
    "304": {"description": "The copy named by If-None-Match is current."},
}
LINK_GONE = {
    "description": "No such share link, or it was revoked: an HTML page for browsers, the Error as JSON when "
    "the Accept header asks for application/json.",
    "content": {
        "text/html": {"schema": _STRING},
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}},
    },
}
SHARED_PAGE = {
    "200": {
        "description": "An HTML page, or the Image (urls point at /s/{token}/file) when the Accept header "
        "asks for application/json.",
        "content": {
            "text/html": {"schema": _STRING},
            "application/json": {"schema": {"$ref": "#/components/schemas/Image"}},
        },
    },
    "404": LINK_GONE,
}


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
    size = SIZE.read(request)
    state = state_of(request)
    timeout = max(30.0, state.settings.rpc_timeout_s * 3)
    chunks = state.backend.image_chunks(actor_of(request), image_id, size, share_token, timeout)
    async with contextlib.aclosing(chunks):
        first = await anext(chunks, None)
        if first is None:
            first = serialize.empty_chunk()
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
        except EaselError:
            # Headers are gone already: all we can do is cut the response short.
            if request.transport is not None:
                request.transport.close()
            return resp
        except ConnectionResetError:
            return resp
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp


@FILES.op(
    "GET", "/api/v1/images/{image_id}/file", "The image file (PNG)", errors=(400, 401, 404, 503),
    params=(IMAGE_ID, SIZE, IF_NONE_MATCH), responses=PNG,
)  # fmt: skip
async def image_file(call: Call[None]) -> web.StreamResponse:
    return await stream_image(call.request, call.path("image_id"))


@SHARED.op(
    "GET", "/s/{token}", "Open a share link", errors=(503,), params=(SHARE_TOKEN,), responses=SHARED_PAGE
)
async def open_share(call: Call[None]) -> web.Response:
    token = call.path("token")
    img = await call.backend.resolve_share_link(token)
    if wants_json(call.request):
        shared: models.Image = serialize.image(call.request, img, share_token=token)
        return web.json_response(shared)
    data = serialize.image(call.request, img, share_token=token, absolute=False)
    return render(call.request, "shared.html", image=data, share_url=share_url(call.request, token))


@SHARED.op(
    "GET", "/s/{token}/file", "The shared image file", errors=(503,),
    params=(SHARE_TOKEN, SIZE, IF_NONE_MATCH), auth="none", responses={**PNG, "404": LINK_GONE},
)  # fmt: skip
async def shared_file(call: Call[None]) -> web.StreamResponse:
    token = call.path("token")
    img = await call.backend.resolve_share_link(token)
    return await stream_image(call.request, img.id, share_token=token)
