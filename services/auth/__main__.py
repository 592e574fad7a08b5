"""`python -m services.auth`: the auth gRPC service; `python -m services.auth admin ...`: the admin
role of accounts (see admin.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from easel.auth.v1 import auth_pb2_grpc
from services.common.config import load_settings
from services.common.db import database
from services.common.grpc_server import GrpcServer
from services.common.process import run, setup_process

from .admin import run_admin
from .housekeeping import housekeeping_loop
from .passwords import Passwords
from .servicer import AuthServicer
from .settings import AuthSettings
from .signup_limit import SignupLimit
from .store import Store
from .throttle import Throttle

MIGRATIONS = Path(__file__).parent / "migrations"


async def main() -> None:
    settings = load_settings(AuthSettings)
    setup_process("auth", settings)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            database(settings.database_url, "auth", MIGRATIONS, settings.db_pool_min, settings.db_pool_max)
        )
        passwords = stack.enter_context(Passwords(settings))
        db, throttle, signups = Store(pool), Throttle(pool, settings), SignupLimit(pool, settings)
        server = GrpcServer("auth", settings)
        server.add(
            auth_pb2_grpc.add_AuthServicer_to_server,
            AuthServicer(db, throttle, passwords, settings, signups),
            "easel.auth.v1.Auth",
        )
        server.watch_dependency("database", lambda: pool.fetchval("SELECT 1"))
        await server.start()
        chores = asyncio.create_task(
            housekeeping_loop(db, throttle, signups, settings.auth_housekeeping_interval_s),
            name="auth-housekeeping",
        )

        async def on_stopping() -> None:
            chores.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chores

        await server.serve_until_stopped(on_stopping)


if __name__ == "__main__":
    if sys.argv[1:2] == ["admin"]:
        sys.exit(asyncio.run(run_admin(sys.argv[2:])))
    run(main())
