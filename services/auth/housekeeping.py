"""Deletes what no longer matters: long-ended sessions and throttle rows whose window has passed.

Safe to run on every replica at once: the deletes are idempotent.
"""

from __future__ import annotations

import asyncio
import logging

from .store import Store
from .throttle import Throttle

log = logging.getLogger(__name__)

# Ended sessions are kept a day, so that "why was I signed out?" can still be answered from the table.
ENDED_SESSION_RETENTION_S = 24 * 3600.0


async def housekeep(db: Store, throttle: Throttle) -> None:
    sessions = await db.purge_sessions(ENDED_SESSION_RETENTION_S)
    throttles = await throttle.purge()
    if sessions or throttles:
        log.info("housekeeping", extra={"sessions_deleted": sessions, "throttle_rows_deleted": throttles})


async def housekeeping_loop(db: Store, throttle: Throttle, interval_s: float) -> None:
    while True:
        try:
            await housekeep(db, throttle)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database may be briefly away; the next round tries again.
            log.exception("housekeeping failed")
        await asyncio.sleep(interval_s)
