"""Bounded load through the gateway: simulated users browsing, generating and using their gallery.

The short run here is part of `make test`; `bench/load_test.py` (and the slow test below) is the
full one. What each run promises is listed in `loadgen.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from services.local.stack import Stack
from tests.stacks import new_database

from .conftest import SHARED_ADDRESS, make_stack, pids
from .loadgen import LoadConfig, LoadRun, summary_line

pytestmark = pytest.mark.timeout(600)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def database_url(postgres_url: str) -> str:
    return await new_database(postgres_url, "load")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str, models_dir: Path) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("load-stack"), models_dir, database_url, SHARED_ADDRESS)
    try:
        s.start()
        yield s
    finally:
        s.stop()


async def _run(stack: Stack, config: LoadConfig) -> None:
    report = await LoadRun(stack.gateway_url, config, pids(stack)).run()
    print(summary_line(report))
    print(report.table())
    out = os.environ.get("EASEL_LOAD_REPORT")
    if out:
        Path(out).write_text(json.dumps(report.summary(), indent=2))
    assert not report.problems, "\n".join(report.problems[:40])
    outcomes = report.job_outcomes()
    assert outcomes["completed"] > 0, outcomes
    assert set(outcomes) <= {"completed", "failed", "cancelled"}, outcomes
    # Every process is still there at the end (none crashed under load).
    assert set(pids(stack)) >= {"auth", "gallery", "inference-api", "inference-worker", "gateway"}


async def test_short_load_no_errors_jobs_end_memory_flat(stack: Stack) -> None:
    # One job in hand per user: the CPU worker drains what they queued within a few seconds.
    await _run(stack, LoadConfig(users=12, duration_s=15.0, max_outstanding=1))


@pytest.mark.slow
async def test_full_load_50_users_60_seconds(stack: Stack) -> None:
    await _run(
        stack, LoadConfig(users=50, duration_s=60.0, max_outstanding=2, greedy_users=2, drain_timeout_s=600.0)
    )
