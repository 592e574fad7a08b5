"""SQL for the auth schema: users, sessions and API keys.

Text that no column can hold (NUL, a lone surrogate) is refused here with `invalid_field` before any
query, whatever the caller checked: the second line behind the service's own checks.

Every expiry is computed and compared with the database clock (`now()`), so replicas whose clocks
drift still agree on whether a token is alive.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.common.errors import conflict

from .policy import check_storable, storable_key

# Unique-index names from 0001_init.sql, mapped to the error a duplicate registration gets.
_DUPLICATE = {
    "users_username_lower_key": ("username_taken", "This username is taken; choose another one.", "username"),
    "users_email_lower_key": (
        "email_taken",
        "An account with this email address exists already; sign in, or use another address.",
        "email",
    ),
}


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    username: str
    email: str
    is_admin: bool
    created_at: datetime
    password_hash: str


@dataclass(frozen=True)
class Credential:
    """A session or API key row joined with its user, as Authenticate needs it."""

    id: uuid.UUID
    secret_hash: bytes
    expired: bool
    revoked: bool
    user_id: uuid.UUID
    username: str
    is_admin: bool
    scopes: list[str] | None  # None for a session: it may do everything


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None


_USER_COLUMNS = "id, username, email, is_admin, created_at, password_hash"
_KEY_COLUMNS = "id, name, prefix, scopes, created_at, expires_at, last_used_at"


def _user(row: asyncpg.Record) -> User:
    return User(**dict(row))


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(**dict(row))


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # Users

    async def create_user(self, username: str, email: str, password_hash: str) -> User:
        """A new account, never an administrator: that takes an explicit grant (`admin.py`)."""
        check_storable(username, "username")
        check_storable(email, "email")
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3) "
                f"RETURNING {_USER_COLUMNS}",  # nosec B608  # constant SQL only; values are $n parameters
                username,
                email,
                password_hash,
            )
        except asyncpg.UniqueViolationError as exc:
            code, message, field = _DUPLICATE.get(
                exc.constraint_name or "", ("username_taken", "This account exists already.", "username")
            )
            raise conflict(code, message, field) from None
        if row is None:  # INSERT ... RETURNING always returns the row
            raise RuntimeError("the user insert returned no row")
        return _user(row)

    async def user_by_id(self, user_id: uuid.UUID) -> User | None:
        row = await self.pool.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1",  # nosec B608  # constant SQL only; values are $n parameters
            user_id,
        )
        return _user(row) if row else None

    async def user_by_login(self, login: str) -> User | None:
        """By username, or by email when `login` has an @ (usernames never do)."""
        check_storable(login, "username")
        column = "email" if "@" in login else "username"
        row = await self.pool.fetchrow(
            # `column` is one of two literals chosen above.
            f"SELECT {_USER_COLUMNS} FROM users WHERE lower({column}) = lower($1)",  # nosec B608  # constant SQL only; values are $n parameters
            login,
        )
        return _user(row) if row else None

    async def replace_password_hash(self, user_id: uuid.UUID, old_hash: str, new_hash: str) -> bool:
        """Swaps the hash only if it is still `old_hash`, so a rehash cannot undo a password change."""
        done = await self.pool.execute(
            "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
            user_id,
            old_hash,
            new_hash,
        )
        return done.endswith(" 1")

    async def change_password(
        self, user_id: uuid.UUID, old_hash: str, new_hash: str, keep_session: uuid.UUID | None
    ) -> bool:
        """Sets the new hash and ends every other session, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.execute(
                "UPDATE users SET password_hash = $3, password_changed_at = now() "
                "WHERE id = $1 AND password_hash = $2",
                user_id,
                old_hash,
                new_hash,
            )
            if not done.endswith(" 1"):
                return False
            await conn.execute(
                "UPDATE sessions SET revoked_at = now() "
                "WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2",
                user_id,
                keep_session,
            )
            return True

    # Sessions

    async def create_session(
        self, session_id: uuid.UUID, user_id: uuid.UUID, digest: bytes, address: str, ttl_s: int
    ) -> datetime:
        expires: datetime = await self.pool.fetchval(
            "INSERT INTO sessions (id, user_id, secret_hash, client_address, expires_at) "
            "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING expires_at",
            session_id,
            user_id,
            digest,
            storable_key(address),
            float(ttl_s),
        )
        return expires

    async def session(self, session_id: uuid.UUID) -> Credential | None:
        row = await self.pool.fetchrow(
            "SELECT s.id, s.secret_hash, s.expires_at <= now() AS expired, "
            "s.revoked_at IS NOT NULL AS revoked, "
            "u.id AS user_id, u.username, u.is_admin, NULL::text[] AS scopes "
            "FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
            session_id,
        )
        return Credential(**dict(row)) if row else None

    async def revoke_session(self, session_id: uuid.UUID) -> None:
        await self.pool.execute(
            "UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", session_id
        )

    # API keys

    async def create_api_key(
        self,
        key_id: uuid.UUID,
        user_id: uuid.UUID,
        name: str,
        prefix: str,
        digest: bytes,
        scopes: list[str],
        ttl_s: int,
        max_keys: int,
    ) -> ApiKey | None:
        """The new key; None when the user holds `max_keys` live keys already.

        Raises `LookupError` when the user does not exist.
        """
        check_storable(name, "name")
        for scope in scopes:
            check_storable(scope, "scopes")
        async with self.pool.acquire() as conn, conn.transaction():
            # Locking the user row serialises concurrent creations, so the limit holds exactly.
            if await conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id) is None:
                raise LookupError(user_id)
            live = await conn.fetchval(
                "SELECT count(*) FROM api_keys "
                "WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()",
                user_id,
            )
            if live >= max_keys:
                return None
            row = await conn.fetchrow(
                "INSERT INTO api_keys (id, user_id, name, prefix, secret_hash, scopes, expires_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) "
                f"RETURNING {_KEY_COLUMNS}",  # nosec B608  # constant SQL only; values are $n parameters
                key_id,
                user_id,
                name,
                prefix,
                digest,
                scopes,
                float(ttl_s),
            )
            if row is None:  # INSERT ... RETURNING always returns the row
                raise RuntimeError("the API key insert returned no row")
            return _key(row)

    async def api_keys(self, user_id: uuid.UUID) -> list[ApiKey]:
        """Keys not revoked, newest first; expired ones stay listed until revoked so the user sees why."""
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL "
            "ORDER BY created_at DESC, id",  # nosec B608  # constant SQL only; values are $n parameters
            user_id,
        )
        return [_key(r) for r in rows]

    async def revoke_api_key(self, user_id: uuid.UUID, key_id: uuid.UUID) -> bool:
        """True when the user owns the key (revoking twice is fine)."""
        owner = await self.pool.fetchval(
            "WITH done AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE id = $2 AND user_id = $1 RETURNING 1) SELECT count(*) FROM done",
            user_id,
            key_id,
        )
        return bool(owner)

    async def api_key(self, key_id: uuid.UUID) -> Credential | None:
        row = await self.pool.fetchrow(
            "SELECT k.id, k.secret_hash, k.expires_at <= now() AS expired, "
            "k.revoked_at IS NOT NULL AS revoked, "
            "u.id AS user_id, u.username, u.is_admin, k.scopes "
            "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1",
            key_id,
        )
        return Credential(**dict(row)) if row else None

    async def api_key_in_use(self, key_id: uuid.UUID, digest: bytes) -> Credential | None:
        """`api_key`, and in the same statement the `touch_api_key` of a key that is live and whose
        secret matches `digest` (one round trip for Authenticate instead of two)."""
        row = await self.pool.fetchrow(
            "WITH touched AS (UPDATE api_keys SET last_used_at = now() "
            "WHERE id = $1 AND secret_hash = $2 AND revoked_at IS NULL AND expires_at > now() "
            "AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds') RETURNING id) "
            "SELECT k.id, k.secret_hash, k.expires_at <= now() AS expired, "
            "k.revoked_at IS NOT NULL AS revoked, "
            "u.id AS user_id, u.username, u.is_admin, k.scopes "
            "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1",
            key_id,
            digest,
        )
        return Credential(**dict(row)) if row else None

    async def touch_api_key(self, key_id: uuid.UUID) -> None:
        # At most one write a minute per key: last_used_at is for people, not for accounting.
        await self.pool.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE id = $1 "
            "AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')",
            key_id,
        )

    async def revoke_api_key_by_id(self, key_id: uuid.UUID) -> None:
        await self.pool.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
        )

    # Settings of the compatible client faces

    async def client_settings(self, user_id: uuid.UUID, face: str) -> str | None:
        """The saved JSON object (as text), or None when the user saved nothing for `face`."""
        value = await self.pool.fetchval(
            "SELECT settings::text FROM client_settings WHERE user_id = $1 AND face = $2", user_id, face
        )
        return str(value) if value is not None else None

    async def put_client_settings(self, user_id: uuid.UUID, face: str, settings_json: str) -> bool:
        """Saves the object; False when the user does not exist."""
        try:
            await self.pool.execute(
                "INSERT INTO client_settings (user_id, face, settings) VALUES ($1, $2, $3::jsonb) "
                "ON CONFLICT (user_id, face) DO UPDATE SET settings = EXCLUDED.settings, updated_at = now()",
                user_id,
                face,
                settings_json,
            )
        except asyncpg.ForeignKeyViolationError:
            return False
        return True

    # Housekeeping

    async def purge_sessions(self, older_than_s: float) -> int:
        """Deletes sessions that ended (expired or revoked) more than `older_than_s` ago."""
        done = await self.pool.execute(
            "DELETE FROM sessions WHERE expires_at < now() - make_interval(secs => $1) "
            "OR revoked_at < now() - make_interval(secs => $1)",
            older_than_s,
        )
        return int(done.split()[-1])
