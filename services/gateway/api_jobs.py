"""Transition shim: what the compatible APIs (compat_*.py, rewritten by another change) still import
from the old module. The REST handlers live in `api/`; delete this file once compat_* use
`api.jobs`, `models.GenerationRequest` and `state.GatewayState.shutting_down`."""

from __future__ import annotations

import asyncio

from aiohttp import web

from easel.inference.v1 import inference_pb2

from .bodies import INT64_MAX, Body

# The same Event as app[STATE].shutting_down (create_app sets both).
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)


def generation_params(body: Body) -> inference_pb2.GenerationParams:
    """Types are checked here; ranges (which depend on the model) by inference."""
    prompt = body.string("prompt", required=True, max_len=100_000, allow_empty=False)
    p = inference_pb2.GenerationParams(
        prompt=prompt or "",
        negative_prompt=body.string("negative_prompt", max_len=100_000) or "",
        # 0 means "the model default" on the wire, so an explicit value starts at 1.
        width=body.integer("width", minimum=1) or 0,
        height=body.integer("height", minimum=1) or 0,
        steps=body.integer("steps", minimum=1) or 0,
        sampler=body.string("sampler", max_len=100) or "",
        n=body.integer("n", minimum=1) or 0,
    )
    guidance = body.number("guidance")
    if guidance is not None:
        p.guidance = guidance
        p.has_guidance = True
    seed = body.integer("seed", minimum=-1, maximum=INT64_MAX)  # -1: random, as in AUTOMATIC1111
    if seed is not None:
        p.seed = seed
    return p
