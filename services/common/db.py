"""asyncpg pool bound to one schema, and a small migration runner for that schema.

Each service keeps numbered SQL files (`0001_init.sql`, ...) in its own `migrations/` folder. At
start it applies the ones not yet recorded in `<schema>.schema_migrations`, each in a transaction,
under an advisory lock so that replicas starting together do not race.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from .config import SettingsError

log = logging.getLogger(__name__)


def _redact(dsn: str) -> str:
    # Keep host and database, drop credentials.
    if "@" in dsn:
        scheme, rest = dsn.split("://", 1) if "://" in dsn else ("", dsn)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return dsn


async def connect_pool(
    dsn: str, schema: str, min_size: int = 1, max_size: int = 10, wait_s: float = 15.0
) -> asyncpg.Pool:
    """A pool whose connections use `schema`; retries for `wait_s`, then stops the process."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                server_settings={"search_path": f"{schema},public", "application_name": f"easel-{schema}"},
                command_timeout=30,
                timeout=5,
            )
            assert pool is not None
            return pool
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            # A malformed URL (asyncpg raises ValueError for a bad port) will not heal by waiting.
            hopeless = (
                asyncpg.InvalidPasswordError
                | asyncpg.InvalidCatalogNameError
                | asyncpg.InvalidAuthorizationSpecificationError
                | asyncpg.ClientConfigurationError
                | ValueError
            )
            if isinstance(exc, hopeless) or time.monotonic() > deadline:
                raise SettingsError(
                    "EASEL_DATABASE_URL",
                    f"cannot connect to {_redact(dsn)} ({type(exc).__name__}: {exc}); "
                    "start Postgres or point EASEL_DATABASE_URL at a reachable database",
                ) from None
            await asyncio.sleep(0.5)


async def migrate(pool: asyncpg.Pool, schema: str, folder: Path) -> list[str]:
    """Applies the SQL files in `folder` not yet applied to `schema`; returns the versions applied."""
    scripts = await asyncio.to_thread(lambda: [(p.stem, p.read_text()) for p in sorted(folder.glob("*.sql"))])
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        # hashtext keeps one lock per schema; the lock is released with the session-level unlock.
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"easel-migrate-{schema}")
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
            }
            for version, sql in scripts:
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                    await conn.execute(sql)
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', version
                    )
                log.info("migration applied", extra={"schema": schema, "version": version})
                applied_now.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"easel-migrate-{schema}")
    return applied_now


@asynccontextmanager
async def database(
    dsn: str, schema: str, migrations: Path, min_size: int = 1, max_size: int = 10
) -> AsyncIterator[asyncpg.Pool]:
    """A migrated pool for `schema`, closed on exit (use with an AsyncExitStack)."""
    pool = await connect_pool(dsn, schema, min_size, max_size)
    try:
        await migrate(pool, schema, migrations)
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)
