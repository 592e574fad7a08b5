"""Inference: the job api (`api/`), the worker (`worker/`) and the engine they share (`engine/`).

transformers warns on import, once per process, that it has no torchvision and falls back to PIL
for image processors Easel never uses; a studio's start-up should say only what matters, so its
library-level warnings are off unless TRANSFORMERS_VERBOSITY says otherwise. Load failures still
reach the user as errors: the engine reports them itself.
"""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
