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
from typing import Any

from aiohttp import web

from easel.inference.v1 import inference_pb2
from services.common.errors import EaselError, invalid

from .. import models, serialize
from ..bodies import read_json
from ..fields import parse
from ..principal import Principal
from ..registry import REST, Area, Call
from ..state import state_of
from .jobs import LOCATION, QUOTA, accepted, generation_params, idempotency_key
from .params import BODY, IDEMPOTENCY_KEY
from .uploads import decode_base64, file_bytes, is_multipart, read_form, typed_form, with_upload_limit

log = logging.getLogger(__name__)

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


def _upload_timeout(request: web.Request) -> float:
    # Decoding and re-encoding a big upload takes longer than an ordinary call.
    return max(30.0, state_of(request).settings.rpc_timeout_s * 3)


async def upload_image(
    request: web.Request, principal: Principal, data: bytes, filename: str, purpose: str, field: str
) -> str:
    """Stores an init image or mask through gallery (which checks it); its error names `field`."""
    backend = state_of(request).backend
    try:
        img = await backend.upload_image(
            principal.actor, data, filename[:200], purpose, _upload_timeout(request)
        )
    except EaselError as exc:
        if exc.field in (None, "image", "data") and exc.http_status < 500:
            exc.field = field
        raise
    return str(img.id)


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
    wanted = [(image, "image.png", "init", "image")]
    if mask is not None:
        wanted.append((mask, "mask.png", "mask", "mask"))
    uploads = [
        upload_image(request, principal, source.data, source.filename or name, purpose, field)
        for source, name, purpose, field in wanted
        if source.data is not None
    ]
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
        return await state_of(request).backend.submit_job(
            principal.actor, kind, model, params, idempotency_key
        )
    except EaselError as exc:
        # A refused job leaves no stray uploads behind. Not after a timeout or outage, though: the
        # job may exist after all and need them.
        if exc.http_status < 500:
            await _forget_uploads(request, principal, ids)
        raise


async def _forget_uploads(request: web.Request, principal: Principal, image_ids: list[str]) -> None:
    for image_id in image_ids:
        try:
            await state_of(request).backend.delete_image(principal.actor, image_id)
        except EaselError as exc:  # best effort: the request's own error is what the caller needs
            log.warning("could not delete an unused upload", extra={"code": exc.code})


async def source_prompt(request: web.Request, principal: Principal, image_id: str, field: str) -> str:
    """The prompt an image in the gallery was made with ("" for uploads); 404 naming `field` when the
    caller cannot see it."""
    # The worker reads the source with the owner's ordinary rights: an admin's view of someone
    # else's private image must not let in a job that can only fail later.
    actor = principal.actor
    actor.role = "user"
    try:
        img = await state_of(request).backend.get_image(actor, image_id)
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


async def _read_sources(reader: web.Request) -> tuple[models.EditRequest, Source, Source]:
    """The body's fields and its image and mask, from a multipart form or a JSON object."""
    image, mask = Source(), Source()
    data: dict[str, Any]
    if is_multipart(reader):
        fields, files = await read_form(reader)
        for name, source in (("image", image), ("mask", mask)):
            upload = _one_file(files, name)
            if upload is not None:
                fields.pop(name, None)
                source.data = await file_bytes(upload)
                source.filename = upload.filename or ""
                if not source.data:
                    raise invalid(
                        f"missing_{name}", f"The '{name}' file is empty; choose an image file.", field=name
                    )
        data = typed_form(fields, FORM_INTS, FORM_NUMBERS)
    else:
        data = (await read_json(reader)).data
    body = parse(models.EditRequest, data)
    # A base64 string (in JSON, or in a text field for clients that cannot attach files).
    for name, text, source in (("image", body.image, image), ("mask", body.mask, mask)):
        if text is not None and source.data is None:
            source.data = await decode_base64(text, name)
    image.image_id = body.image_id or ""
    mask.image_id = body.mask_id or ""
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


def edit_prompt(body: models.EditRequest, default_prompt: str | None) -> str:
    """The prompt to use: the body's, else `default_prompt`; without either a prompt is required."""
    if body.prompt is not None and body.prompt.strip():
        return body.prompt
    if default_prompt is not None:
        return default_prompt
    if body.prompt is None:
        raise invalid("missing_field", "'prompt' is required.", field="prompt")
    raise invalid("missing_field", "'prompt' must not be empty.", field="prompt")


EDITS = Area(REST, "jobs", scope="generate")
EDIT_NOTES = {
    400: "A missing or wrong field (`missing_image`, `missing_mask`, `invalid_kind`, `not_an_image`, "
    "`image_too_large`, ...); `field` names it.",
    404: "No such model, or image_id / mask_id is not an image you can see.",
    409: "The Idempotency-Key was used before for a different request.",
    415: "Send multipart/form-data or JSON.",
    429: QUOTA,
}
EDIT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/EditForm"}},
        "application/json": {"schema": {"$ref": "#/components/schemas/EditRequest"}},
    },
}


@EDITS.op(
    "POST", "/api/v1/edits", "Edit an image: img2img, inpaint, upscale or variation (queues a job)",
    models.JobEnvelope, status=202, errors=(*BODY, 404, 409, 413, 429), params=(IDEMPOTENCY_KEY,),
    body_doc=EDIT_BODY, headers=LOCATION, notes=EDIT_NOTES,
)  # fmt: skip
async def create_edit(call: Call[None]) -> models.JobEnvelope:
    """Accepted; follow the job at Location or its /events."""
    principal = call.principal
    key = idempotency_key(call)
    body, image, mask = await _read_sources(with_upload_limit(call.request))
    kind = body.kind
    _check_sources(kind, image, mask)
    if key and (image.data is not None or mask.data is not None):
        # Each upload makes a new gallery image, so a retry would not be the same request.
        raise invalid(
            "idempotency_key_with_upload",
            "Idempotency-Key works only with images referred to by image_id and mask_id; drop the "
            "header or refer to images in your gallery.",
        )
    default_prompt = DEFAULT_EDIT_PROMPT if kind in PROMPT_OPTIONAL else None
    if image.image_id:
        # Checked now so that a wrong id is a 404 naming the field, not a failed job later.
        found = await source_prompt(call.request, principal, image.image_id, "image_id")
        if default_prompt is not None and found.strip():
            default_prompt = found
    if mask.image_id:
        await source_prompt(call.request, principal, mask.image_id, "mask_id")
    params = generation_params(body, edit_prompt(body, default_prompt))
    if body.strength is not None:
        params.strength = body.strength
        params.has_strength = True
    job = await submit_edit(
        call.request,
        principal,
        kind,
        body.model or "",
        params,
        image,
        mask if kind == "inpaint" else None,
        key,
    )
    return accepted(call, job)
