"""Request rate limits: a token bucket per signed-in user and one per anonymous client address.

The buckets live in this process, so with several gateway replicas each enforces its own share;
that bounds abuse per replica without a shared store on the hot path of every request.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from aiohttp import web

from services.common.errors import too_many

from .principal import PRINCIPAL
from .state import state_of
from .urls import client_address

# Probes, scrapes and static files are never limited: they are cheap and a probe must not fail.
EXEMPT_PREFIXES = ("/healthz", "/readyz", "/metrics", "/static/", "/favicon")
MAX_KEYS = 100_000


class TokenBuckets:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """Takes one token for `key`; 0 when allowed, else the seconds until one is there."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > MAX_KEYS:
            self._buckets.popitem(last=False)  # the least recently seen key
        return wait


def check(request: web.Request) -> None:
    """Raises `rate_limited` (429 with Retry-After) when the caller is over its limit."""
    if request.path.startswith(EXEMPT_PREFIXES):
        return
    principal = request.get(PRINCIPAL)
    if principal is not None:
        wait = state_of(request).user_buckets.take(principal.user_id)
    else:
        wait = state_of(request).client_buckets.take(client_address(request))
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise too_many(
            "rate_limited", f"Too many requests; slow down and try again in {seconds} seconds.", seconds
        )
