"""`python -m services.migrate [schema ...]`: migrate the auth, gallery and inference schemas.

Reads `EASEL_DATABASE_URL` (and `EASEL_LOG_LEVEL`); logs one JSON line per schema and exits 0 when
every schema is up to date. A database that cannot be reached within `--wait-s` seconds, or a
migration that fails, stops the process with a non-zero status and a line that says why (a Kubernetes
Job then retries it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from pydantic import Field

import services
from services.common.config import DEFAULT_DATABASE_URL, CommonSettings, load_settings
from services.common.db import connect_pool, migrate
from services.common.logs import setup_logging

log = logging.getLogger("services.migrate")

# In dependency order; each schema belongs to the service of the same name.
SCHEMAS: tuple[str, ...] = ("auth", "gallery", "inference")


class MigrateSettings(CommonSettings):
    database_url: str = DEFAULT_DATABASE_URL
    # How long to wait for the database to accept connections before giving up.
    migrate_wait_s: float = Field(default=60.0, gt=0)


def migrations_folder(schema: str) -> Path:
    """The installed `services/<schema>/migrations` folder."""
    return Path(services.__file__).resolve().parent / schema / "migrations"


async def migrate_all(url: str, schemas: Sequence[str], wait_s: float) -> dict[str, list[str]]:
    """Migrates each schema in turn; returns the versions applied now, by schema."""
    applied: dict[str, list[str]] = {}
    for schema in schemas:
        folder = migrations_folder(schema)
        files = sorted(folder.glob("*.sql")) if folder.is_dir() else []
        if not files:
            raise SystemExit(f"easel: no migrations for schema {schema!r} in {folder}; the install is broken")
        started = time.monotonic()
        pool = await connect_pool(url, schema, min_size=1, max_size=1, wait_s=wait_s)
        try:
            versions = await migrate(pool, schema, folder)
        finally:
            await asyncio.wait_for(pool.close(), timeout=10)
        applied[schema] = versions
        log.info(
            "schema migrated" if versions else "schema up to date",
            extra={
                "schema": schema,
                "applied": versions,
                "known": [p.stem for p in files],
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
    return applied


def parse_args(argv: Sequence[str] | None) -> list[str]:
    parser = argparse.ArgumentParser(
        prog="python -m services.migrate",
        description="Apply the SQL migrations of the Easel schemas (EASEL_DATABASE_URL).",
    )
    parser.add_argument(
        "schemas", nargs="*", metavar="schema", help=f"schemas to migrate (default: {' '.join(SCHEMAS)})"
    )
    args = parser.parse_args(argv)
    chosen: list[str] = list(args.schemas) or list(SCHEMAS)
    unknown = [s for s in chosen if s not in SCHEMAS]
    if unknown:
        parser.error(f"unknown schema {', '.join(unknown)}; choose from {', '.join(SCHEMAS)}")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    schemas = parse_args(argv)
    settings = load_settings(MigrateSettings)
    setup_logging("migrate", settings.log_level)
    try:
        applied = asyncio.run(migrate_all(settings.database_url, schemas, settings.migrate_wait_s))
    except asyncpg.PostgresError as exc:
        log.error("migration failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        return 1
    log.info("migrations done", extra={"applied": applied})
    return 0


if __name__ == "__main__":
    sys.exit(main())
