"""asyncpg pool bound to one schema, and a small migration runner for that schema.

Each service keeps numbered SQL files (`0001_init.sql`, ...) in its own `migrations/` folder. At
start it applies the ones not yet recorded in `<schema>.schema_migrations`, each in a transaction,
under an advisory lock so that replicas starting together do not race.

Every pool opened here is reported on /metrics (`easel_db_pool_size`, `easel_db_pool_in_use`,
`easel_db_pool_max`, by schema) until it is closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import SettingsError

log = logging.getLogger(__name__)


class PoolCollector(Collector):
    """Reads the open pools at scrape time, so the figures are never stale.

    Scrapes run on the metrics server's thread; the pool methods used only count the pool's
    connection holders, which is safe to do from there. asyncpg pools take no weak references, so
    pools are registered and unregistered explicitly (and a closed one is dropped on the next scrape).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: list[tuple[str, asyncpg.Pool]] = []

    def add(self, schema: str, pool: asyncpg.Pool) -> None:
        with self._lock:
            self._pools.append((schema, pool))

    def remove(self, pool: asyncpg.Pool) -> None:
        with self._lock:
            self._pools = [(s, p) for s, p in self._pools if p is not pool]

    def describe(self) -> Iterator[Metric]:
        # Declared up front, so the names are known (and checkable) before any pool exists.
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._pools = [(s, p) for s, p in self._pools if not p.is_closing()]
            pools = list(self._pools)
        size, in_use, most = self._families()
        totals: dict[str, list[int]] = {}
        for schema, pool in pools:
            row = totals.setdefault(schema, [0, 0, 0])
            opened = pool.get_size()
            row[0] += opened
            row[1] += max(0, opened - pool.get_idle_size())
            row[2] += pool.get_max_size()
        for schema, (opened, busy, cap) in sorted(totals.items()):
            size.add_metric([schema], opened)
            in_use.add_metric([schema], busy)
            most.add_metric([schema], cap)
        return iter((size, in_use, most))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "easel_db_pool_size", "Connections open in this process's pool, by schema.", labels=["schema"]
            ),
            GaugeMetricFamily(
                "easel_db_pool_in_use",
                "Connections of the pool checked out by a query or transaction, by schema.",
                labels=["schema"],
            ),
            GaugeMetricFamily(
                "easel_db_pool_max", "The most connections the pool may open, by schema.", labels=["schema"]
            ),
        )


POOLS = PoolCollector()
REGISTRY.register(POOLS)


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
            if pool is None:  # only None when created with init=False, which is not done here
                raise RuntimeError("asyncpg.create_pool returned no pool")
            POOLS.add(schema, pool)
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
            # `schema` is each service's own constant name ("auth", "gallery", "inference").
            listed = f'SELECT version FROM "{schema}".schema_migrations'  # nosec B608  # constant schema name
            done = {r["version"] for r in await conn.fetch(listed)}
            for version, sql in scripts:
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                    await conn.execute(sql)
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)',  # nosec B608  # as above
                        version,
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
        POOLS.remove(pool)
        await asyncio.wait_for(pool.close(), timeout=10)
