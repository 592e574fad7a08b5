"""One whole studio per session: every process real, on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.local.stack import Ports, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, models_dir: Path) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("stack")
    s = Stack(
        run_dir=run_dir,
        models_dir=models_dir,
        ports=Ports.free(),
        database_url=postgres_url,
        # Its own NATS: stacks that share one would pull each other's jobs off the work queue.
        nats_url=None,
        log_dir=run_dir / "logs",
        grace=10,
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()
