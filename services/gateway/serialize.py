"""Protobuf messages → the answers of the public API, typed by the TypedDicts in models.py (which
the OpenAPI document is generated from): mypy holds each builder to its documented shape."""

from __future__ import annotations

import time
from typing import Any, cast

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic_core import from_json

from easel.auth.v1 import auth_pb2
from easel.gallery.v1 import gallery_pb2
from easel.inference.v1 import inference_pb2
from services.common import limits

from . import models
from .urls import image_file_url, shared_file_url

TERMINAL = limits.TERMINAL_STATUSES


def timestamp(msg: Any, name: str) -> str | None:
    """An RFC 3339 UTC time, or None when the field is unset."""
    if not msg.HasField(name):
        return None
    ts: Timestamp = getattr(msg, name)
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return rfc3339(ts.seconds, ts.nanos)


def rfc3339(seconds: int, nanos: int) -> str:
    """What protobuf's Timestamp.ToJsonString writes (the fraction in 0, 3, 6 or 9 digits), in a
    fifth of its time: every job and image answer carries a few of these."""
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{base}.{nanos // 1000:06d}Z"
    return f"{base}.{nanos:09d}Z"


def params(params_json: str) -> dict[str, Any]:
    if not params_json:
        return {}
    try:
        value = from_json(params_json)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def user(u: auth_pb2.User) -> models.User:
    return {
        "id": u.id,
        "username": u.username,
        "email": u.email,
        "role": u.role,
        "created_at": timestamp(u, "created_at"),
    }


def api_key(k: auth_pb2.ApiKey) -> models.ApiKey:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "scopes": list(k.scopes),
        "created_at": timestamp(k, "created_at"),
        "expires_at": timestamp(k, "expires_at"),
        "last_used_at": timestamp(k, "last_used_at"),
    }


def job(request: web.Request, j: inference_pb2.Job) -> models.Job:
    out: models.Job = {
        "id": j.id,
        "status": cast("models.JobStatus", j.status),
        "kind": j.kind,
        "model": j.model,
        "progress": {"step": j.step, "steps": j.steps},
        "images": [
            {
                "id": ref.id,
                "index": ref.index,
                "url": image_file_url(request, ref.id),
                "thumb_url": image_file_url(request, ref.id, thumb=True),
            }
            for ref in j.images
        ],
        "params": params(j.params_json),
        "cached": j.cached,
        "created_at": timestamp(j, "created_at"),
        "started_at": timestamp(j, "started_at"),
        "finished_at": timestamp(j, "finished_at"),
    }
    if j.status == "queued" and j.position > 0:
        out["position"] = j.position
    if j.error_code or j.error_message:
        out["error"] = {"code": j.error_code or "failed", "message": j.error_message}
    return out


def image(
    request: web.Request, img: gallery_pb2.Image, share_token: str | None = None, absolute: bool = True
) -> models.Image:
    if share_token:
        url = shared_file_url(request, share_token, absolute=absolute)
        thumb = shared_file_url(request, share_token, thumb=True, absolute=absolute)
    else:
        url = image_file_url(request, img.id, absolute=absolute)
        thumb = image_file_url(request, img.id, thumb=True, absolute=absolute)
    return {
        "id": img.id,
        "owner": {"id": img.owner_id, "username": img.owner_username},
        "visibility": img.visibility,
        "width": img.width,
        "height": img.height,
        "title": img.title,
        "tags": list(img.tags),
        "params": params(img.params_json),
        "kind": img.kind,
        "job_id": img.job_id or None,
        "content_type": img.content_type,
        "size_bytes": img.size_bytes,
        "url": url,
        "thumb_url": thumb,
        "created_at": timestamp(img, "created_at"),
        "likes": img.like_count,
        "liked": img.liked_by_actor,
    }


def image_page(
    request: web.Request, resp: gallery_pb2.ListImagesResponse, absolute: bool = True
) -> models.ImagePage:
    return {
        "items": [image(request, img, absolute=absolute) for img in resp.items],
        "next_cursor": resp.next_cursor or None,
    }


def model(m: inference_pb2.ModelInfo) -> models.Model:
    return {
        "name": m.name,
        "family": m.family,
        "kinds": list(m.kinds),
        "default": m.is_default,
        "default_width": m.default_width,
        "default_height": m.default_height,
        "default_steps": m.default_steps,
        "default_guidance": round(float(m.default_guidance), 4),
        "default_sampler": m.default_sampler,
        "min_size": m.min_size,
        "max_size": m.max_size,
        "samplers": list(m.samplers),
        "max_steps": m.max_steps,
        "size_multiple": m.size_multiple or 8,
        "sha256": m.sha256 or None,
    }


def empty_chunk() -> gallery_pb2.ImageChunk:
    """What a file stream that sent nothing is read as: no bytes, no ETag, PNG by default."""
    return gallery_pb2.ImageChunk()
