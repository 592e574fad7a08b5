"""`python -m services.migrate` (the chart's migrations hook Job) against a real Postgres."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from services.migrate.__main__ import SCHEMAS, migrations_folder, parse_args
from tests.stacks import new_database


def test_every_schema_has_its_migrations_folder() -> None:
    for schema in SCHEMAS:
        assert sorted(migrations_folder(schema).glob("*.sql")), schema


def test_arguments_choose_schemas() -> None:
    assert parse_args([]) == list(SCHEMAS)
    assert parse_args(["gallery"]) == ["gallery"]
    with pytest.raises(SystemExit):
        parse_args(["billing"])


async def test_migrate_applies_every_schema_and_is_idempotent(postgres_url: str) -> None:
    # A database of its own, so the schemas are created here and nowhere else.
    url = await new_database(postgres_url, "migrate")
    env = {**os.environ, "EASEL_DATABASE_URL": url, "EASEL_LOG_LEVEL": "INFO"}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "services.migrate"], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert '"msg": "schema up to date"' in done.stdout
    conn = await asyncpg.connect(url)
    try:
        for schema in SCHEMAS:
            versions = [
                r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
            ]
            assert versions == [p.stem for p in sorted(migrations_folder(schema).glob("*.sql"))], schema
    finally:
        await conn.close()


def test_migrate_names_the_setting_when_the_database_is_unreachable() -> None:
    env = {
        **os.environ,
        "EASEL_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/easel",
        "EASEL_MIGRATE_WAIT_S": "0.5",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "EASEL_DATABASE_URL" in done.stderr
