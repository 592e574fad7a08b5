"""Brute-force protection for password checks, kept in Postgres so that it holds across replicas.

Failures are counted per account and per client address in a fixed window that opens with the first
failure. Reaching the limit locks that account (or address) for the lockout time; while locked, no
password is even checked, so a locked account gives an attacker nothing to learn. A successful login
clears the account's count but not the address's: one valid account must not reset an attacker's
budget for guessing others.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.common.errors import too_many

from .metrics import LOCKOUTS
from .settings import AuthSettings

ADDRESS_MAX = 128

_LOCKED_FOR = """
SELECT ceil(extract(epoch FROM max(locked_until) - now()))::int
FROM login_throttle
WHERE key = ANY($1::text[]) AND locked_until > now()
"""

# $1 key, $2 failures that lock, $3 window seconds, $4 lockout seconds.
# Old values of the row (t.*) are read under its row lock, so concurrent failures all count.
_FAILED = """
INSERT INTO login_throttle AS t (key, failures, window_start, locked_until)
VALUES ($1, 1, now(), CASE WHEN 1 >= $2 THEN now() + make_interval(secs => $4) END)
ON CONFLICT (key) DO UPDATE SET
    failures = CASE WHEN t.window_start > now() - make_interval(secs => $3) THEN t.failures + 1 ELSE 1 END,
    window_start = CASE WHEN t.window_start > now() - make_interval(secs => $3)
                        THEN t.window_start ELSE now() END,
    locked_until = CASE WHEN (CASE WHEN t.window_start > now() - make_interval(secs => $3)
                                   THEN t.failures + 1 ELSE 1 END) >= $2
                        THEN now() + make_interval(secs => $4) ELSE t.locked_until END
RETURNING t.failures >= $2
"""

_PURGE = """
DELETE FROM login_throttle
WHERE window_start < now() - make_interval(secs => $1)
  AND (locked_until IS NULL OR locked_until < now())
"""


@dataclass(frozen=True)
class Subject:
    """Whose failures count: the account (a user id, or the name typed when no such user exists)
    and, when the caller knows it, the client address."""

    account: str
    address: str = ""

    @property
    def keys(self) -> list[str]:
        keys = [f"account:{self.account}"]
        if self.address:
            keys.append(f"addr:{self.address[:ADDRESS_MAX]}")
        return keys


class Throttle:
    def __init__(self, pool: asyncpg.Pool, settings: AuthSettings) -> None:
        self.pool = pool
        self.window_s = float(settings.auth_login_window_s)
        self.lockout_s = float(settings.auth_login_lockout_s)
        self.max_account = settings.auth_login_max_failures
        self.max_address = settings.auth_login_max_failures_per_address

    async def check(self, subject: Subject) -> None:
        """Raises `login_throttled` while the account or the address is locked."""
        wait = await self.pool.fetchval(_LOCKED_FOR, subject.keys)
        if wait is not None:
            seconds = max(1, int(wait))
            raise too_many(
                "login_throttled",
                f"Too many failed sign-in attempts; try again in {seconds} seconds.",
                retry_after=seconds,
            )

    async def failed(self, subject: Subject) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for key, limit in zip(subject.keys, (self.max_account, self.max_address), strict=False):
                locked = await conn.fetchval(_FAILED, key, limit, self.window_s, self.lockout_s)
                if locked:
                    LOCKOUTS.labels(key.split(":", 1)[0]).inc()

    async def succeeded(self, subject: Subject) -> None:
        await self.pool.execute("DELETE FROM login_throttle WHERE key = $1", subject.keys[0])

    async def purge(self) -> int:
        done = await self.pool.execute(_PURGE, self.window_s)
        return int(done.split()[-1])
