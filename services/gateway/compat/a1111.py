"""An AUTOMATIC1111-compatible API: `/sdapi/v1/txt2img`, `/img2img`, `/progress`, `/interrupt`,
`/options` (GET and POST), `/png-info`, and the lists clients load before they generate
(`/sd-models`, `/samplers`, `/schedulers`, `/upscalers`, `/latent-upscale-modes`, `/sd-vae`,
`/sd-modules`, `/loras`, `/embeddings`, `/hypernetworks`, `/face-restorers`, `/realesrgan-models`,
`/prompt-styles`, `/scripts`, `/script-info`, `/extensions`, `/cmd-flags`, `/memory`), with its
document at `/sdapi/v1/openapi.json`.

Clients written for the web UI's API work unchanged (Open WebUI, SillyTavern, LibreChat, Dify,
webuiapi, the Photoshop plugin): same request fields, answers `{images: [base64], parameters:
<the request's A1111 fields>, info: "<JSON string with A1111's keys>"}`, errors in its FastAPI
shapes (422 `{"detail": [{loc, msg, type}]}` for bad input, `{"error", "detail", "body", "errors"}`
for the rest). Authentication as with `--api-auth`: HTTP Basic with username and password (checked
by auth's Login, with its throttling) or username and API key, or a bearer token. Bodies are JSON
with or without a Content-Type header (Dify sends none).

Where the studio differs:
- Options are kept per user, not per server (see a1111_options): one user's model switch does not
  change anyone else's. `sd_model_checkpoint` there, or in a request's `override_settings`, picks
  the model, by title or model_name.
- Each user has their own queue: /progress and /interrupt see only the caller's own current job
  (the oldest running one, else the oldest queued one); with nothing running /progress is idle.
- /interrupt cancels the job. The worker keeps no partial image of a cancelled job, so the pending
  txt2img answers 200 with `images: []` and `info` saying `interrupted: true` - what A1111 answers
  when it is interrupted before its first image is done.
- Absent `steps`, `cfg_scale`, `width`, `height` mean the model's defaults (the web UI's are 50,
  7 and 512x512, too big for some models); send them to be explicit.
- Sampler names may carry the schedule ("DPM++ 2M Karras"); `scheduler` values other than karras
  mean automatic, as A1111 treats names it does not know. "DPM++ SDE" runs as DPM++ 2M SDE, the
  nearest sampler installed here; `info` says which sampler ran.
- `mask_blur`, `inpainting_fill`, `inpaint_full_res`, `resize_mode`, `restore_faces`, `tiling`,
  `styles`, `subseed*`, `eta`, `s_*`, `script_args` and unknown fields are accepted and ignored;
  `enable_hr`, `script_name` and non-empty `alwayson_scripts` (features the studio lacks) are
  refused with 422. The lists of LoRAs, embeddings, VAEs and the like are empty: the studio does
  not offer them through this API.
- Images are always kept in the caller's gallery (`save_images` is ignored).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from easel.inference.v1 import inference_pb2
from services.common.errors import EaselError, invalid, unauthenticated
from services.inference.schedulers import A1111_SCHEDULERS, SAMPLERS, a1111_name, resolve_sampler

from ..api_edits import Source, submit_edit
from ..bodies import INT64_MAX, Body
from ..compat_common import (
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
    read_body,
    submit_job,
    wait_for_job,
    with_upload_limit,
)
from ..principal import Principal, check_scope, no_auth
from ..serialize import params as job_params
from . import a1111_options, documents, formats, pnginfo
from . import a1111_schemas as schemas

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
# A1111 sampler names this studio runs as the nearest sampler it has (the answer's info says which).
_NEAREST_SAMPLER = {"dpm++ sde": "dpmpp_2m_sde"}


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
    """The model named by override_settings.sd_model_checkpoint ("" when not named there)."""
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
    return a1111_options.model_key(title)


def sampler_of(name: str, scheduler: str) -> str:
    """Our sampler for an A1111 name, which may carry the schedule ("DPM++ 2M Karras") or get it in
    `scheduler`; schedules other than karras mean automatic (A1111 falls back for unknown ones)."""
    sched = "karras" if scheduler.strip().lower() == "karras" else "automatic"
    key = name.strip().lower()
    if key.endswith(" karras"):
        key, sched = key.removesuffix(" karras").strip(), "karras"
    key = _NEAREST_SAMPLER.get(key, key)
    try:
        return resolve_sampler(key, sched)
    except EaselError as exc:
        if exc.code == "unknown_sampler":
            exc.message = f"Sampler {name!r} not found; GET /sdapi/v1/samplers lists the ones here."
        exc.field = "sampler_name" if exc.field in ("sampler", "scheduler") else exc.field
        raise


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
        p.sampler = sampler_of(sampler, scheduler)
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


def echoed(body: Body, kind: str) -> dict[str, Any]:
    """`parameters` of the answer: the request's A1111 fields only. Clients send more (SillyTavern
    sends its own `url` and `auth`, credentials included), which A1111's models drop too."""
    known = schemas.TXT2IMG_FIELDS if kind == "txt2img" else schemas.IMG2IMG_FIELDS
    parameters = {k: v for k, v in body.data.items() if k in known}
    if kind != "txt2img" and body.data.get("include_init_images") is not True:
        parameters["init_images"] = None
        parameters["mask"] = None
    return parameters


async def answer(
    request: web.Request,
    principal: Principal,
    job: inference_pb2.Job,
    body: Body,
    kind: str,
    options: dict[str, Any],
) -> web.Response:
    """Waits for the job and answers as the web UI does. An interrupted (cancelled) job answers 200
    without images, as the web UI answers when interrupted before its first image."""
    job = await wait_for_job(request, principal, job.id)
    if job.status == "failed":
        raise job_failure(job)
    pngs = await job_images(request, principal, job) if job.status == "completed" else []
    images: list[str] = []
    if body.data.get("send_images") is not False:
        fmt, quality = a1111_options.samples_format(options)
        for png in pngs:
            images.append(await encode_base64(await formats.convert(png, fmt, quality)))
    return web.json_response(
        {"images": images, "parameters": echoed(body, kind), "info": json.dumps(info(job, body, pngs, kind))}
    )


async def generation_for(
    request: web.Request, principal: Principal, body: Body
) -> tuple[str, inference_pb2.GenerationParams, dict[str, Any]]:
    """Model, parameters and the caller's options: the model named in override_settings, else the
    caller's sd_model_checkpoint option, else the studio's default."""
    model, params = generation(body)
    options = await a1111_options.saved(request, principal)
    if model:
        # By title or model_name, with or without A1111's extension and hash; a name matching no
        # installed model goes on as sent, and inference answers 404 listing the installed ones.
        found = a1111_options.find_model(await a1111_options.installed_models(request), model)
        model = found.name if found is not None else model
    else:
        chosen = options.get("sd_model_checkpoint")
        model = chosen if isinstance(chosen, str) else ""
    return model, params, options


# --- routes --------------------------------------------------------------------------------------


@routes.post("/sdapi/v1/txt2img")
@a1111_api
async def txt2img(request: web.Request) -> web.StreamResponse:
    principal = await caller(request)
    body = await read_body(request)
    model, params, options = await generation_for(request, principal, body)
    job = await submit_job(request, principal, "txt2img", model, params)
    return await answer(request, principal, job, body, "txt2img", options)


@routes.post("/sdapi/v1/img2img")
@a1111_api
async def img2img(request: web.Request) -> web.StreamResponse:
    principal = await caller(request)
    body = await read_body(with_upload_limit(request))
    model, params, options = await generation_for(request, principal, body)
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
    return await answer(request, principal, job, body, kind, options)


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


@routes.get("/sdapi/v1/sd-models")
@a1111_api
async def sd_models(request: web.Request) -> web.StreamResponse:
    await caller(request)
    return web.json_response(
        [
            {
                # A1111's title is "<file> [<short hash>]"; lookups take it with or without the hash.
                "title": f"{m.name} [{m.sha256[:10]}]" if m.sha256 else m.name,
                "model_name": m.name,
                "hash": m.sha256[:10] if m.sha256 else None,
                "sha256": m.sha256 or None,
                "filename": m.name,
                "config": None,
            }
            for m in await a1111_options.installed_models(request)
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


@routes.get("/sdapi/v1/upscalers")
@a1111_api
async def upscalers(request: web.Request) -> web.StreamResponse:
    """ "None" (A1111's first entry) and the installed models that upscale (POST /api/v1/edits kind
    upscale; hires. fix and the extras API are not available here)."""
    await caller(request)
    found: list[dict[str, Any]] = [
        {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    ]
    for m in await a1111_options.installed_models(request):
        if "upscale" in m.kinds:
            found.append(
                {"name": m.name, "model_name": m.name, "model_path": None, "model_url": None, "scale": None}
            )
    return web.json_response(found)


def _empty_list(path: str, what: str) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await caller(request)
        return web.json_response([])

    handler.__name__ = handler.__qualname__ = path.rsplit("/", 1)[-1].replace("-", "_")
    handler.__doc__ = f"Always empty: {what}"
    routes.get(path)(a1111_api(handler))


for _path, _what in (
    ("/sdapi/v1/latent-upscale-modes", "hires. fix is not available here."),
    ("/sdapi/v1/sd-vae", "each model runs with its own VAE."),
    ("/sdapi/v1/sd-modules", "each model runs with its own modules (this list is Forge's)."),
    ("/sdapi/v1/loras", "LoRAs are not offered through this API."),
    ("/sdapi/v1/hypernetworks", "hypernetworks are not offered here."),
    ("/sdapi/v1/face-restorers", "face restoration is not offered here."),
    ("/sdapi/v1/realesrgan-models", "the extras upscalers are not offered here."),
    ("/sdapi/v1/prompt-styles", "saved styles are not offered here."),
    ("/sdapi/v1/script-info", "no scripts or extensions run here."),
    ("/sdapi/v1/extensions", "no extensions run here."),
):
    _empty_list(_path, _what)


@routes.get("/sdapi/v1/embeddings")
@a1111_api
async def embeddings(request: web.Request) -> web.StreamResponse:
    await caller(request)
    return web.json_response({"loaded": {}, "skipped": {}})


@routes.get("/sdapi/v1/scripts")
@a1111_api
async def scripts(request: web.Request) -> web.StreamResponse:
    # No scripts or extensions here; clients ask to find out which extensions to drive.
    await caller(request)
    return web.json_response({"txt2img": [], "img2img": []})


@routes.get("/sdapi/v1/cmd-flags")
@a1111_api
async def cmd_flags(request: web.Request) -> web.StreamResponse:
    """The few command-line flags clients look at, as this server would have them."""
    await caller(request)
    return web.json_response(
        {"api": True, "api_auth": None, "nowebui": True, "listen": True, "lowvram": False}
    )


@routes.get("/sdapi/v1/memory")
@a1111_api
async def memory(request: web.Request) -> web.StreamResponse:
    """The gateway runs no model: memory lives on the workers, which report it in their metrics."""
    await caller(request)
    unknown = {"error": "not reported here; see the workers' metrics"}
    return web.json_response({"ram": unknown, "cuda": unknown})


@routes.post("/sdapi/v1/refresh-checkpoints")
@routes.post("/sdapi/v1/refresh-vae")
@routes.post("/sdapi/v1/refresh-loras")
@a1111_api
async def refresh(request: web.Request) -> web.StreamResponse:
    """Nothing to do: workers pick up models added to the volume by themselves."""
    await caller(request)
    return web.json_response(None)


@routes.get("/sdapi/v1/options")
@a1111_api
async def get_options(request: web.Request) -> web.StreamResponse:
    principal = await caller(request)
    return web.json_response(await a1111_options.current(request, principal))


@routes.post("/sdapi/v1/options")
@a1111_api
async def set_options(request: web.Request) -> web.StreamResponse:
    """Saves the caller's options (see a1111_options); answers null, as A1111 does."""
    principal = await caller(request)
    body = await read_body(request)
    await a1111_options.update(request, principal, body.data)
    return web.json_response(None)


@routes.post("/sdapi/v1/png-info")
@a1111_api
async def png_info(request: web.Request) -> web.StreamResponse:
    """The parameters written in an image. Needs no credentials (it reads only the bytes sent, and
    the Photoshop plugin sends none); a caller who sends some is checked and may send big images."""
    reader = request
    if authorization(request)[0]:
        await caller(request)
        reader = with_upload_limit(request)
    body = await read_body(reader)
    try:
        data = await decode_base64(body.data.get("image"), "image")
        geninfo, items = await asyncio.to_thread(pnginfo.read, data)
    except EaselError as exc:
        if exc.http_status != 400:
            raise
        # "image" here is the field itself (elsewhere it is our name for init_images).
        return web.json_response(
            {"detail": [{"loc": ["body", "image"], "msg": exc.message, "type": exc.code}]}, status=422
        )
    return web.json_response({"info": geninfo, "items": items, "parameters": pnginfo.parse(geninfo)})


@routes.get("/sdapi/v1/openapi.json")
@no_auth
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(documents.a1111_document())


__all__ = ["routes"]
