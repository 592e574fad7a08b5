"""One whole studio per session for the end-to-end tests: every process real, on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.local.stack import Stack
from tests.stacks import isolated_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, models_dir: Path) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory, postgres_url, models_dir, "e2e") as s:
        yield s
