"""`POST /api/v1/edits`: img2img, inpainting, upscaling and variations of an image (jobs kept by inference).

The image (and the inpainting mask) come as files of a multipart form, as base64 strings in a JSON
body, or as the ids of images already in the gallery. Bytes go through gallery's UploadImage first,
which checks them; the job then refers to them by id. `submit_edit` is shared with the OpenAI- and
AUTOMATIC1111-compatible APIs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from easel.gallery.v1 import gallery_pb2
from easel.inference.v1 import inference_pb2
from services.common.errors import EaselError, invalid
from services.common.grpc_client import user_errors

from . import serialize
from .api_jobs import generation_params
from .bodies import Body, read_json
from .clients import CLIENTS
from .compat_common import (
    decode_base64,
    file_bytes,
    get_image,
    is_multipart,
    read_form,
    submit_job,
    typed_form,
    upload_image,
    with_upload_limit,
)
from .principal import Principal, needs_scope, require_principal

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

EDIT_KINDS = ("img2img", "inpaint", "upscale", "variation")
# Upscale and variation redraw an existing picture, so a prompt is optional for them: without one
# the source image's own prompt is used, and for an upload (which has none) this neutral one.
DEFAULT_EDIT_PROMPT = "high quality, detailed"
PROMPT_OPTIONAL = frozenset({"upscale", "variation"})

FORM_INTS = frozenset({"width", "height", "steps", "seed", "n"})
FORM_NUMBERS = frozenset({"guidance", "strength"})


@dataclass
class Source:
    """An input image: bytes to upload, or the id of an image already in the gallery."""

    data: bytes | None = None
    image_id: str = ""
    filename: str = ""

    @property
    def given(self) -> bool:
        return self.data is not None or bool(self.image_id)


def edit_params(body: Body, default_prompt: str | None = None) -> inference_pb2.GenerationParams:
    """GenerationParams from the body's fields (types checked here, ranges by inference).

    `default_prompt` stands in for a missing prompt; without it the prompt is required."""
    if default_prompt is not None and not (body.string("prompt", max_len=100_000) or "").strip():
        body = Body({**body.data, "prompt": default_prompt})
    params = generation_params(body)
    strength = body.number("strength", minimum=0, maximum=1)
    if strength is not None:
        params.strength = strength
        params.has_strength = True
    return params


async def submit_edit(
    request: web.Request,
    principal: Principal,
    kind: str,
    model: str,
    params: inference_pb2.GenerationParams,
    image: Source,
    mask: Source | None = None,
    idempotency_key: str = "",
) -> inference_pb2.Job:
    """Uploads what came as bytes (init image, mask), then submits the job that uses them."""
    uploads: list[asyncio.Future[str]] = []
    if image.data is not None:
        uploads.append(
            asyncio.ensure_future(
                upload_image(request, principal, image.data, image.filename or "image.png", "init", "image")
            )
        )
    if mask is not None and mask.data is not None:
        uploads.append(
            asyncio.ensure_future(
                upload_image(request, principal, mask.data, mask.filename or "mask.png", "mask", "mask")
            )
        )
    results = await asyncio.gather(*uploads, return_exceptions=True)
    ids = [r for r in results if isinstance(r, str)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        # The image went in but the mask was refused (or the other way round): drop the one in.
        await _forget_uploads(request, principal, ids)
        raise failures[0]
    pending = list(ids)
    params.init_image_id = pending.pop(0) if image.data is not None else image.image_id
    if mask is not None:
        params.mask_image_id = pending.pop(0) if mask.data is not None else mask.image_id
    try:
        return await submit_job(request, principal, kind, model, params, idempotency_key)
    except EaselError as exc:
        # A refused job leaves no stray uploads behind. Not after a timeout or outage, though: the
        # job may exist after all and need them.
        if exc.http_status < 500:
            await _forget_uploads(request, principal, ids)
        raise


async def _forget_uploads(request: web.Request, principal: Principal, image_ids: list[str]) -> None:
    for image_id in image_ids:
        try:
            with user_errors("gallery"):
                await request.app[CLIENTS].gallery.DeleteImage(
                    gallery_pb2.DeleteImageRequest(actor=principal.actor, image_id=image_id)
                )
        except EaselError as exc:  # best effort: the request's own error is what the caller needs
            log.warning("could not delete an unused upload", extra={"code": exc.code})


async def source_prompt(request: web.Request, principal: Principal, image_id: str, field: str) -> str:
    """The prompt an image in the gallery was made with ("" for uploads); 404 naming `field` when the
    caller cannot see it."""
    try:
        # The worker reads the source with the owner's ordinary rights: an admin's view of someone
        # else's private image must not let in a job that can only fail later.
        img = await get_image(request, principal, image_id, admin_rights=False)
    except EaselError as exc:
        if exc.http_status == 404:
            exc.field = field
        raise
    prompt = serialize.params(img.params_json).get("prompt")
    return prompt if isinstance(prompt, str) else ""


def _one_file(files: dict[str, list[web.FileField]], name: str) -> web.FileField | None:
    found = files.get(name, [])
    if len(found) > 1:
        raise invalid("too_many_files", f"Send one '{name}' file, not {len(found)}.", field=name)
    return found[0] if found else None


async def _read_sources(reader: web.Request) -> tuple[Body, Source, Source]:
    """The body's fields and its image and mask, from a multipart form or a JSON object."""
    image, mask = Source(), Source()
    if is_multipart(reader):
        fields, files = await read_form(reader)
        for name, source in (("image", image), ("mask", mask)):
            upload = _one_file(files, name)
            if upload is not None:
                source.data = await file_bytes(upload)
                source.filename = upload.filename or ""
                if not source.data:
                    raise invalid(
                        f"missing_{name}", f"The '{name}' file is empty; choose an image file.", field=name
                    )
            elif name in fields:
                # A base64 string in a text field, for clients that cannot attach files.
                source.data = await decode_base64(fields.pop(name), name)
        body = typed_form(fields, FORM_INTS, FORM_NUMBERS, {})
    else:
        body = await read_json(reader)
        for name, source in (("image", image), ("mask", mask)):
            if body.has(name):
                source.data = await decode_base64(body.data[name], name)
    image.image_id = body.string("image_id", max_len=200) or ""
    mask.image_id = body.string("mask_id", max_len=200) or ""
    return body, image, mask


def _check_sources(kind: str, image: Source, mask: Source) -> None:
    if image.data is not None and image.image_id:
        raise invalid("conflicting_fields", "Send either 'image' or 'image_id', not both.", field="image")
    if not image.given:
        raise invalid(
            "missing_image",
            "Send the image to edit: an 'image' file (multipart), 'image' as base64 (JSON), or the "
            "'image_id' of an image in your gallery.",
            field="image",
        )
    if mask.data is not None and mask.image_id:
        raise invalid("conflicting_fields", "Send either 'mask' or 'mask_id', not both.", field="mask")
    if kind == "inpaint" and not mask.given:
        raise invalid(
            "missing_mask",
            "Inpainting needs a mask (white where the image should be repainted): send 'mask' or 'mask_id'.",
            field="mask",
        )
    if kind != "inpaint" and mask.given:
        raise invalid(
            "unexpected_mask",
            "A mask is only used with kind inpaint; drop it or set kind to inpaint.",
            field="mask",
        )


@routes.post("/api/v1/edits")
@needs_scope("generate")
async def create_edit(request: web.Request) -> web.Response:
    principal = require_principal(request)
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > 200:
        raise invalid("invalid_idempotency_key", "Keep the Idempotency-Key header under 200 characters.")
    body, image, mask = await _read_sources(with_upload_limit(request))
    kind = body.string("kind", required=True, max_len=50, allow_empty=False) or ""
    if kind not in EDIT_KINDS:
        raise invalid(
            "invalid_kind", f"'kind' must be one of {', '.join(EDIT_KINDS)}; got {kind!r}.", field="kind"
        )
    _check_sources(kind, image, mask)
    if key and (image.data is not None or mask.data is not None):
        # Each upload makes a new gallery image, so a retry would not be the same request.
        raise invalid(
            "idempotency_key_with_upload",
            "Idempotency-Key works only with images referred to by image_id and mask_id; drop the "
            "header or refer to images in your gallery.",
        )
    model = body.string("model", max_len=200) or ""
    default_prompt: str | None = None
    if kind in PROMPT_OPTIONAL:
        default_prompt = DEFAULT_EDIT_PROMPT
    if image.image_id:
        # Checked now so that a wrong id is a 404 naming the field, not a failed job later.
        found = await source_prompt(request, principal, image.image_id, "image_id")
        if default_prompt is not None and found.strip():
            default_prompt = found
    if mask.image_id:
        await source_prompt(request, principal, mask.image_id, "mask_id")
    params = edit_params(body, default_prompt)
    job = await submit_edit(
        request, principal, kind, model, params, image, mask if kind == "inpaint" else None, key
    )
    return web.json_response(
        {"job": serialize.job(request, job)},
        status=202,
        headers={"Location": f"/api/v1/jobs/{job.id}"},
    )
