"""How many accounts one client address may create per window, kept in Postgres (holds across replicas).

Counted before the password is hashed, so that a refused sign-up costs one row update and no CPU;
sign-ups that fail the cheap checks first (a malformed name, email or password) do not count. A
caller that passes no address (an internal tool) is not limited.
"""

from __future__ import annotations

import asyncpg

from services.common.errors import too_many

from .policy import storable_key
from .settings import AuthSettings
from .throttle import ADDRESS_MAX

# $1 address, $2 window seconds. Returns the count in the window, this sign-up included, and the
# seconds until the window closes. The old row is read under its row lock, so concurrent sign-ups
# all count.
_TAKE = """
INSERT INTO signup_throttle AS t (address, signups, window_start) VALUES ($1, 1, now())
ON CONFLICT (address) DO UPDATE SET
    signups = CASE WHEN t.window_start > now() - make_interval(secs => $2) THEN t.signups + 1 ELSE 1 END,
    window_start = CASE WHEN t.window_start > now() - make_interval(secs => $2)
                        THEN t.window_start ELSE now() END
RETURNING signups, ceil(extract(epoch FROM window_start + make_interval(secs => $2) - now()))::int AS wait
"""

_PURGE = "DELETE FROM signup_throttle WHERE window_start < now() - make_interval(secs => $1)"


class SignupLimit:
    def __init__(self, pool: asyncpg.Pool, settings: AuthSettings) -> None:
        self.pool = pool
        self.limit = settings.auth_signup_per_address
        self.window_s = float(settings.auth_signup_window_s)

    async def take(self, address: str) -> None:
        """Counts one sign-up from `address`; raises `too_many_signups` past the limit."""
        address = storable_key(address.strip()[:ADDRESS_MAX])
        if not address:
            return
        row = await self.pool.fetchrow(_TAKE, address, self.window_s)
        if row is None:  # INSERT ... RETURNING always returns the row
            raise RuntimeError("the sign-up count returned no row")
        if row["signups"] > self.limit:
            seconds = max(1, int(row["wait"]))
            raise too_many(
                "too_many_signups",
                f"Too many accounts were created from your address; try again in {seconds} seconds, "
                "or sign in to an account you have.",
                retry_after=seconds,
            )

    async def purge(self) -> int:
        done = await self.pool.execute(_PURGE, self.window_s)
        return int(done.split()[-1])
