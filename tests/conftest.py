"""Shared fixtures: one real Postgres and one real NATS (JetStream) per test session.

Each session gets its own servers on free loopback ports with data in a temporary folder, so test
runs never touch `.run/` and can run beside `make run`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.local.infra import EmbeddedNats, EmbeddedPostgres, free_port

os.environ.setdefault("EASEL_PG_FAST", "1")  # fsync off: test data need not survive a power cut
# Every test client signs up from 127.0.0.1, many accounts per stack: the per-address sign-up limit
# (tested on its own in tests/integration/test_auth_signup.py) is lifted for the rest.
os.environ.setdefault("EASEL_AUTH_SIGNUP_PER_ADDRESS", "1000000")


@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def postgres(infra_dir: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(infra_dir / "postgres", free_port(), log_file=infra_dir / "postgres.log")
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres: EmbeddedPostgres) -> str:
    return postgres.url


@pytest.fixture(scope="session")
def nats_server(infra_dir: Path) -> Iterator[EmbeddedNats]:
    nats = EmbeddedNats(infra_dir / "nats", free_port(), log_file=infra_dir / "nats.log")
    nats.start()
    yield nats
    nats.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
def unique() -> str:
    """A short random suffix for names that must not collide between tests."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled test models: `./models` when `make models` built them, else built once into tmp."""
    import subprocess
    import sys

    local = Path("models").resolve()
    if (local / "tiny-sd" / "easel-model.json").exists():
        return local
    target = tmp_path_factory.mktemp("models")
    subprocess.run(
        [sys.executable, "-m", "services.inference.fetch", "--models-dir", str(target), "--bundled"],
        check=True,
    )
    return target
