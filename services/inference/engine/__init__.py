"""The generation engine, one module per model family behind one `Family` interface.

- requests.py: GenerationRequest, validation, output sizes (no torch; the job API can import it)
- family.py:   the Family interface and LoadedModel; which module serves which manifest family
- unet.py:     SD 1.x/2.x and SDXL (and their turbo variants)
- cache.py:    the model cache (LRU) within the memory budget, out-of-memory on load
- batching.py: one pipeline call per batch, bucket padding, out-of-memory halving
- warmup.py:   acceleration and compiled warm-up at load
- stages.py:   spans for prompt encoding, denoising and VAE decode
- core.py:     the Engine that joins them

torch and diffusers are imported lazily: importing this package loads neither.
"""

from __future__ import annotations

from ..pngmeta import encode_png, read_png_params
from .core import Engine
from .requests import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    Cancelled,
    GenerationRequest,
    effective_strength,
    output_size,
    validate_request,
)

__all__ = [
    "MAX_GUIDANCE",
    "MAX_IMAGES",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "Cancelled",
    "Engine",
    "GenerationRequest",
    "effective_strength",
    "encode_png",
    "output_size",
    "read_png_params",
    "validate_request",
]
