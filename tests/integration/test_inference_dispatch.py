"""Fair dispatch (issue 18, finding 2), on real Postgres and NATS JetStream, without workers.

Jobs wait in Postgres; a dispatcher sends each model's jobs to NATS only while fewer than its window
are sent and not started, choosing by start-time fair queueing across owners (a job's virtual start
is its owner's virtual finish or the clock, whichever is later; it finishes `cost` later). These
tests drive `Dispatcher.dispatch` directly and play the worker by marking jobs running or done.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from services.common.db import connect_pool, migrate
from services.common.errors import EaselError
from services.common.messaging import JOBS_STREAM, connect, ensure_streams, job_subject
from services.inference.api.dispatch import Dispatcher, job_cost
from services.inference.api.store import JobStore, NewJob
from services.inference.messages import JobParams, WorkMessage
from tests.integration.test_bench_control_plane import INFERENCE_MIGRATIONS
from tests.stacks import new_database

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pool(postgres_url: str) -> AsyncIterator[asyncpg.Pool]:
    url = await new_database(postgres_url, "dispatch")
    p = await connect_pool(url, "inference", 1, 10)
    await migrate(p, "inference", INFERENCE_MIGRATIONS)
    yield p
    await p.close()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await connect(nats_url, "dispatch-test")
    await ensure_streams(client.jetstream())
    yield client
    await client.drain()


def job(owner: str, model: str, size: int = 64, steps: int = 2, n: int = 1, prompt: str = "a cat") -> NewJob:
    params = JobParams(
        prompt=prompt, width=size, height=size, steps=steps, guidance=7.5, sampler="euler", seed=1, n=n
    )
    return NewJob(
        id=str(uuid.uuid4()),
        owner_id=owner,
        owner_username=owner,
        kind="txt2img",
        model=model,
        params=params,
        request_hash=f"hash-{uuid.uuid4()}",
        idempotency_key=None,
        cache_key=None,
    )


def name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def finish(pool: asyncpg.Pool, job_ids: list[str]) -> None:
    """What the event applier does when a worker reports the jobs done."""
    await pool.execute(
        "UPDATE jobs SET status = 'completed', finished_at = now() WHERE id = ANY($1::uuid[])",
        [uuid.UUID(i) for i in job_ids],
    )


async def published(js: JetStreamContext, model: str) -> list[str]:
    """Job ids in the model's work queue, in the order a worker would receive them."""
    durable = f"t-{model}"
    await js.add_consumer(
        JOBS_STREAM,
        ConsumerConfig(
            durable_name=durable, filter_subject=job_subject(model, ">"), ack_policy=AckPolicy.EXPLICIT
        ),
    )
    sub = await js.pull_subscribe_bind(durable=durable, stream=JOBS_STREAM)
    ids: list[str] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except TimeoutError:
                break
            for msg in msgs:
                ids.append(WorkMessage.decode(msg.data).job_id)
                await msg.ack()
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(JOBS_STREAM, durable)
    return ids


async def test_a_small_job_overtakes_a_big_backlog(pool: asyncpg.Pool, nc: NATS) -> None:
    js = nc.jetstream()
    store = JobStore(pool, in_flight_limit=100, daily_limit=1000, cost_limit=10**15)
    dispatcher = Dispatcher(pool, js, window=1)
    model, heavy, light = name("m"), name("heavy-"), name("light-")
    backlog = [await store.submit(job(heavy, model, size=256, steps=50, n=8)) for _ in range(6)]
    first = await dispatcher.dispatch(model)
    assert first == [backlog[0][0].id]
    # Nothing more while the window is full.
    assert await dispatcher.dispatch(model) == []

    small, _, position = await store.submit(job(light, model))
    # Behind the job already sent, ahead of the rest of the backlog.
    assert position == 2
    await finish(pool, first)
    assert await dispatcher.dispatch(model) == [small.id]
    await finish(pool, [small.id])
    rest = []
    for _ in range(5):
        rest += await dispatcher.dispatch(model)
        await finish(pool, rest[-1:])
    assert rest == [row.id for row, _, _ in backlog[1:]]
    assert await published(js, model) == [backlog[0][0].id, small.id, *rest]


async def test_owners_take_turns_by_cost(pool: asyncpg.Pool, nc: NATS) -> None:
    """Two owners with backlogs alternate in proportion to their jobs' cost, not their count."""
    js = nc.jetstream()
    store = JobStore(pool, in_flight_limit=100, daily_limit=1000, cost_limit=10**15)
    dispatcher = Dispatcher(pool, js, window=1)
    model, big, small = name("m"), name("big-"), name("small-")
    bigs = [(await store.submit(job(big, model, size=128, steps=4)))[0].id for _ in range(3)]
    smalls = [(await store.submit(job(small, model, size=64, steps=4)))[0].id for _ in range(8)]
    order: list[str] = []
    for _ in range(11):
        sent = await dispatcher.dispatch(model)
        assert len(sent) == 1
        order += sent
        await finish(pool, sent)
    # A 128x128 job costs four 64x64 ones: each big job is followed by about four small ones.
    assert [("B" if i in bigs else "s") for i in order] == list("BssssBssssB")
    assert [i for i in order if i in smalls] == smalls


async def test_position_counts_every_model_in_dispatch_order(pool: asyncpg.Pool, nc: NATS) -> None:
    js = nc.jetstream()
    store = JobStore(pool, in_flight_limit=100, daily_limit=1000, cost_limit=10**15)
    dispatcher = Dispatcher(pool, js, window=1)
    model_a, model_b = name("a"), name("b")
    heavy, light = name("heavy-"), name("light-")
    a1, _, p1 = await store.submit(job(heavy, model_a, size=256, steps=20))
    b1, _, p2 = await store.submit(job(heavy, model_b, size=256, steps=20))
    assert (p1, p2) == (1, 2)  # the other model's job counts too
    assert await dispatcher.dispatch(model_a) == [a1.id]
    mine, _, p3 = await store.submit(job(light, model_b))
    # a1 is sent (ahead of everything held); light's first job comes before heavy's second.
    assert p3 == 2
    fresh_b1 = await store.get(b1.id)
    assert fresh_b1 is not None and await store.position(fresh_b1) == 3
    mine_row = await store.get(mine.id)
    assert mine_row is not None and await store.position(mine_row) == 2
    await finish(pool, [a1.id])
    assert await dispatcher.dispatch(model_b) == [mine.id]
    mine_row = await store.get(mine.id)
    assert mine_row is not None and await store.position(mine_row) == 1
    await finish(pool, [mine.id])
    assert await dispatcher.dispatch(model_b) == [b1.id]
    await finish(pool, [b1.id])


async def test_cancelled_waiting_jobs_are_not_charged_to_their_owner(pool: asyncpg.Pool, nc: NATS) -> None:
    """Jobs cancelled before they were sent give their cost back: cancelling a backlog does not push
    the owner's next job behind everyone else's."""
    store = JobStore(pool, in_flight_limit=100, daily_limit=1000, cost_limit=10**15)
    model, quitter, other = name("m"), name("quitter-"), name("other-")
    dropped = [(await store.submit(job(quitter, model, size=256, steps=20)))[0] for _ in range(3)]
    for row in dropped:
        assert await store.cancel_queued(row.id) is not None
    first, _, _ = await store.submit(job(other, model, size=128, steps=20))
    second, _, _ = await store.submit(job(other, model, size=128, steps=20))
    mine, _, position = await store.submit(job(quitter, model, size=64, steps=2))
    # Behind the other owner's first job (same start, earlier), ahead of their second.
    assert position == 2, position
    await finish(pool, [first.id, second.id, mine.id])


async def test_replicas_never_send_more_than_the_window(
    pool: asyncpg.Pool, nc: NATS, postgres_url: str
) -> None:
    """Several api replicas (own pools, own NATS connections) dispatching at once: each job is sent
    once, and never more than the window are sent and not yet denoised."""
    js = nc.jetstream()
    store = JobStore(pool, in_flight_limit=100, daily_limit=1000, cost_limit=10**15)
    model = name("m")
    owners = [name("o-") for _ in range(4)]
    ids = {(await store.submit(job(o, model)))[0].id for o in owners for _ in range(5)}
    replicas = [Dispatcher(pool, js, window=3) for _ in range(4)]
    sent: list[str] = []
    while len(sent) < len(ids):
        rounds = await asyncio.gather(*(d.dispatch(model) for d in replicas))
        now = [i for r in rounds for i in r]
        assert 1 <= len(now) <= 3
        sent += now
        # A worker starts them: still counted against the window while they denoise...
        running = [uuid.UUID(i) for i in now]
        await pool.execute("UPDATE jobs SET status = 'running', step = 0 WHERE id = ANY($1::uuid[])", running)
        assert await replicas[0].dispatch(model) == []
        # ...and no longer once their last step is done: a new round may send.
        await pool.execute("UPDATE jobs SET step = steps WHERE id = ANY($1::uuid[])", running)
    assert sorted(sent) == sorted(ids) and len(set(sent)) == len(sent)
    assert sorted(await published(js, model)) == sorted(ids)
    await finish(pool, sent)


async def test_the_in_flight_limit_counts_cost(pool: asyncpg.Pool) -> None:
    cost = job_cost(job("x", "m", size=256, steps=50, n=8).params)
    assert cost == 256 * 256 * 50 * 8
    store = JobStore(pool, in_flight_limit=100, daily_limit=1000, cost_limit=2 * cost)
    owner = name("o-")
    await store.submit(job(owner, name("m"), size=256, steps=50, n=8))
    await store.submit(job(owner, name("m"), size=256, steps=50, n=8))
    with pytest.raises(EaselError) as err:
        await store.submit(job(owner, name("m"), size=64, steps=1))
    assert err.value.code == "too_many_jobs_in_flight" and err.value.retry_after
    assert "pixel" in err.value.message
    # One job bigger than the whole allowance still runs when nothing else is in flight.
    big = JobStore(pool, in_flight_limit=100, daily_limit=1000, cost_limit=cost // 2)
    lone = name("o-")
    assert (await big.submit(job(lone, name("m"), size=256, steps=50, n=8)))[1]
    with pytest.raises(EaselError):
        await big.submit(job(lone, name("m"), size=64, steps=1))


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("prompt", {"prompt": "a cat\x00"}),
        ("negative_prompt", {"negative_prompt": "\x00"}),
        ("idempotency_key", {"idempotency_key": "k\x00"}),
        ("owner_username", {"owner_username": "bob\x00"}),
    ],
)
async def test_the_store_refuses_nul_in_text(pool: asyncpg.Pool, field: str, change: dict[str, str]) -> None:
    store = JobStore(pool, in_flight_limit=100, daily_limit=1000)
    base = job(name("o-"), "m")
    params = base.params.model_copy(
        update={k: v for k, v in change.items() if k in ("prompt", "negative_prompt")}
    )
    rest = {k: v for k, v in change.items() if k not in ("prompt", "negative_prompt")}
    bad = NewJob(**{**base.__dict__, "params": params, **rest})
    with pytest.raises(EaselError) as err:
        await store.submit(bad)
    assert err.value.code == "invalid_field" and err.value.field == field
    with pytest.raises(EaselError) as err:
        await store.find_by_key("owner", "k\x00")
    assert err.value.code == "invalid_field"
    with pytest.raises(EaselError) as err:
        await store.list("owner\x00", 10, "")
    assert err.value.code == "invalid_field"
