"""Brute-force protection for password checks, kept in Postgres so that it holds across replicas.

Three counters, each a fixed window that opens with its first failure:

- per (account, client address): an attempt past `auth_login_max_failures` locks that pair for the
  lockout time. This is the only lock an account has, so a stranger who guesses locks out only their own
  address, never the account's owner at theirs;
- per account alone (failures from addresses that never signed in to it): never a lock, only a
  delay before the next password check from such an address, doubling with each failure past
  `auth_login_max_failures` and capped at `auth_login_delay_max_s`. Guessing from many addresses
  gets slow; the owner's usual devices feel nothing;
- per client address across accounts: reaching `auth_login_max_failures_per_address` locks that
  address for accounts it never signed in to (password spraying from one place), while the people
  who do sign in from it (one NAT, one office) carry on.

An address "signed in to an account before" is remembered in `known_addresses` (a hash of the pair
and when it was last seen). A pair counts attempts, before the password is checked, so a burst of
parallel guesses gets no more checks than the limit; the other counters count failures. While a
pair or address is locked, no password is even checked, so a lock gives an attacker nothing to
learn. A success clears its own pair's count only: one valid account must not reset an attacker's
budget for guessing others, and a lucky guess must not reset the account's delay.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import asyncpg

from services.common.errors import EaselError, too_many

from .metrics import LOCKOUTS
from .policy import storable_key
from .settings import AuthSettings

ADDRESS_MAX = 128
# Past this many doublings the cap has long been reached; bounds the arithmetic.
_MAX_DOUBLINGS = 30

# $1 pair key, $2 address key (NULL without an address), $3 account key, $4 window seconds,
# $5 user id (NULL for an unknown account), $6 hash of (user id, address).
_CHECK = """
SELECT
    (SELECT ceil(extract(epoch FROM locked_until - now()))::int FROM login_throttle
     WHERE key = $1 AND locked_until > now()) AS pair_wait,
    (SELECT ceil(extract(epoch FROM locked_until - now()))::int FROM login_throttle
     WHERE key = $2 AND locked_until > now()) AS address_wait,
    (SELECT failures FROM login_throttle
     WHERE key = $3 AND window_start > now() - make_interval(secs => $4)) AS account_failures,
    EXISTS (SELECT 1 FROM known_addresses WHERE user_id = $5 AND address_hash = $6) AS known
"""

# Counts one attempt on a pair before its password is checked, so that a burst of parallel guesses
# gets no more checks than the limit. $1 pair key, $2 attempts allowed, $3 window seconds, $4 lockout
# seconds. A locked row is left as it is; the attempt past the limit sets the lock. Returns the
# seconds the pair stays locked, NULL when this attempt may go ahead.
_ATTEMPT = """
INSERT INTO login_throttle AS t (key, failures, window_start, locked_until)
VALUES ($1, 1, now(), CASE WHEN 1 > $2::int THEN now() + make_interval(secs => $4) END)
ON CONFLICT (key) DO UPDATE SET
    failures = CASE WHEN t.locked_until > now() THEN t.failures
                    WHEN t.window_start > now() - make_interval(secs => $3) THEN t.failures + 1
                    ELSE 1 END,
    window_start = CASE WHEN t.locked_until > now() THEN t.window_start
                        WHEN t.window_start > now() - make_interval(secs => $3) THEN t.window_start
                        ELSE now() END,
    locked_until = CASE WHEN t.locked_until > now() THEN t.locked_until
                        WHEN (CASE WHEN t.window_start > now() - make_interval(secs => $3)
                                   THEN t.failures + 1 ELSE 1 END) > $2::int
                        THEN now() + make_interval(secs => $4)
                        ELSE NULL END
RETURNING CASE WHEN t.locked_until > now() THEN ceil(extract(epoch FROM t.locked_until - now()))::int END
"""

# $1 key, $2 failures that lock (NULL: this counter never locks), $3 window seconds, $4 lockout
# seconds. Old values of the row (t.*) are read under its row lock, so concurrent failures all count.
_FAILED = """
INSERT INTO login_throttle AS t (key, failures, window_start, locked_until)
VALUES ($1, 1, now(), CASE WHEN 1 >= $2::int THEN now() + make_interval(secs => $4) END)
ON CONFLICT (key) DO UPDATE SET
    failures = CASE WHEN t.window_start > now() - make_interval(secs => $3) THEN t.failures + 1 ELSE 1 END,
    window_start = CASE WHEN t.window_start > now() - make_interval(secs => $3)
                        THEN t.window_start ELSE now() END,
    locked_until = CASE WHEN (CASE WHEN t.window_start > now() - make_interval(secs => $3)
                                   THEN t.failures + 1 ELSE 1 END) >= $2::int
                        THEN now() + make_interval(secs => $4) ELSE t.locked_until END
RETURNING coalesce(t.failures >= $2::int, false)
"""

_REMEMBER = """
INSERT INTO known_addresses (user_id, address_hash) VALUES ($1, $2)
ON CONFLICT (user_id, address_hash) DO UPDATE SET last_seen = now()
"""

_PURGE = """
DELETE FROM login_throttle
WHERE window_start < now() - make_interval(secs => $1)
  AND (locked_until IS NULL OR locked_until < now())
"""

_PURGE_KNOWN = "DELETE FROM known_addresses WHERE last_seen < now() - make_interval(secs => $1)"


@dataclass(frozen=True)
class Subject:
    """Whose failures count: the account (a user id, or "name:<what was typed>" when no such user
    exists), the client address when the caller knows it, and the user's id when there is one."""

    account: str
    address: str = ""
    user_id: uuid.UUID | None = None

    @property
    def _address(self) -> str:
        return storable_key(self.address[:ADDRESS_MAX])

    @property
    def _account(self) -> str:
        return storable_key(self.account)

    @property
    def pair_key(self) -> str:
        return f"pair:{self._account}|{self._address}"

    @property
    def account_key(self) -> str:
        return f"account:{self._account}"

    @property
    def address_key(self) -> str | None:
        return f"addr:{self._address}" if self._address else None

    @property
    def address_hash(self) -> bytes | None:
        if self.user_id is None or not self._address:
            return None
        return hashlib.sha256(f"{self.user_id}|{self._address}".encode()).digest()


@dataclass(frozen=True)
class Verdict:
    """May the password be checked: yes, from a known address or not, after `delay_s` seconds."""

    known: bool
    delay_s: float


def _throttled(seconds: int) -> EaselError:
    seconds = max(1, seconds)
    return too_many(
        "login_throttled",
        f"Too many failed sign-in attempts from your address; try again in {seconds} seconds.",
        retry_after=seconds,
    )


class Throttle:
    def __init__(self, pool: asyncpg.Pool, settings: AuthSettings) -> None:
        self.pool = pool
        self.window_s = float(settings.auth_login_window_s)
        self.lockout_s = float(settings.auth_login_lockout_s)
        self.max_pair = settings.auth_login_max_failures
        self.max_address = settings.auth_login_max_failures_per_address
        self.delay_base_s = settings.auth_login_delay_base_s
        self.delay_max_s = settings.auth_login_delay_max_s
        self.known_ttl_s = float(settings.auth_known_address_ttl_s)

    def delay_for(self, account_failures: int) -> float:
        """Seconds to wait before checking a password for an account with this many recent failures
        from unknown addresses: none for the first few, then doubling up to the cap."""
        past = account_failures - self.max_pair
        if past < 0:
            return 0.0
        return min(self.delay_max_s, self.delay_base_s * float(2 ** min(past, _MAX_DOUBLINGS)))

    async def check(self, subject: Subject) -> Verdict:
        """Raises `login_throttled` while the pair is locked, or the address is locked and the account
        never signed in from it; otherwise says how long to wait before checking the password."""
        row = await self.pool.fetchrow(
            _CHECK,
            subject.pair_key,
            subject.address_key,
            subject.account_key,
            self.window_s,
            subject.user_id,
            subject.address_hash,
        )
        if row is None:  # a SELECT without FROM always returns its one row
            raise RuntimeError("the throttle check returned no row")
        known = bool(row["known"])
        if row["pair_wait"] is not None:
            raise _throttled(int(row["pair_wait"]))
        if row["address_wait"] is not None and not known:
            raise _throttled(int(row["address_wait"]))
        wait = await self.pool.fetchval(
            _ATTEMPT, subject.pair_key, self.max_pair, self.window_s, self.lockout_s
        )
        if wait is not None:
            LOCKOUTS.labels("pair").inc()
            raise _throttled(int(wait))
        return Verdict(known, 0.0 if known else self.delay_for(int(row["account_failures"] or 0)))

    async def failed(self, subject: Subject, known: bool) -> None:
        """Counts a wrong password against the address and (from an unknown address) the account; the
        pair counted the attempt already, in `check`."""
        counters: list[tuple[str, str, int | None]] = []
        if subject.address_key is not None:
            counters.append(("addr", subject.address_key, self.max_address))
        if not known:
            counters.append(("account", subject.account_key, None))
        if not counters:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            for kind, key, limit in counters:
                locked = await conn.fetchval(_FAILED, key, limit, self.window_s, self.lockout_s)
                if locked:
                    LOCKOUTS.labels(kind).inc()

    async def succeeded(self, subject: Subject) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM login_throttle WHERE key = $1", subject.pair_key)
            if subject.user_id is not None and subject.address_hash is not None:
                await conn.execute(_REMEMBER, subject.user_id, subject.address_hash)

    async def purge(self) -> int:
        done = await self.pool.execute(_PURGE, self.window_s)
        known = await self.pool.execute(_PURGE_KNOWN, self.known_ttl_s)
        return int(done.split()[-1]) + int(known.split()[-1])
