"""An AUTOMATIC1111-compatible API subset: `/sdapi/v1/txt2img`, `/sdapi/v1/img2img`,
`/sdapi/v1/progress`, `/sdapi/v1/interrupt`, `/sdapi/v1/sd-models`, `/sdapi/v1/samplers` (and the
small `/sdapi/v1/schedulers`, `/sdapi/v1/scripts` and `GET /sdapi/v1/options` that clients such as
`webuiapi` look at).

Clients written for the web UI's API work unchanged: same request fields, answers `{images: [base64
PNG], parameters: <the request>, info: "<JSON string: seed, all_seeds, prompt, ...>"}`, errors in its
FastAPI shapes (422 `{"detail": [{loc, msg, type}]}` for bad input, `{"error", "detail", "body",
"errors"}` for the rest). Authentication as with `--api-auth`: HTTP Basic with username and
password (checked by auth's Login, with its throttling) or username and API key, or a bearer token.

Where the studio differs:
- Each user has their own queue: /progress and /interrupt see only the caller's own current job
  (the oldest running one, else the oldest queued one).
- Absent `steps`, `cfg_scale`, `width`, `height` mean the model's defaults (the web UI's are 50,
  7 and 512x512, too big for some models); send them to be explicit.
- `override_settings.sd_model_checkpoint` picks the model (a title from /sdapi/v1/sd-models).
- `mask_blur`, `inpainting_fill`, `inpaint_full_res`, `resize_mode`, `restore_faces`, `tiling`,
  `styles`, `subseed*`, `eta`, `s_*` are accepted and ignored; `enable_hr`, `script_name` and
  `alwayson_scripts` (features the studio lacks) are refused with 422.
- Images are always kept in the caller's gallery (`save_images` is ignored).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from easel.inference.v1 import inference_pb2
from services.common.errors import EaselError, invalid, unauthenticated
from services.common.grpc_client import user_errors
from services.inference.schedulers import A1111_SCHEDULERS, SAMPLERS, a1111_name, resolve_sampler

from .api_edits import Source, submit_edit
from .bodies import INT64_MAX, Body, read_json
from .clients import CLIENTS
from .compat_common import (
    alpha_of,
    authenticate_token,
    authorization,
    basic_credentials,
    basic_principal,
    cancel_job,
    decode_base64,
    encode_base64,
    encode_png,
    invert,
    job_failure,
    job_images,
    list_jobs,
    open_image,
    png_size,
    submit_job,
    wait_for_job,
    with_upload_limit,
)
from .principal import Principal, check_scope, no_auth
from .serialize import params as job_params

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACTIVE = ("queued", "running")
# Our field names as the web UI's API names them, for `loc` in validation errors.
_FIELDS = {
    "guidance": "cfg_scale",
    "sampler": "sampler_name",
    "n": "batch_size",
    "strength": "denoising_strength",
    "init_image_id": "init_images",
    "image": "init_images",
    "mask_image_id": "mask",
    "model": "override_settings",
}
_TITLE_SUFFIX = re.compile(r"(\.safetensors|\.ckpt)?(\s*\[[0-9a-fA-F]+\])?\s*$")


# --- errors --------------------------------------------------------------------------------------


def http_error(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """An HTTPException as the web UI's API answers it."""
    body = {"error": "HTTPException", "detail": detail, "body": "", "errors": f"{status}: {detail}"}
    return web.json_response(body, status=status, headers=headers)


def validation_error(message: str, field: str | None, code: str) -> web.Response:
    """A request validation error as FastAPI answers it."""
    loc: list[str] = ["body", _FIELDS.get(field, field)] if field else ["body"]
    return web.json_response({"detail": [{"loc": loc, "msg": message, "type": code}]}, status=422)


def from_easel_error(exc: EaselError) -> web.Response:
    status = exc.http_status
    if status == 400:
        return validation_error(exc.message, exc.field, exc.code)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Basic"
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return http_error(status, exc.message, headers or None)


_HTTP_DETAILS = {404: "Not Found", 405: "Method Not Allowed", 413: "Request Entity Too Large"}


def a1111_api(handler: Handler) -> Handler:
    """Authenticates the caller itself (the middleware knows no HTTP Basic) and answers errors in
    the web UI API's shapes."""

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
            if exc.status == 415:
                return validation_error("Send the body as JSON (application/json).", None, "json_invalid")
            return http_error(exc.status, _HTTP_DETAILS.get(exc.status, exc.reason))
        except ConnectionResetError:
            raise
        except Exception:
            log.exception("unexpected error", extra={"path": request.path, "method": request.method})
            return http_error(500, "Something went wrong on our side; try again.")

    return no_auth(wrapped)


async def caller(request: web.Request) -> Principal:
    """HTTP Basic (username + password or API key) or a bearer token; needs the generate scope."""
    scheme, value = authorization(request)
    if scheme == "basic":
        username, password = basic_credentials(value)
        principal = await basic_principal(request, username, password)
    elif scheme == "bearer" and value:
        principal = await authenticate_token(request, value)
    elif not scheme:
        raise unauthenticated("not_authenticated", "Not authenticated")
    else:
        raise unauthenticated(
            "bad_authorization", "Send HTTP Basic credentials, or 'Authorization: Bearer <API key>'."
        )
    check_scope(principal, "generate")
    return principal


# --- request fields ------------------------------------------------------------------------------


def _refuse_unsupported(body: Body) -> None:
    if body.data.get("enable_hr") is True:
        raise invalid(
            "unsupported_feature",
            "Hires. fix (enable_hr) is not available here; generate, then upscale with img2img or "
            "POST /api/v1/edits kind upscale.",
            field="enable_hr",
        )
    script = body.data.get("script_name")
    if script not in (None, ""):
        raise invalid("unknown_script", f"Script {script!r} not found", field="script_name")
    always_on = body.data.get("alwayson_scripts")
    if isinstance(always_on, dict) and always_on:
        name = next(iter(always_on))
        raise invalid("unknown_script", f"always on script {name} not found", field="alwayson_scripts")


def model_of(body: Body) -> str:
    """The model named by override_settings.sd_model_checkpoint ("" for the default)."""
    overrides = body.data.get("override_settings")
    if overrides is None:
        return ""
    if not isinstance(overrides, dict):
        raise invalid("invalid_field", "'override_settings' must be an object.", field="override_settings")
    title = overrides.get("sd_model_checkpoint")
    if title is None:
        return ""
    if not isinstance(title, str):
        raise invalid(
            "invalid_field", "'sd_model_checkpoint' must be a model title.", field="override_settings"
        )
    # The web UI's titles carry a file extension and a hash: "name.safetensors [abc123]".
    return _TITLE_SUFFIX.sub("", title.strip())


def generation(body: Body) -> tuple[str, inference_pb2.GenerationParams]:
    """The model and parameters of a txt2img or img2img request (ranges are checked by inference)."""
    _refuse_unsupported(body)
    p = inference_pb2.GenerationParams(
        prompt=body.string("prompt", max_len=100_000) or "",
        negative_prompt=body.string("negative_prompt", max_len=100_000) or "",
        width=body.integer("width", minimum=1) or 0,
        height=body.integer("height", minimum=1) or 0,
        steps=body.integer("steps", minimum=1) or 0,
    )
    cfg_scale = body.number("cfg_scale")
    if cfg_scale is not None:
        p.guidance = cfg_scale
        p.has_guidance = True
    sampler = body.string("sampler_name", max_len=100) or body.string("sampler_index", max_len=100) or ""
    scheduler = body.string("scheduler", max_len=100) or "automatic"
    if sampler:
        try:
            p.sampler = resolve_sampler(sampler, scheduler)
        except EaselError as exc:
            exc.field = "sampler_name" if exc.field == "sampler" else exc.field
            raise
    elif scheduler.strip().lower() not in A1111_SCHEDULERS:
        raise invalid(
            "unknown_scheduler",
            f"Schedule type {scheduler!r} is not available; use one of: {', '.join(A1111_SCHEDULERS)}.",
            field="scheduler",
        )
    batch_size = body.integer("batch_size", minimum=1, maximum=64) or 1
    n_iter = body.integer("n_iter", minimum=1, maximum=64) or 1
    p.n = batch_size * n_iter
    seed = body.integer("seed", minimum=-1, maximum=INT64_MAX)  # -1: random, here too
    if seed is not None:
        p.seed = seed
    return model_of(body), p


def _a1111_mask(data: bytes, inverted: bool) -> bytes:
    """Our mask (white = repaint) as the web UI reads one: an RGBA mask with any transparency is its
    alpha channel (opaque = repaint), anything else its grey levels. Blocking: call in a thread."""
    im = open_image(data, "mask")
    if im.mode == "RGBA" and alpha_of(im).getextrema() != (255, 255):
        mask = alpha_of(im)
    else:
        mask = im.convert("L")
    if inverted:
        mask = invert(mask)
    return encode_png(mask)


# --- answers -------------------------------------------------------------------------------------


def _timestamp(job: inference_pb2.Job) -> str:
    ts = job.started_at if job.HasField("started_at") and job.started_at.seconds else job.created_at
    when = datetime.datetime.fromtimestamp(ts.seconds or time.time(), tz=datetime.UTC)
    return when.strftime("%Y%m%d%H%M%S")


def info(job: inference_pb2.Job, body: Body, pngs: list[bytes], kind: str) -> dict[str, Any]:
    """The `info` object of a finished job, with the web UI's keys."""
    p = job_params(job.params_json)
    n = int(p.get("n") or 1)
    seed = int(p.get("seed") or 0)
    seeds = [seed + i for i in range(len(pngs) or n)]
    width, height = (png_size(pngs[0]) if pngs else None) or (
        int(p.get("width") or 0),
        int(p.get("height") or 0),
    )
    prompt, negative = str(p.get("prompt", "")), str(p.get("negative_prompt", ""))
    sampler, steps, guidance = a1111_name(str(p.get("sampler", ""))), p.get("steps"), p.get("guidance")
    strength = p.get("strength") if kind != "txt2img" else None
    count = len(seeds)
    line = (
        f"Steps: {steps}, Sampler: {sampler}, CFG scale: {guidance}, Seed: {{seed}}, Size: {width}x{height}"
    )
    line += f", Model: {job.model}"
    if strength is not None:
        line += f", Denoising strength: {strength}"
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    infotexts = [f"{prompt}{negative_line}\n" + line.format(seed=s) for s in seeds]
    return {
        "prompt": prompt,
        "all_prompts": [prompt] * count,
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * count,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * count,
        "subseed_strength": 0,
        "width": width,
        "height": height,
        "sampler_name": sampler,
        "cfg_scale": guidance,
        "steps": steps,
        "batch_size": body.integer("batch_size", minimum=1, maximum=64) or 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": job.model,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": _timestamp(job),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": kind == "inpaint",
        "version": "easel",
        "job_id": job.id,
        "interrupted": job.status == "cancelled",
    }


async def answer(
    request: web.Request, principal: Principal, job: inference_pb2.Job, body: Body, kind: str
) -> web.Response:
    """Waits for the job and answers as the web UI does. An interrupted (cancelled) job answers 200
    without images, as the web UI answers with what it had when interrupted."""
    job = await wait_for_job(request, principal, job.id)
    if job.status == "failed":
        raise job_failure(job)
    pngs = await job_images(request, principal, job) if job.status == "completed" else []
    send = body.data.get("send_images") is not False
    images = [await encode_base64(png) for png in pngs] if send else []
    parameters = dict(body.data)
    if "init_images" in parameters and body.data.get("include_init_images") is not True:
        parameters["init_images"] = None
        parameters["mask"] = None
    return web.json_response(
        {"images": images, "parameters": parameters, "info": json.dumps(info(job, body, pngs, kind))}
    )


# --- routes --------------------------------------------------------------------------------------


@routes.post("/sdapi/v1/txt2img")
@a1111_api
async def txt2img(request: web.Request) -> web.StreamResponse:
    principal = await caller(request)
    body = await read_json(request)
    model, params = generation(body)
    job = await submit_job(request, principal, "txt2img", model, params)
    return await answer(request, principal, job, body, "txt2img")


@routes.post("/sdapi/v1/img2img")
@a1111_api
async def img2img(request: web.Request) -> web.StreamResponse:
    principal = await caller(request)
    body = await read_json(with_upload_limit(request))
    model, params = generation(body)
    init_images = body.data.get("init_images")
    if not isinstance(init_images, list) or not init_images:
        raise invalid("missing_image", "Send the image to edit in init_images (base64).", field="init_images")
    if len(init_images) > 1:
        raise invalid("too_many_images", "Send one image in init_images.", field="init_images")
    image = Source(data=await decode_base64(init_images[0], "init_images"), filename="init.png")
    strength = body.number("denoising_strength", minimum=0, maximum=1)
    params.strength = 0.75 if strength is None else strength  # the web UI's default
    params.has_strength = True
    inverted = (body.integer("inpainting_mask_invert", minimum=0, maximum=1) or 0) == 1
    mask: Source | None = None
    raw_mask = body.data.get("mask")
    if raw_mask not in (None, ""):
        mask_bytes = await decode_base64(raw_mask, "mask")
        mask = Source(data=await asyncio.to_thread(_a1111_mask, mask_bytes, inverted), filename="mask.png")
    kind = "inpaint" if mask is not None else "img2img"
    job = await submit_edit(request, principal, kind, model, params, image, mask)
    return await answer(request, principal, job, body, kind)


def current_job(jobs: list[inference_pb2.Job]) -> inference_pb2.Job | None:
    """The caller's job the web UI would call current: the oldest running, else the oldest queued
    (`jobs` are newest first)."""
    active = [j for j in jobs if j.status in ACTIVE]
    running = [j for j in active if j.status == "running"]
    if running:
        return running[-1]
    return active[-1] if active else None


@routes.get("/sdapi/v1/progress")
@a1111_api
async def progress(request: web.Request) -> web.StreamResponse:
    principal = await caller(request)
    jobs = await list_jobs(request, principal)
    job = current_job(jobs)
    state: dict[str, Any] = {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": 0,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if job is None:
        return web.json_response(
            {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None}
        )
    done = job.step / job.steps if job.status == "running" and job.steps > 0 else 0.0
    eta = 0.0
    if done > 0 and job.HasField("started_at") and job.started_at.seconds:
        elapsed = max(0.0, time.time() - (job.started_at.seconds + job.started_at.nanos / 1e9))
        eta = elapsed / done - elapsed
    state.update(
        job=job.id,
        job_count=sum(1 for j in jobs if j.status in ACTIVE),
        job_timestamp=_timestamp(job),
        sampling_step=job.step,
        sampling_steps=job.steps,
    )
    position = f" (position {job.position} in the queue)" if job.status == "queued" and job.position else ""
    return web.json_response(
        {
            "progress": round(min(done, 1.0), 4),
            "eta_relative": round(max(eta, 0.0), 3),
            "state": state,
            "current_image": None,
            "textinfo": f"{job.status}{position}",
        }
    )


@routes.post("/sdapi/v1/interrupt")
@a1111_api
async def interrupt(request: web.Request) -> web.StreamResponse:
    """Cancels the caller's current job (as /progress reports it); nobody else's."""
    principal = await caller(request)
    job = current_job(await list_jobs(request, principal))
    if job is not None:
        await cancel_job(request, principal, job.id)
    return web.json_response({})


async def _models(request: web.Request) -> list[inference_pb2.ModelInfo]:
    with user_errors("inference"):
        found = await request.app[CLIENTS].inference.ListModels(inference_pb2.ListModelsRequest())
    return list(found.models)


@routes.get("/sdapi/v1/sd-models")
@a1111_api
async def sd_models(request: web.Request) -> web.StreamResponse:
    await caller(request)
    return web.json_response(
        [
            {
                "title": m.name,
                "model_name": m.name,
                "hash": None,
                "sha256": None,
                "filename": m.name,
                "config": None,
            }
            for m in await _models(request)
        ]
    )


@routes.get("/sdapi/v1/samplers")
@a1111_api
async def samplers(request: web.Request) -> web.StreamResponse:
    await caller(request)
    return web.json_response(
        [
            {
                "name": s.label,
                "aliases": [s.name],
                "options": {"scheduler": "karras"} if s.name.endswith("_karras") else {},
            }
            for s in SAMPLERS.values()
        ]
    )


@routes.get("/sdapi/v1/schedulers")
@a1111_api
async def schedulers(request: web.Request) -> web.StreamResponse:
    await caller(request)
    return web.json_response(
        [
            {
                "name": name,
                "label": name.capitalize(),
                "aliases": None,
                "default_rho": -1,
                "need_inner_model": False,
            }
            for name in A1111_SCHEDULERS
        ]
    )


@routes.get("/sdapi/v1/scripts")
@a1111_api
async def scripts(request: web.Request) -> web.StreamResponse:
    # No scripts or extensions here; clients ask to find out which extensions to drive.
    await caller(request)
    return web.json_response({"txt2img": [], "img2img": []})


@routes.get("/sdapi/v1/options")
@a1111_api
async def options(request: web.Request) -> web.StreamResponse:
    await caller(request)
    default = next((m.name for m in await _models(request) if m.is_default), "")
    return web.json_response({"sd_model_checkpoint": default, "samples_format": "png"})


__all__ = ["routes"]
