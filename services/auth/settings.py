"""Settings of the auth service, all from `EASEL_*` environment variables."""

from __future__ import annotations

import uuid

from pydantic import Field, ValidationInfo, field_validator

from services.common import limits
from services.common.config import DatabaseSettings


class AuthSettings(DatabaseSettings):
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    metrics_port: int = Field(default=9101, ge=0, le=65535)

    # Comma-separated account ids (UUIDs) that have the admin role besides the accounts granted it
    # with `python -m services.auth admin grant <username>`. Ids, not names: an id is made by the
    # server at sign-up, so nobody can sign up into this list.
    auth_admin_ids: str = ""
    # Removed (it named usernames, so whoever signed up first with a listed name became an admin);
    # set, it stops the service with what to do instead.
    auth_admin_users: str = ""

    auth_session_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    # Lifetime of an API key created without an explicit ttl, and the longest one may ask for (at
    # most the documented limit in services/common/limits.py: this can only lower it).
    auth_api_key_max_ttl_s: int = Field(
        default=limits.KEY_TTL_MAX_S, ge=limits.KEY_TTL_MIN_S, le=limits.KEY_TTL_MAX_S
    )
    auth_api_key_ttl_s: int = Field(default=90 * 24 * 3600, ge=limits.KEY_TTL_MIN_S)
    auth_max_api_keys: int = Field(default=50, ge=1)

    auth_password_min_length: int = Field(default=10, ge=6, le=128)

    # Brute-force protection (see throttle.py): this many failures within the window lock one
    # (account, client address) pair, or one address for the accounts never signed in from it, for
    # the lockout time. Addresses get more room: many people share one NAT. The account alone is
    # never locked: past auth_login_max_failures failures from unknown addresses, each further
    # sign-in from an unknown address waits base x 2^n seconds, at most the cap.
    auth_login_max_failures: int = Field(default=5, ge=1)
    auth_login_max_failures_per_address: int = Field(default=50, ge=1)
    auth_login_window_s: int = Field(default=900, ge=1)
    auth_login_lockout_s: int = Field(default=900, ge=1)
    auth_login_delay_base_s: float = Field(default=0.5, ge=0, le=60)
    auth_login_delay_max_s: float = Field(default=4.0, ge=0, le=60)
    # How long an address that signed in to an account stays "known" to it after its last sign-in.
    auth_known_address_ttl_s: int = Field(default=180 * 24 * 3600, ge=60)

    # argon2id cost; the defaults are argon2-cffi's (RFC 9106 low-memory profile). Tests lower them.
    auth_argon2_time_cost: int = Field(default=3, ge=1)
    auth_argon2_parallelism: int = Field(default=4, ge=1)
    auth_argon2_memory_kib: int = Field(default=65536, ge=8)
    # Threads that hash passwords; bound the memory argon2 can take at once. Sign-ups have their
    # own, so that a flood of them cannot starve sign-ins of hashing capacity.
    auth_hash_workers: int = Field(default=4, ge=1, le=64)
    auth_signup_hash_workers: int = Field(default=1, ge=1, le=64)
    # Accounts one client address may create per window (callers that pass no address: unlimited).
    auth_signup_per_address: int = Field(default=10, ge=1)
    auth_signup_window_s: int = Field(default=3600, ge=1)

    # How often expired sessions and stale throttle rows are deleted.
    auth_housekeeping_interval_s: float = Field(default=3600.0, gt=0)

    # Field validators (not a model validator) so that a bad value is reported under its own name.
    @field_validator("auth_api_key_ttl_s")
    @classmethod
    def _ttl_within_max(cls, value: int, info: ValidationInfo) -> int:
        longest = info.data.get("auth_api_key_max_ttl_s")
        if longest is not None and value > longest:
            raise ValueError(f"must not exceed EASEL_AUTH_API_KEY_MAX_TTL_S ({longest})")
        return value

    @field_validator("auth_argon2_memory_kib")
    @classmethod
    def _memory_fits_lanes(cls, value: int, info: ValidationInfo) -> int:
        lanes = info.data.get("auth_argon2_parallelism")
        if lanes is not None and value < 8 * lanes:
            raise ValueError(f"must be at least 8 x EASEL_AUTH_ARGON2_PARALLELISM ({8 * lanes})")
        return value

    @field_validator("auth_admin_users")
    @classmethod
    def _admin_users_removed(cls, value: str) -> str:
        if value.strip():
            raise ValueError(
                "no longer supported: a username list let whoever signed up first with a listed name "
                "become an admin. Unset it, and grant the role to an existing account with "
                "`python -m services.auth admin grant <username>` (or list account ids in "
                "EASEL_AUTH_ADMIN_IDS)"
            )
        return value

    @field_validator("auth_admin_ids")
    @classmethod
    def _admin_ids_are_uuids(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                try:
                    uuid.UUID(item.strip())
                except ValueError:
                    raise ValueError(
                        f"{item.strip()!r} is not an account id; list account ids (UUIDs, as "
                        "`python -m services.auth admin list` shows them), separated by commas"
                    ) from None
        return value

    @property
    def admin_ids(self) -> frozenset[uuid.UUID]:
        return frozenset(uuid.UUID(i.strip()) for i in self.auth_admin_ids.split(",") if i.strip())
