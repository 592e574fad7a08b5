"""Prometheus metrics of the auth service; every label has a small fixed set of values."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.common.metrics import LATENCY_BUCKETS

# outcome: success | invalid_credentials | throttled | invalid_request
LOGINS = Counter("easel_auth_logins", "Login attempts, by outcome.", ["outcome"])
# outcome: success | <error code>, from the fixed set registration can fail with
REGISTRATIONS = Counter("easel_auth_registrations", "Registration attempts, by outcome.", ["outcome"])
# kind: session | api_key | unknown; outcome: ok | invalid_token | session_expired | api_key_expired
AUTHENTICATIONS = Counter(
    "easel_auth_authentications", "Authenticate calls, by credential kind and outcome.", ["kind", "outcome"]
)
AUTHENTICATE_LATENCY = Histogram(
    "easel_auth_authenticate_latency_seconds",
    "Time to authenticate one token or API key, by credential kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
LOCKOUTS = Counter(
    "easel_auth_lockouts",
    "(Account, address) pairs (scope pair) or client addresses (addr) locked after too many failures.",
    ["scope"],
)
