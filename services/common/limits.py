"""Limits that more than one service enforces, declared once.

The gateway's public contract (its pydantic models, and the OpenAPI document generated from them)
states these numbers; gallery, inference and auth check them again where the data is owned. A
limit that depends on the model (sizes, steps, samplers) is not here: it comes from the model's
manifest on the volume.
"""

from __future__ import annotations

from typing import Final

# --- jobs (owned by inference) ------------------------------------------------------------------
JOB_KINDS: Final = ("txt2img", "img2img", "inpaint", "upscale", "variation")
EDIT_KINDS: Final = ("img2img", "inpaint", "upscale", "variation")
JOB_STATUSES: Final = ("queued", "running", "completed", "failed", "cancelled")
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
IMAGES_PER_JOB_MAX: Final = 8
PROMPT_MAX_CHARS: Final = 2000
# Seeds fit in 32 bits (what AUTOMATIC1111 and most UIs show); -1 asks for a random one.
SEED_MAX: Final = 2**32 - 1
SEED_RANDOM: Final = -1
GUIDANCE_MAX: Final = 30.0
MODEL_NAME_MAX_CHARS: Final = 200
SAMPLER_NAME_MAX_CHARS: Final = 100
IDEMPOTENCY_KEY_MAX_CHARS: Final = 200

# --- images (owned by gallery) ------------------------------------------------------------------
VISIBILITIES: Final = ("private", "unlisted", "public")
IMAGE_KINDS: Final = ("generated", "upload")
TITLE_MAX_CHARS: Final = 200
TAGS_MAX: Final = 20
TAG_MAX_CHARS: Final = 40
REASON_MAX_CHARS: Final = 1000
SEARCH_MAX_CHARS: Final = 200
IMAGE_ID_MAX_CHARS: Final = 200
SHARE_TOKEN_MAX_CHARS: Final = 200
PAGE_SIZE_MAX: Final = 100

# --- accounts (owned by auth) -------------------------------------------------------------------
USERNAME_MIN_CHARS: Final = 3
USERNAME_MAX_CHARS: Final = 32
EMAIL_MAX_CHARS: Final = 254
# argon2 takes any length, but hashing megabytes on request would be a cheap way to burn our CPU.
PASSWORD_MAX_CHARS: Final = 256
KEY_NAME_MAX_CHARS: Final = 64
KEY_SCOPES_MAX: Final = 20
# API keys' lifetime (`ttl_seconds`; 0 means the service's default). An operator may lower the
# longest with EASEL_AUTH_API_KEY_MAX_TTL_S, never raise it past this.
KEY_TTL_MIN_S: Final = 60
KEY_TTL_MAX_S: Final = 2 * 365 * 24 * 3600
# A login names an existing account (username or email): longer than any can be is a typo.
LOGIN_NAME_MAX_CHARS: Final = 320
LOGIN_PASSWORD_MAX_CHARS: Final = 1000
