"""Job claims in the JetStream KV bucket (worker/claims.py), against a real NATS server: a later
delivery takes a running job over, a finished job stays finished, and the fence tells the earlier
delivery it lost the job."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from services.inference.worker.claims import Claims, claims_bucket


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


async def test_a_later_delivery_takes_the_job_and_fences_the_earlier_one(nc: NATS) -> None:
    js = nc.jetstream()
    kv = await claims_bucket(js)
    first, second = Claims(kv, "worker-a:1"), Claims(kv, "worker-b:2")
    job = str(uuid.uuid4())

    one = await first.take(job, attempt=1)
    assert one.final is None and one.revision is not None
    assert await first.still_ours(job, one.revision)

    # The first worker is paused past its ack window; the message goes to the second.
    two = await second.take(job, attempt=2)
    assert two.final is None and two.revision is not None and two.revision != one.revision
    assert not await first.still_ours(job, one.revision)
    assert await second.still_ours(job, two.revision)

    await second.finish(job, "completed", attempt=2)
    assert not await second.still_ours(job, two.revision)  # nobody holds a finished job
    # Any later delivery (a lost ack, a republished message) finds it finished.
    for claims, attempt in ((first, 3), (second, 1)):
        taken = await claims.take(job, attempt)
        assert taken.final == "completed" and taken.revision is None
    entry = await kv.get(job)
    assert b'"worker-b:2"' in (entry.value or b"")


async def test_every_final_outcome_is_final_and_unfenced_claims_are_ours(nc: NATS) -> None:
    kv = await claims_bucket(nc.jetstream())
    claims = Claims(kv, "worker-c:3")
    for state in ("failed", "cancelled"):
        job = str(uuid.uuid4())
        await claims.take(job, 1)
        await claims.finish(job, state, 1)
        assert (await claims.take(job, 2)).final == state
    # No claim could be written (None): the job runs unfenced, as before claims existed.
    assert await claims.still_ours(str(uuid.uuid4()), None)
    # A claim that expired (or was never written) is nobody else's.
    assert await claims.still_ours(str(uuid.uuid4()), 12345)
