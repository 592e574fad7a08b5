"""An OpenAI-compatible Images API: `/v1/images/generations`, `/v1/images/edits`,
`/v1/images/variations`, `/v1/models`, and the signed image URLs `/v1/images/files/...`.

The official `openai` client works against it with only `base_url=<studio>/v1` and `api_key=<an
Easel API key or session token>`. As in OpenAI's API the calls are synchronous: each submits a job,
waits for it to end and answers `{created, data: [{b64_json} | {url}], output_format}`. Errors
answer in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`. Its document:
`/v1/openapi.json`.

Where the studio differs:
- `model`: OpenAI's own names (dall-e-*, gpt-image-*, chatgpt-image-*) mean the studio's default
  model; any other name must be an installed model (see GET /v1/models).
- `response_format` defaults as at OpenAI: `url` for dall-e-* model names, `b64_json` otherwise.
  A `url` is signed and expires (EASEL_SIGNED_URL_TTL_S, an hour by default): it needs no API key.
- `size` is "WIDTHxHEIGHT" within the model's limits, or "auto" for its default.
- `output_format` png, jpeg or webp, with `output_compression` 0-100 for jpeg and webp.
- Edits take the image as `image` or as one or several `image[]` fields. The studio edits one
  picture: the first; further images are accepted and not used (a mask applies to the first image,
  as at OpenAI).
- Extra fields the studio understands: `seed`, `negative_prompt`, `steps`, `guidance`, `sampler`,
  and `strength` for edits and variations.
- Fields that only tune OpenAI's models (quality, style, background, moderation, user, ...) are
  accepted and ignored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from easel.common.v1 import common_pb2
from easel.inference.v1 import inference_pb2
from services.common.errors import EaselError, invalid, unauthenticated
from services.common.grpc_client import user_errors

from ..api.uploads import typed_form
from ..api_edits import DEFAULT_EDIT_PROMPT, Source, edit_params, submit_edit
from ..api_jobs import generation_params
from ..bodies import Body
from ..clients import CLIENTS
from ..compat_common import (
    alpha_of,
    authenticate_token,
    authorization,
    encode_base64,
    encode_png,
    file_bytes,
    has_alpha,
    image_size,
    is_multipart,
    job_cancelled,
    job_failure,
    job_images,
    open_image,
    read_body,
    read_form,
    read_image,
    submit_job,
    transparent_to_white,
    wait_for_job,
    with_upload_limit,
)
from ..principal import Principal, check_scope, no_auth
from . import documents, formats, signed

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RESPONSE_FORMATS = ("b64_json", "url")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
_OPENAI_MODELS = re.compile(r"^(dall-e|gpt-image|chatgpt-image)", re.IGNORECASE)
_DALL_E = re.compile(r"^dall-e", re.IGNORECASE)
MAX_EDIT_IMAGES = 16  # OpenAI's limit for gpt-image edits
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")

FORM_INTS = frozenset({"n", "seed", "steps", "output_compression"})
FORM_NUMBERS = frozenset({"guidance", "strength"})

# Our field names as OpenAI's API names them, for `param` in errors.
_PARAMS = {
    "width": "size",
    "height": "size",
    "init_image_id": "image",
    "mask_image_id": "mask",
    "image_id": "image",
    "idempotency_key": None,
}
_OPENAI_CODES = {
    # A credential was sent and auth refused it.
    "invalid_token": "invalid_api_key",  # nosec B105  # an error code, not a password
    "api_key_expired": "invalid_api_key",
    "session_expired": "invalid_api_key",
    "bad_authorization": "invalid_api_key",
}


# --- errors --------------------------------------------------------------------------------------


def _error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    if status == 429:
        return "rate_limit_error"
    if status == 403:
        return "permission_error"
    return "invalid_request_error"


def openai_error(status: int, message: str, code: str | None, param: str | None = None) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="easel"'} if status == 401 else None
    body = {"error": {"message": message, "type": _error_type(status), "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def from_easel_error(exc: EaselError) -> web.Response:
    status = exc.http_status
    # The client retries 409s (as lock timeouts); here they mean a request that cannot succeed.
    if status == 409:
        status = 400
    param = _PARAMS.get(exc.field, exc.field) if exc.field else None
    resp = openai_error(status, exc.message, _OPENAI_CODES.get(exc.code, exc.code), param)
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


_HTTP_MESSAGES = {
    404: "Unknown path; the Images API lives under /v1/images and /v1/models.",
    405: "This path does not accept that method.",
    413: "The request is too large; send a smaller image.",
    415: "Send the body as JSON (application/json), or images as multipart/form-data.",
}


def openai_api(handler: Handler) -> Handler:
    """Authenticates the caller (bearer key or session token) and answers errors in OpenAI's shape."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except EaselError as exc:
            if exc.http_status >= 500:
                log.warning("backend error", extra={"code": exc.code, "status": exc.http_status})
            return from_easel_error(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = _HTTP_MESSAGES.get(exc.status, exc.reason)
            return openai_error(exc.status, message, None)
        except ConnectionResetError:
            raise
        except Exception:
            log.exception("unexpected error", extra={"path": request.path, "method": request.method})
            return openai_error(500, "Something went wrong on our side; try again.", "internal")

    return no_auth(wrapped)


async def caller(request: web.Request) -> Principal:
    """The caller behind `Authorization: Bearer <API key or session token>`, with the generate scope."""
    scheme, token = authorization(request)
    if not scheme:
        raise unauthenticated(
            "missing_api_key",
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'; create one with "
            "POST /api/v1/keys.",
        )
    if scheme != "bearer" or not token:
        raise unauthenticated("invalid_api_key", "Send the API key as 'Authorization: Bearer <key>'.")
    try:
        principal = await authenticate_token(request, token)
    except EaselError as exc:
        if exc.status == grpc.StatusCode.UNAUTHENTICATED:
            raise unauthenticated("invalid_api_key", f"Incorrect API key provided: {exc.message}") from None
        raise
    check_scope(principal, "generate")
    return principal


# --- request fields ------------------------------------------------------------------------------


def parse_size(value: str | None) -> tuple[int, int]:
    """(width, height) from "WIDTHxHEIGHT"; (0, 0), the model default, for absent or "auto"."""
    if value is None or value.strip().lower() in ("", "auto"):
        return 0, 0
    match = _SIZE.match(value)
    if match is None:
        raise invalid(
            "invalid_size", f"size must look like 512x512 (or be auto); got {value!r}.", field="size"
        )
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise invalid("invalid_size", f"size must be at least 1x1; got {value!r}.", field="size")
    return width, height


def model_name(body: Body) -> str:
    """The installed model to use: OpenAI's own model names stand for the studio's default."""
    name = (body.string("model", max_len=200) or "").strip()
    return "" if _OPENAI_MODELS.match(name) else name


@dataclass(frozen=True)
class Output:
    """How to hand the images back: as base64 or signed URLs, in which file format."""

    response_format: str  # "b64_json" | "url"
    fmt: str  # "png" | "jpeg" | "webp"
    quality: int  # 0-100, for jpeg and webp


def output(body: Body) -> Output:
    """`response_format` (OpenAI's default: url for dall-e-* models, b64_json otherwise),
    `output_format` and `output_compression`."""
    model = body.string("model", max_len=200) or ""
    default = "url" if _DALL_E.match(model.strip()) else "b64_json"
    fmt = formats.canonical(body.string("output_format", max_len=20) or "png")
    if not fmt:
        raise invalid(
            "invalid_output_format", "output_format must be png, jpeg or webp.", field="output_format"
        )
    quality = body.integer("output_compression", minimum=0, maximum=100)
    return Output(
        body.choice("response_format", RESPONSE_FORMATS) or default, fmt, 100 if quality is None else quality
    )


def no_stream(body: Body) -> None:
    value = body.data.get("stream")
    if value in (None, False) or (isinstance(value, str) and value.strip().lower() in ("", "false", "0")):
        return
    raise invalid("stream_unsupported", "Streaming is not supported; leave stream unset.", field="stream")


def params_body(body: Body, prompt_required: bool = True) -> Body:
    """Our GenerationParams fields from OpenAI's (size) and the studio's extra ones."""
    width, height = parse_size(body.string("size", max_len=50))
    data: dict[str, Any] = {
        name: body.data.get(name)
        for name in ("prompt", "negative_prompt", "steps", "guidance", "sampler", "seed", "n", "strength")
    }
    if width:
        data["width"], data["height"] = width, height
    if not prompt_required and not data.get("prompt"):
        data.pop("prompt")
    return Body({k: v for k, v in data.items() if v is not None})


async def answer(
    request: web.Request, principal: Principal, job: inference_pb2.Job, out: Output
) -> web.Response:
    """Waits for the job, then answers with its images."""
    job = await wait_for_job(request, principal, job.id)
    if job.status == "failed":
        raise job_failure(job)
    if job.status == "cancelled":
        raise job_cancelled()
    data: list[dict[str, str]]
    if out.response_format == "url":
        refs = sorted(job.images, key=lambda ref: ref.index)
        data = [
            {"url": signed.signed_url(request, principal.user_id, ref.id, out.fmt, out.quality)}
            for ref in refs
        ]
    else:
        data = []
        for png in await job_images(request, principal, job):
            data.append({"b64_json": await encode_base64(await formats.convert(png, out.fmt, out.quality))})
    created = (
        job.finished_at.seconds if job.HasField("finished_at") and job.finished_at.seconds else time.time()
    )
    return web.json_response({"created": int(created), "data": data, "output_format": out.fmt})


async def multipart_form(request: web.Request) -> tuple[Body, dict[str, list[web.FileField]]]:
    reader = with_upload_limit(request)
    if not is_multipart(reader):
        raise invalid(
            "invalid_content_type",
            "Send this request as multipart/form-data with the image as a file field.",
        )
    fields, files = await read_form(reader)
    # gpt-image clients send one or several images as image[] (Open WebUI, LibreChat); the first
    # one is the picture to edit, as the mask applies to the first image at OpenAI.
    if "image[]" in files:
        files.setdefault("image", []).extend(files.pop("image[]"))
    return Body(typed_form(fields, FORM_INTS, FORM_NUMBERS)), files


async def image_file(
    files: dict[str, list[web.FileField]], name: str, required: bool, several: bool = False
) -> Source | None:
    found = files.get(name, [])
    if not found:
        if required:
            raise invalid(f"missing_{name}", f"Attach the {name} as a file field named '{name}'.", field=name)
        return None
    if len(found) > 1 and not several:
        raise invalid("too_many_images", f"Send one {name}.", field=name)
    if len(found) > MAX_EDIT_IMAGES:
        raise invalid("too_many_images", f"Send at most {MAX_EDIT_IMAGES} images in one edit.", field=name)
    data = await file_bytes(found[0])
    if not data:
        raise invalid(f"missing_{name}", f"The {name} file is empty.", field=name)
    return Source(data=data, filename=found[0].filename or f"{name}.png")


def _mask_from_openai(image: bytes, mask: bytes | None) -> bytes | None:
    """Our mask (white = repaint, as PNG) from OpenAI's: fully transparent pixels of the mask - or,
    without a mask, of the image itself - mark the area to edit. None: nothing to mask (the image
    has no transparent pixels), so the whole picture is reworked. Blocking: call in a thread."""
    if mask is None:
        im = open_image(image, "image")
        if not has_alpha(im):
            return None
        alpha = alpha_of(im)
        if alpha.getextrema()[0] != 0:
            return None
        return encode_png(transparent_to_white(alpha))
    m = open_image(mask, "mask")
    if not has_alpha(m):
        raise invalid(
            "invalid_mask",
            "The mask needs an alpha channel: make the area to edit fully transparent in a PNG.",
            field="mask",
        )
    if m.size != image_size(image, "image"):
        raise invalid(
            "mask_size_mismatch", "The mask must have the same width and height as the image.", field="mask"
        )
    return encode_png(transparent_to_white(alpha_of(m)))


# --- routes --------------------------------------------------------------------------------------


@routes.post("/v1/images/generations")
@openai_api
async def generations(request: web.Request) -> web.StreamResponse:
    principal = await caller(request)
    body = await read_body(request)
    out = output(body)
    model = model_name(body)
    no_stream(body)
    params = generation_params(params_body(body))
    job = await submit_job(request, principal, "txt2img", model, params)
    return await answer(request, principal, job, out)


@routes.post("/v1/images/edits")
@openai_api
async def edits(request: web.Request) -> web.StreamResponse:
    principal = await caller(request)
    body, files = await multipart_form(request)
    out = output(body)
    model = model_name(body)
    image = await image_file(files, "image", required=True, several=True)
    mask = await image_file(files, "mask", required=False)
    no_stream(body)
    if image is None or image.data is None:  # image_file(required=True) raises first; this narrows
        raise invalid("missing_image", "Attach the image as a file field named 'image'.", field="image")
    mask_png = await asyncio.to_thread(_mask_from_openai, image.data, mask.data if mask else None)
    params = edit_params(params_body(body))
    if mask_png is None:
        job = await submit_edit(request, principal, "img2img", model, params, image)
    else:
        mask_source = Source(data=mask_png, filename=mask.filename if mask else "mask.png")
        job = await submit_edit(request, principal, "inpaint", model, params, image, mask_source)
    return await answer(request, principal, job, out)


@routes.post("/v1/images/variations")
@openai_api
async def variations(request: web.Request) -> web.StreamResponse:
    principal = await caller(request)
    body, files = await multipart_form(request)
    out = output(body)
    model = model_name(body)
    image = await image_file(files, "image", required=True)
    no_stream(body)
    if image is None:  # image_file(required=True) raises first; this narrows the type
        raise invalid("missing_image", "Attach the image as a file field named 'image'.", field="image")
    params = edit_params(params_body(body, prompt_required=False), DEFAULT_EDIT_PROMPT)
    job = await submit_edit(request, principal, "variation", model, params, image)
    return await answer(request, principal, job, out)


async def _models(request: web.Request) -> list[inference_pb2.ModelInfo]:
    with user_errors("inference"):
        found = await request.app[CLIENTS].inference.ListModels(inference_pb2.ListModelsRequest())
    return list(found.models)


def _model(m: inference_pb2.ModelInfo) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": 0, "owned_by": "easel"}


@routes.get("/v1/models")
@openai_api
async def models(request: web.Request) -> web.StreamResponse:
    await caller(request)
    return web.json_response({"object": "list", "data": [_model(m) for m in await _models(request)]})


@routes.get("/v1/models/{model}")
@openai_api
async def model(request: web.Request) -> web.StreamResponse:
    await caller(request)
    wanted = request.match_info["model"]
    for m in await _models(request):
        if m.name == wanted:
            return web.json_response(_model(m))
    raise EaselError(
        "model_not_found",
        f"The model {wanted!r} does not exist; GET /v1/models lists the installed ones.",
        grpc.StatusCode.NOT_FOUND,
        field="model",
    )


@routes.get(signed.FILES_PATH + "/{name}")
@openai_api
async def signed_file(request: web.Request) -> web.StreamResponse:
    """An image behind a signed URL: no credentials, only a valid signature and expiry."""
    owner, image_id, fmt, quality, left = signed.verify(request)
    png = await read_image(request, common_pb2.Actor(user_id=owner, role="user"), image_id)
    body = await formats.convert(png, fmt, quality)
    return web.Response(
        body=body,
        content_type=formats.mime_type(fmt),
        headers={"Cache-Control": f"private, max-age={left}"},
    )


@routes.get("/v1/openapi.json")
@no_auth
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(documents.openai_document())
