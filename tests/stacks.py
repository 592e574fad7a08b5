"""A whole studio for one test module: its own database on the session's Postgres and its own NATS.

Its own NATS, because every worker on a server shares the work queues, so two stacks on one NATS would
take each other's jobs; its own database, because another stack's result cache or community feed would
answer with images whose bytes live in that stack's blob folder.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from services.local.stack import Ports, Stack


async def new_database(postgres_url: str, prefix: str) -> str:
    """A new empty database named `<prefix>_<random>` beside the one in `postgres_url`; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


def create_database(postgres_url: str, prefix: str) -> str:
    """A new empty database beside the one in `postgres_url`; returns its URL."""
    return asyncio.run(new_database(postgres_url, prefix))


def grant_admin(database_url: str, username: str) -> None:
    """Makes an existing account an administrator the way an operator does: with the command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_")}
    env["EASEL_DATABASE_URL"] = database_url
    done = subprocess.run(
        [sys.executable, "-m", "services.auth", "admin", "grant", username],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@contextmanager
def isolated_stack(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    models_dir: Path,
    label: str,
    extra_env: dict[str, str] | None = None,
    grace: float = 10,
) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp(f"{label}-stack")
    stack = Stack(
        run_dir=run_dir,
        models_dir=models_dir,
        ports=Ports.free(),
        database_url=create_database(postgres_url, label.replace("-", "_")),
        nats_url=None,
        extra_env=extra_env,
        log_dir=run_dir / "logs",
        grace=grace,
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
