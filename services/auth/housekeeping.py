"""Deletes what no longer matters: long-ended sessions, throttle and sign-up rows whose window has
passed, and addresses not seen for long.

Safe to run on every replica at once: the deletes are idempotent.
"""

from __future__ import annotations

import asyncio
import logging

from .signup_limit import SignupLimit
from .store import Store
from .throttle import Throttle

log = logging.getLogger(__name__)

# Ended sessions are kept a day, so that "why was I signed out?" can still be answered from the table.
ENDED_SESSION_RETENTION_S = 24 * 3600.0


async def housekeep(db: Store, throttle: Throttle, signups: SignupLimit | None = None) -> None:
    sessions = await db.purge_sessions(ENDED_SESSION_RETENTION_S)
    throttles = await throttle.purge() + (await signups.purge() if signups else 0)
    if sessions or throttles:
        log.info("housekeeping", extra={"sessions_deleted": sessions, "throttle_rows_deleted": throttles})


async def housekeeping_loop(db: Store, throttle: Throttle, signups: SignupLimit, interval_s: float) -> None:
    while True:
        try:
            await housekeep(db, throttle, signups)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database may be briefly away; the next round tries again.
            log.exception("housekeeping failed")
        await asyncio.sleep(interval_s)
