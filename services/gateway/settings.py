"""Gateway settings: `EASEL_*` environment variables, validated at start."""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from services.common.config import CommonSettings


class GatewaySettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # The address people reach the studio at (https://art.example.org); used for absolute links
    # (share links, image URLs). Unset: taken from each request's Host and X-Forwarded-Proto.
    public_url: str | None = None
    # "auto": Secure when the request came over TLS or with X-Forwarded-Proto: https.
    cookie_secure: bool | Literal["auto"] = "auto"
    # Use the first X-Forwarded-For address as the client address (only behind a trusted proxy).
    trust_forwarded_for: bool = False
    # How long /readyz waits for each backend's health check.
    ready_timeout_s: float = Field(default=2.0, gt=0)
    # Seconds between keep-alive comments on an idle server-sent event stream.
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    # Open server-sent event streams one user may hold on one gateway process; the next one is a 429.
    sse_max_streams_per_user: int = Field(default=16, ge=1)
    # Seconds a connection may stay open without a whole request: a client that sends half a request
    # line or half its headers (or nothing, or nothing more after an answer) is cut off after this.
    http_idle_timeout_s: float = Field(default=15.0, gt=0, le=3600)
    # Largest request body accepted, in bytes.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Request rate limits (token buckets in this process): signed-in callers per user, anonymous
    # ones per client address. A page of thumbnails is a burst, hence the generous bursts.
    rate_limit_user_per_s: float = Field(default=50.0, gt=0)
    rate_limit_user_burst: int = Field(default=300, ge=1)
    rate_limit_client_per_s: float = Field(default=20.0, gt=0)
    rate_limit_client_burst: int = Field(default=200, ge=1)
    # Key for the signed, expiring image URLs of the OpenAI-compatible API (`response_format=url`),
    # which clients fetch without credentials. Unset: a random key per process, so such URLs stop
    # working when the gateway restarts and work only on the replica that made them; set the same
    # value (32 random bytes or more) on every replica.
    signed_url_secret: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)), min_length=16
    )
    # How long such a URL stays valid (OpenAI's last an hour).
    signed_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (for example https://art.example.org)")
        return value.rstrip("/")
