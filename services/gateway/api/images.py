"""`/api/v1/images`, `/api/v1/community`, `/api/v1/search`, likes, reports, hiding and share links
(images kept by gallery)."""

from __future__ import annotations

from aiohttp import web

from easel.gallery.v1 import gallery_pb2
from services.common import limits
from services.common.errors import EaselError, invalid

from .. import models, serialize
from ..principal import actor_of, principal_of, require_principal
from ..registry import REST, Area, Call
from ..state import state_of
from ..urls import base_url
from .params import CHANGE, IMAGE_ID, LIMIT, LIST, MINE, ONE, ORDER, PAGED, QUERY, REVOKE_TOKEN

IMAGES = Area(REST, "images", scope="images:read")
# Anonymous callers welcome (a credential sent is still checked).
PUBLIC = Area(REST, "images", scope="images:read", auth="optional")
OWNER = Area(REST, "images", scope="images:write")
LIKE = "/api/v1/images/{image_id}/like"
HIDE = "Hide an image from everyone but its owner, or show it again (administrators)"
HIDDEN = "A moderator hid the image (`image_hidden`)."
ADMINS = "Only administrators moderate images (`admin_required`), or CSRF."

# The old names, for the pages (web.py) that share these checks.
VISIBILITIES = limits.VISIBILITIES
MAX_REASON = limits.REASON_MAX_CHARS


async def fetch_image(request: web.Request, image_id: str, share_token: str = "") -> gallery_pb2.Image:
    return await state_of(request).backend.get_image(actor_of(request), image_id, share_token)


@IMAGES.op("GET", "/api/v1/images", "My images, newest first", models.ImagePage, errors=LIST, params=PAGED)
async def list_images(call: Call[None]) -> models.ImagePage:
    found = await call.backend.list_images(
        call.principal.actor, call.param(LIMIT) or 24, call.query("cursor")
    )
    return serialize.image_page(call.request, found)


@PUBLIC.op(
    "GET", "/api/v1/community", "Public images", models.ImagePage, errors=(400, 503), params=(*PAGED, ORDER)
)
async def community(call: Call[None]) -> models.ImagePage:
    found = await call.backend.list_public(
        call.actor, call.param(ORDER), call.param(LIMIT) or 24, call.query("cursor")
    )
    return serialize.image_page(call.request, found)


async def search_images(
    request: web.Request, query: str, cursor: str = "", limit: int = 24, only_mine: bool = False
) -> gallery_pb2.ListImagesResponse:
    """Public images (and the caller's own) whose prompt, title or tags match `query`. Errors name
    the `q` parameter, whatever gallery calls it."""
    if not query.strip():
        raise invalid("missing_query", "Type a few words to search for.", field="q")
    if len(query) > limits.SEARCH_MAX_CHARS:
        raise invalid(
            "query_too_long", f"Search for at most {limits.SEARCH_MAX_CHARS} characters.", field="q"
        )
    if only_mine and principal_of(request) is None:
        require_principal(request)
    call: Call[None] = Call(request, None)
    try:
        return await call.backend.search(call.actor, query, limit, cursor, only_mine)
    except EaselError as exc:
        if exc.field == "query":
            exc.field = "q"
        raise


@PUBLIC.op(
    "GET", "/api/v1/search", "Search public images (and my own) by prompt, title and tags", models.ImagePage,
    errors=LIST, params=(QUERY, *PAGED, MINE),
)  # fmt: skip
async def search(call: Call[None]) -> models.ImagePage:
    found = await search_images(
        call.request, call.param(QUERY), call.query("cursor"), call.param(LIMIT) or 24, call.param(MINE)
    )
    return serialize.image_page(call.request, found)


@PUBLIC.op(
    "GET", "/api/v1/images/{image_id}", "An image record", models.Image, errors=ONE, params=(IMAGE_ID,),
    description="Public images need no credential; private ones only their owner sees.",
)  # fmt: skip
async def get_image(call: Call[None]) -> models.Image:
    return serialize.image(call.request, await fetch_image(call.request, call.path("image_id")))


@OWNER.op(
    "PATCH", "/api/v1/images/{image_id}", "Change visibility, title or tags", models.Image,
    body=models.ImageUpdate, errors=(400, *CHANGE, 415), params=(IMAGE_ID,),
)  # fmt: skip
async def update_image(call: Call[models.ImageUpdate]) -> models.Image:
    b = call.body
    update = gallery_pb2.UpdateImageRequest(actor=call.principal.actor, image_id=call.path("image_id"))
    if b.visibility is not None:
        update.visibility = b.visibility
    if b.title is not None:
        update.title = b.title
    if b.tags is not None:
        update.set_tags = True
        update.tags.extend(b.tags)
    return serialize.image(call.request, await call.backend.update_image(update))


@OWNER.op(
    "DELETE", "/api/v1/images/{image_id}", "Delete an image", status=204, errors=CHANGE, params=(IMAGE_ID,)
)
async def delete_image(call: Call[None]) -> None:
    await call.backend.delete_image(call.principal.actor, call.path("image_id"))


@OWNER.op("POST", LIKE, "Like an image", models.Image, errors=CHANGE, params=(IMAGE_ID,))
@OWNER.op("DELETE", LIKE, "Take a like back", models.Image, errors=CHANGE, params=(IMAGE_ID,))
async def like(call: Call[None]) -> models.Image:
    liked = call.request.method == "POST"
    return serialize.image(
        call.request, await call.backend.like(call.principal.actor, call.path("image_id"), liked)
    )


async def report_image(request: web.Request, image_id: str, reason: str) -> None:
    principal = require_principal(request)
    if len(reason) > limits.REASON_MAX_CHARS:
        raise invalid(
            "reason_too_long", f"Say it in at most {limits.REASON_MAX_CHARS} characters.", field="reason"
        )
    await state_of(request).backend.report(principal.actor, image_id, reason.strip())


@OWNER.op(
    "POST", "/api/v1/images/{image_id}/report", "Report an image to the moderators", models.Reported,
    body=models.ReportRequest, body_required=False, status=202, errors=(400, *CHANGE, 415),
    params=(IMAGE_ID,),
)  # fmt: skip
async def report(call: Call[models.ReportRequest]) -> models.Reported:
    """Received; reporting again replaces the reason."""
    await report_image(call.request, call.path("image_id"), call.body.reason or "")
    return {"status": "reported"}


async def hide_image(request: web.Request, image_id: str, hidden: bool) -> gallery_pb2.Image:
    return await state_of(request).backend.hide(require_principal(request).actor, image_id, hidden)


@OWNER.op(
    "POST", "/api/v1/images/{image_id}/hide", HIDE, models.HiddenImage, body=models.HideRequest,
    errors=(400, *CHANGE, 415), params=(IMAGE_ID,), notes={403: ADMINS},
)  # fmt: skip
async def hide(call: Call[models.HideRequest]) -> models.HiddenImage:
    img = await hide_image(call.request, call.path("image_id"), call.body.hidden)
    return {**serialize.image(call.request, img), "hidden": img.hidden}


def share_url(request: web.Request, token: str) -> str:
    return f"{base_url(request)}/s/{token}"


async def create_share_link(request: web.Request, image_id: str) -> models.ShareLink:
    link = await state_of(request).backend.create_share_link(require_principal(request).actor, image_id)
    return {
        "url": share_url(request, link.token),
        "token": link.token,
        "image_id": link.image_id or image_id,
        "created_at": serialize.timestamp(link, "created_at"),
    }


@OWNER.op(
    "POST", "/api/v1/images/{image_id}/share", "Make a share link (opens without an account)",
    models.ShareLink, errors=(*CHANGE, 409), params=(IMAGE_ID,), notes={409: HIDDEN},
)  # fmt: skip
async def share(call: Call[None]) -> models.ShareLink:
    return await create_share_link(call.request, call.path("image_id"))


async def revoke_share_links(request: web.Request, image_id: str, token: str = "") -> None:
    await state_of(request).backend.revoke_share_links(require_principal(request).actor, image_id, token)


@OWNER.op(
    "DELETE", "/api/v1/images/{image_id}/share", "Revoke share links", status=204, errors=(400, *CHANGE),
    params=(IMAGE_ID, REVOKE_TOKEN),
)  # fmt: skip
async def revoke_share(call: Call[None]) -> None:
    """Ends the share link named by `?token=`, or every share link of the image without it."""
    token = call.query("token")
    if len(token) > limits.SHARE_TOKEN_MAX_CHARS:
        raise invalid("invalid_query", "'token' is not a share token of this image.", field="token")
    await revoke_share_links(call.request, call.path("image_id"), token)
