"""Limits shared across services and the documents that describe them (one module, so that what a
service enforces and what the OpenAPI document and README say cannot drift apart).

Only the auth service's limits are here so far; other services' limits join them.
"""

from __future__ import annotations

# API keys: the lifetime one may ask for (`ttl_seconds`; 0 means the service's default), in seconds.
# An operator may lower the longest with EASEL_AUTH_API_KEY_MAX_TTL_S, never raise it past this.
API_KEY_TTL_MIN_S = 60
API_KEY_TTL_MAX_S = 2 * 365 * 24 * 3600
# Characters in an API key's name (after trimming spaces).
API_KEY_NAME_MAX = 64
