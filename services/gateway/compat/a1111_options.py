"""AUTOMATIC1111's settings (`/sdapi/v1/options`), kept per user.

A1111 has one set of options for its whole server; clients read them before generating (Open WebUI,
SillyTavern) and switch the checkpoint by POSTing `sd_model_checkpoint`, often with every other
option they just read (Open WebUI sends the whole dict back). In a studio with many users one
person's switch must not change another's model, so each user has their own options, saved by auth
(`GetClientSettings`/`PutClientSettings`, face "a1111").

Saved and used: `sd_model_checkpoint` (the model of this user's A1111 generations unless a request's
`override_settings` names one), `samples_format` and `jpeg_quality` (how /txt2img and /img2img encode
their images). Saved and reported back, with no effect here: `sd_vae`, `CLIP_stop_at_last_layers`.
Every other key is ignored, as A1111 ignores what it does not know, so posting back the whole dict
works.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from easel.auth.v1 import auth_pb2
from easel.inference.v1 import inference_pb2
from services.common.errors import EaselError, invalid, not_found
from services.common.grpc_client import user_errors

from ..clients import CLIENTS
from ..principal import Principal
from . import formats

FACE = "a1111"
_TITLE_SUFFIX = re.compile(r"(\.safetensors|\.ckpt|\.pt|\.bin)?(\s*\[[0-9a-fA-F]+\])?\s*$")
SAMPLES_FORMATS = ("png", "jpg", "jpeg", "webp")


def model_key(title: str) -> str:
    """A checkpoint name without A1111's decorations: "name.safetensors [abc123]" -> "name"."""
    return _TITLE_SUFFIX.sub("", title.strip())


def find_model(models: list[inference_pb2.ModelInfo], wanted: str) -> inference_pb2.ModelInfo | None:
    """The installed model a client names by `title` or `model_name` (both are our name here, but
    clients also send them with A1111's file extension and hash)."""
    key = model_key(wanted)
    for m in models:
        if key in (m.name, model_key(m.name)):
            return m
    lowered = key.lower()
    for m in models:
        if m.name.lower() == lowered:
            return m
    return None


async def installed_models(request: web.Request) -> list[inference_pb2.ModelInfo]:
    with user_errors("inference"):
        found = await request.app[CLIENTS].inference.ListModels(inference_pb2.ListModelsRequest())
    return list(found.models)


def defaults(models: list[inference_pb2.ModelInfo]) -> dict[str, Any]:
    """The options a user who saved nothing sees: A1111's names and defaults for what exists here."""
    default = next((m.name for m in models if m.is_default), models[0].name if models else "")
    return {
        "sd_model_checkpoint": default,
        "sd_checkpoint_hash": None,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "samples_format": "png",
        "jpeg_quality": 80,
        "enable_pnginfo": True,
        "save_images_add_number": True,
        "sd_checkpoints_limit": 1,
        "eta_noise_seed_delta": 0,
        "show_progress_every_n_steps": 0,
        "live_previews_enable": False,
    }


async def saved(request: web.Request, principal: Principal) -> dict[str, Any]:
    with user_errors("auth"):
        found = await request.app[CLIENTS].auth.GetClientSettings(
            auth_pb2.GetClientSettingsRequest(user_id=principal.user_id, face=FACE)
        )
    value = json.loads(found.settings_json or "{}")
    return value if isinstance(value, dict) else {}


async def current(request: web.Request, principal: Principal) -> dict[str, Any]:
    """What GET /sdapi/v1/options answers this user: the defaults with their saved values on top."""
    options = defaults(await installed_models(request))
    options.update(await saved(request, principal))
    return options


def _wrong(name: str, what: str) -> EaselError:
    return invalid("invalid_option", f"'{name}' must be {what}.", field=name)


def _checked(name: str, value: object) -> object:
    if name == "samples_format":
        if not isinstance(value, str) or value.strip().lower() not in SAMPLES_FORMATS:
            raise _wrong(name, "png, jpg or webp")
        return value.strip().lower()
    if name == "jpeg_quality":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 100:
            raise _wrong(name, "a number from 1 to 100")
        return int(value)
    if name == "CLIP_stop_at_last_layers":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 12:
            raise _wrong(name, "a number from 1 to 12")
        return int(value)
    if name == "sd_vae":
        if not isinstance(value, str) or len(value) > 200 or "\x00" in value:
            raise _wrong(name, "a VAE name (at most 200 characters)")
        return value
    return value


async def update(request: web.Request, principal: Principal, changes: dict[str, Any]) -> None:
    """Saves the options this face keeps from a POSTed dict (the rest is ignored, as in A1111). An
    unknown checkpoint is refused (A1111 raises "model ... not found") and nothing is saved."""
    kept: dict[str, Any] = {}
    checkpoint = changes.get("sd_model_checkpoint")
    if checkpoint is not None:
        if not isinstance(checkpoint, str) or len(checkpoint) > 300:
            raise _wrong("sd_model_checkpoint", "a model title from /sdapi/v1/sd-models")
        models = await installed_models(request)
        found = find_model(models, checkpoint)
        if found is None:
            names = ", ".join(m.name for m in models) or "none"
            raise not_found("model_not_found", f"model {checkpoint!r} not found; installed: {names}.")
        kept["sd_model_checkpoint"] = found.name
    for name in ("sd_vae", "CLIP_stop_at_last_layers", "samples_format", "jpeg_quality"):
        if changes.get(name) is not None:
            kept[name] = _checked(name, changes[name])
    if not kept:
        return
    options = await saved(request, principal)
    if all(options.get(k) == v for k, v in kept.items()):
        return  # clients POST back what they read before every generation: no write then
    options.update(kept)
    with user_errors("auth"):
        await request.app[CLIENTS].auth.PutClientSettings(
            auth_pb2.PutClientSettingsRequest(
                user_id=principal.user_id, face=FACE, settings_json=json.dumps(options)
            )
        )


def samples_format(options: dict[str, Any]) -> tuple[str, int]:
    """(format, quality) the user's generations are encoded in."""
    fmt = formats.canonical(str(options.get("samples_format") or "png")) or "png"
    quality = options.get("jpeg_quality")
    return fmt, int(quality) if isinstance(quality, int) and not isinstance(quality, bool) else 80
