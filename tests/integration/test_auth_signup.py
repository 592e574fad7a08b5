"""Sign-up cannot be flooded (issue 18, finding 2): a limit per client address, and sign-up password
hashing that queues behind its own bound, so that sign-ins keep their capacity during a flood.

The auth service runs in this process over real gRPC and Postgres, with argon2id costly enough that
hashing dominates a call (as in production), so a queue of sign-up hashes in front of a login shows.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from easel.auth.v1 import auth_pb2
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.local.infra import free_port

from .test_auth_service import Env, fails, password_for, serve_auth, settings_for

pytestmark = pytest.mark.timeout(180)

SIGNUPS_PER_ADDRESS = 3
FLOOD_ADDRESSES = 8
FLOOD_PER_ADDRESS = 6
# A login during the flood may take at most this many times an idle login measured in the same test.
FLOOD_RATIO_BOUND = 4.0
Client = TestClient[web.Request, web.Application]


@pytest_asyncio.fixture(scope="module")
async def env(postgres_url: str) -> AsyncIterator[Env]:
    settings = settings_for(
        postgres_url,
        auth_argon2_time_cost=2,
        auth_argon2_memory_kib=16384,
        auth_argon2_parallelism=1,
        auth_hash_workers=2,
        auth_signup_hash_workers=1,
        auth_signup_per_address=SIGNUPS_PER_ADDRESS,
        auth_signup_window_s=600,
    )
    async with serve_auth(settings) as served:
        yield served


@pytest_asyncio.fixture(scope="module")
async def gateway(env: Env) -> AsyncIterator[Client]:
    dead = f"127.0.0.1:{free_port()}"
    settings = GatewaySettings(
        auth_target=env.target, gallery_target=dead, inference_target=dead, trust_forwarded_for=True
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


def signup(unique: str, name: str, address: str) -> auth_pb2.RegisterRequest:
    username = f"{name}_{unique}"
    return auth_pb2.RegisterRequest(
        username=username,
        email=f"{username}@example.com",
        password=password_for(unique),
        client_address=address,
    )


async def test_signups_per_address_are_limited(env: Env, unique: str) -> None:
    address = f"10.30.0.1-{unique}"
    for i in range(SIGNUPS_PER_ADDRESS):
        await env.stub.Register(signup(unique, f"s{i}", address))
    err = await fails(env.stub.Register(signup(unique, "one_more", address)))
    assert (err.code, err.status) == ("too_many_signups", grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert err.retry_after is not None and 1 < err.retry_after <= 600
    assert f"try again in {err.retry_after} seconds" in err.message
    assert (
        await env.pool.fetchval("SELECT count(*) FROM users WHERE username = $1", f"one_more_{unique}") == 0
    )
    # Another address signs up fine; so does a caller that passes no address (internal tools).
    await env.stub.Register(signup(unique, "neighbour", f"10.30.0.2-{unique}"))
    await env.stub.Register(signup(unique, "internal", ""))


async def test_the_studio_api_answers_429_with_the_code_and_retry_after(gateway: Client, unique: str) -> None:
    headers = {"X-Forwarded-For": f"10.34.0.1-{unique}"}

    def body(i: int) -> dict[str, str]:
        return {
            "username": f"web{i}_{unique}",
            "email": f"web{i}_{unique}@example.com",
            "password": password_for(unique),
        }

    for i in range(SIGNUPS_PER_ADDRESS):
        resp = await gateway.post("/api/v1/auth/register", json=body(i), headers=headers)
        assert resp.status == 201, await resp.text()
    resp = await gateway.post("/api/v1/auth/register", json=body(99), headers=headers)
    assert resp.status == 429, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "too_many_signups" and "try again in" in error["message"]
    assert int(resp.headers["Retry-After"]) > 1


async def test_invalid_signups_do_not_use_up_the_limit(env: Env, unique: str) -> None:
    address = f"10.31.0.1-{unique}"
    for _ in range(SIGNUPS_PER_ADDRESS + 2):
        bad = signup(unique, "x", address)
        bad.email = "not-an-email"
        assert (await fails(env.stub.Register(bad))).code == "invalid_email"
    await env.stub.Register(signup(unique, "valid", address))


async def test_a_signup_flood_does_not_starve_logins(env: Env, unique: str) -> None:
    user = await env.stub.Register(signup(unique, "regular", ""))
    request = auth_pb2.LoginRequest(
        username=user.user.username, password=password_for(unique), client_address=f"10.32.0.1-{unique}"
    )

    async def timed_login() -> float:
        start = time.perf_counter()
        await env.stub.Login(request)
        return time.perf_counter() - start

    await timed_login()  # warm the path (connection, known address)
    idle = statistics.median([await timed_login() for _ in range(5)])

    async def flood_from(n: int) -> list[str]:
        codes = []
        for i in range(FLOOD_PER_ADDRESS):
            try:
                await env.stub.Register(signup(uuid.uuid4().hex[:10], f"flood{i}", f"10.33.{n}.1-{unique}"))
                codes.append("ok")
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code().name)
        return codes

    # Many parallel sign-ups per address, so that the hash queue is long from the first moment.
    flood = [asyncio.create_task(flood_from(n)) for n in range(FLOOD_ADDRESSES) for _ in range(3)]
    await asyncio.sleep(0.2)
    during = []
    for _ in range(5):
        during.append(await timed_login())
    busy = statistics.median(during)
    outcomes = [code for codes in await asyncio.gather(*flood) for code in codes]
    print(
        f"login idle {idle * 1000:.1f} ms, during a sign-up flood {busy * 1000:.1f} ms ({busy / idle:.2f}x)"
    )
    assert busy <= FLOOD_RATIO_BOUND * idle, (idle, during)
    assert outcomes.count("ok") == FLOOD_ADDRESSES * SIGNUPS_PER_ADDRESS, outcomes
    assert set(outcomes) == {"ok", "RESOURCE_EXHAUSTED"}
