"""The control-plane optimisations keep their promises, and the control-plane bench runs.

- `JobStore.submit` (one round trip: the `submit_job` function of inference migration 0002) keeps
  the per-user limits exact under concurrent submits, the idempotency key, and the queue position;
- Auth.Authenticate reads and touches an API key in one statement, touching only a live key whose
  secret matches;
- `bench/control_plane.py` with tiny counts: every accepted job ends, and the report is printed.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from services.common.db import connect_pool, migrate
from services.common.errors import EaselError
from services.inference.api.store import JobStore, NewJob
from services.inference.messages import JobParams
from tests.stacks import new_database

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
INFERENCE_MIGRATIONS = ROOT / "services" / "inference" / "migrations"
AUTH_MIGRATIONS = ROOT / "services" / "auth" / "migrations"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def database_url(postgres_url: str) -> str:
    return await new_database(postgres_url, "bench")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def jobs_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, "inference", 1, 10)
    await migrate(pool, "inference", INFERENCE_MIGRATIONS)
    yield pool
    await pool.close()


def new_job(owner: str, model: str = "m", key: str | None = None, prompt: str = "a cat") -> NewJob:
    params = JobParams(prompt=prompt, width=64, height=64, steps=1, guidance=7.5, sampler="euler", seed=1)
    return NewJob(
        id=str(uuid.uuid4()),
        owner_id=owner,
        owner_username=owner,
        kind="txt2img",
        model=model,
        params=params,
        request_hash=f"hash-{prompt}",
        idempotency_key=key,
        cache_key=None,
    )


async def test_concurrent_submits_stop_exactly_at_the_in_flight_limit(jobs_pool: asyncpg.Pool) -> None:
    store = JobStore(jobs_pool, in_flight_limit=3, daily_limit=1000)
    owner = f"u-{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(*(store.submit(new_job(owner)) for _ in range(20)), return_exceptions=True)
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, EaselError)]
    assert len(created) == 3 and len(refused) == 17, results
    assert {e.code for e in refused} == {"too_many_jobs_in_flight"}
    assert all(e.retry_after is not None for e in refused)


async def test_concurrent_submits_stop_exactly_at_the_daily_limit(jobs_pool: asyncpg.Pool) -> None:
    store = JobStore(jobs_pool, in_flight_limit=1000, daily_limit=5)
    owner = f"u-{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(*(store.submit(new_job(owner)) for _ in range(12)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, EaselError)]
    assert len(results) - len(refused) == 5
    assert {e.code for e in refused} == {"daily_job_limit_reached"}
    # The result cache's path (no in-flight check) still counts against the day.
    cached = [{"id": str(uuid.uuid4()), "index": 0}]
    with pytest.raises(EaselError) as err:
        await store.submit(new_job(owner), cached_images=cached)
    assert err.value.code == "daily_job_limit_reached"


async def test_submit_returns_the_queue_position_and_honours_the_key(jobs_pool: asyncpg.Pool) -> None:
    store = JobStore(jobs_pool, in_flight_limit=100, daily_limit=1000)
    # The position counts every model's waiting jobs (fair dispatch, migration 0003): start empty.
    await jobs_pool.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'queued'")
    model = f"m{uuid.uuid4().hex[:6]}"
    owner = f"u-{uuid.uuid4().hex[:8]}"
    positions = [(await store.submit(new_job(owner, model)))[2] for _ in range(3)]
    assert positions == [1, 2, 3]
    row, created, position = await store.submit(new_job(owner, model, key="k1"))
    assert created and position == 4 and row.status == "queued" and row.idempotency_key == "k1"
    again, created_again, _ = await store.submit(new_job(owner, model, key="k1"))
    assert not created_again and again.id == row.id
    with pytest.raises(EaselError) as err:
        await store.submit(new_job(owner, model, key="k1", prompt="a dog"))
    assert err.value.code == "idempotency_key_reused"
    # create() still answers (row, created), as before.
    row2, created2 = await store.create(new_job(owner, model))
    assert created2 and row2.model == model
    # A job the result cache answered is stored completed, with no queue position.
    cached = [{"id": str(uuid.uuid4()), "index": 0}]
    done, created3, position3 = await store.submit(new_job(owner, model), cached_images=cached)
    assert created3 and done.status == "completed" and done.cached and position3 == 0
    assert done.images == cached and done.finished_at is not None


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def auth_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, "auth", 1, 4)
    await migrate(pool, "auth", AUTH_MIGRATIONS)
    yield pool
    await pool.close()


async def test_api_key_is_touched_only_when_live_and_matching(auth_pool: asyncpg.Pool) -> None:
    from services.auth import tokens
    from services.auth.store import Store

    store = Store(auth_pool)
    name = f"k{uuid.uuid4().hex[:8]}"
    user = await store.create_user(name, f"{name}@example.com", "x")
    made = tokens.new_token("api_key")
    await store.create_api_key(
        made.id, user.id, "bench", made.display_prefix, made.digest, ["generate"], 3600, 10
    )

    async def last_used() -> object:
        return await auth_pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", made.id)

    wrong = tokens.digest(made.token[:-1] + ("A" if made.token[-1] != "A" else "B"))
    cred = await store.api_key_in_use(made.id, wrong)
    assert cred is not None and cred.user_id == user.id  # read, for the caller to refuse
    assert await last_used() is None  # but a wrong secret touches nothing
    cred = await store.api_key_in_use(made.id, made.digest)
    assert cred is not None and not cred.revoked and not cred.expired and cred.scopes == ["generate"]
    first = await last_used()
    assert first is not None
    await store.api_key_in_use(made.id, made.digest)
    assert await last_used() == first  # at most one write a minute
    await store.revoke_api_key_by_id(made.id)
    await auth_pool.execute("UPDATE api_keys SET last_used_at = NULL WHERE id = $1", made.id)
    cred = await store.api_key_in_use(made.id, made.digest)
    assert cred is not None and cred.revoked
    assert await last_used() is None  # a revoked key is not touched
    assert await store.api_key_in_use(uuid.uuid4(), made.digest) is None


def test_control_plane_bench_runs_and_every_accepted_job_ends(models_dir: Path) -> None:
    if not (models_dir / "tiny-sd" / "easel-model.json").is_file():
        pytest.skip("tiny-sd is not built")
    args = "--seconds 1 --baseline-seconds 0.5 --concurrency 4 --users 2 --latency-jobs 3 --latency-warmup 1"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "control_plane.py"),
            *args.split(),
            *("--models-dir", str(models_dir), "--drain-timeout", "180"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    accepted = re.search(r"accepted \(202\) (\d+) jobs", out)
    assert accepted and int(accepted.group(1)) > 0, out
    # Every submit was accepted: the service's limits are raised for a capacity run, none answered.
    assert "other answers" not in out, out
    drained = re.search(r"drain: worker started, (\d+) accepted jobs -> \{'completed': (\d+)\}", out)
    assert drained and drained.group(1) == drained.group(2), out
    for label in ("gRPC no-op", "gateway GET /healthz", "POST /api/v1/generations"):
        assert re.search(rf"\| {re.escape(label)}[^|]*\|\s+\d+ \|", out), label
    overhead = re.search(r"\| overhead = end-to-end - model time\s+\|\s+([\d.]+) \|", out)
    assert overhead and 0 < float(overhead.group(1)) < 5000, out
    assert re.search(r"CPU ms per accepted job .*inference-api [\d.]+", out), out
