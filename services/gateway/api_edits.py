"""Transition shim: what the compatible APIs (compat_*.py, rewritten by another change) still import
from the old module. The REST handler lives in `api/edits.py`; delete this file once compat_* use
it directly."""

from __future__ import annotations

from easel.inference.v1 import inference_pb2

from .api.edits import DEFAULT_EDIT_PROMPT, Source, submit_edit
from .api_jobs import generation_params
from .bodies import Body


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


__all__ = ["DEFAULT_EDIT_PROMPT", "Source", "edit_params", "submit_edit"]
