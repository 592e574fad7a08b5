"""Brute-force protection that strangers cannot turn against a user (issue 18, finding 1).

The hard lock is keyed by (account, client address); the account alone only slows down sign-ins from
addresses that never signed in to it; an address that did is neither locked nor slowed by strangers.
Checked on the auth service over gRPC and, for HTTP Basic on `/sdapi`, through a real gateway app
(in this process) in front of it, with the client address taken from X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import base64
import time
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

from .test_auth_service import (
    MAX_FAILURES,
    MAX_FAILURES_PER_ADDRESS,
    Env,
    fails,
    login,
    register,
    serve_auth,
    settings_for,
)

pytestmark = pytest.mark.timeout(120)

DELAY_BASE_S = 0.3
DELAY_MAX_S = 1.2
Client = TestClient[web.Request, web.Application]


@pytest_asyncio.fixture(scope="module")
async def env(postgres_url: str) -> AsyncIterator[Env]:
    # A window and lockout longer than any test here, so that nothing expires half-way.
    settings = settings_for(
        postgres_url,
        auth_login_window_s=120,
        auth_login_lockout_s=120,
        auth_login_delay_base_s=DELAY_BASE_S,
        auth_login_delay_max_s=DELAY_MAX_S,
    )
    async with serve_auth(settings) as served:
        yield served


@pytest_asyncio.fixture(scope="module")
async def gateway(env: Env) -> AsyncIterator[Client]:
    dead = f"127.0.0.1:{free_port()}"  # /sdapi/v1/samplers needs nothing but auth
    settings = GatewaySettings(
        auth_target=env.target,
        gallery_target=dead,
        inference_target=dead,
        trust_forwarded_for=True,
        rpc_timeout_s=10.0,
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


async def timed_login(env: Env, username: str, password: str, address: str) -> float:
    start = time.perf_counter()
    reply = await login(env, username, password, address)
    assert reply.user.username == username
    return time.perf_counter() - start


async def test_strangers_lock_only_their_own_address_and_never_the_known_one(env: Env, unique: str) -> None:
    victim, password = await register(env, unique, "victim")
    home = f"10.18.0.1-{unique}"
    await login(env, victim.username, password, home)  # home is now a known address

    # One stranger guesses until its own (account, address) pair is locked ...
    attacker = f"10.18.1.1-{unique}"
    for i in range(MAX_FAILURES):
        err = await fails(login(env, victim.username, f"guess-{i}", attacker))
        assert err.code == "invalid_credentials"
    locked = await fails(login(env, victim.username, password, attacker))
    assert (locked.code, locked.status) == ("login_throttled", grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert locked.retry_after is not None and locked.retry_after > 1

    # ... and many more, each from an address of its own: never a lock, only a growing delay.
    for i in range(MAX_FAILURES + 2):
        err = await fails(login(env, victim.username, f"spray-{i}", f"10.18.2.{i}-{unique}"))
        assert err.code == "invalid_credentials"

    # The victim at home signs in at once; from a new address, after the (capped) delay.
    # (The best of three: on a busy machine one sign-in can stall for reasons of its own.)
    at_home = min([await timed_login(env, victim.username, password, home) for _ in range(3)])
    elsewhere = await timed_login(env, victim.username, password, f"10.18.3.1-{unique}")
    assert elsewhere >= DELAY_MAX_S * 0.9, elsewhere
    assert at_home < elsewhere - DELAY_MAX_S / 2, (at_home, elsewhere)
    # The stranger's pair is still locked, whatever password it sends.
    assert (await fails(login(env, victim.username, password, attacker))).code == "login_throttled"


async def test_the_delay_grows_with_failures_from_unknown_addresses(env: Env, unique: str) -> None:
    victim, password = await register(env, unique, "slowed")
    for i in range(MAX_FAILURES):  # free: the first few cost nothing extra
        await fails(login(env, victim.username, f"guess-{i}", f"10.19.0.{i}-{unique}"))
    first = await timed_login(env, victim.username, password, f"10.19.1.1-{unique}")
    # A success from a new address clears nothing on the account: it may be the attacker's lucky guess.
    for i in range(3):
        await fails(login(env, victim.username, f"more-{i}", f"10.19.2.{i}-{unique}"))
    later = await timed_login(env, victim.username, password, f"10.19.3.1-{unique}")
    assert first >= DELAY_BASE_S * 0.9, first
    assert later >= DELAY_MAX_S * 0.9 and later > first + DELAY_BASE_S, (first, later)


async def test_an_address_lock_spares_accounts_that_signed_in_from_it(env: Env, unique: str) -> None:
    shared = f"10.20.0.1-{unique}"  # one NAT: a regular user and a password sprayer behind it
    regular, password = await register(env, unique, "regular")
    await login(env, regular.username, password, shared)
    for i in range(MAX_FAILURES_PER_ADDRESS):
        await fails(login(env, f"probe{i}_{unique}", "wrong-password", shared))
    newcomer, newcomer_password = await register(env, unique, "newcomer")
    assert (await fails(login(env, newcomer.username, newcomer_password, shared))).code == "login_throttled"
    assert (await login(env, regular.username, password, shared)).user.id == regular.id


def basic(username: str, password: str, address: str) -> dict[str, str]:
    pair = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}", "X-Forwarded-For": address}


async def test_http_basic_on_sdapi_is_locked_per_address_too(env: Env, gateway: Client, unique: str) -> None:
    victim, password = await register(env, unique, "a1111")
    home = f"10.21.0.1-{unique}"
    resp = await gateway.post(
        "/api/v1/auth/login",
        json={"username": victim.username, "password": password},
        headers={"X-Forwarded-For": home},
    )
    assert resp.status == 200, await resp.text()

    attacker = f"10.21.1.1-{unique}"
    for i in range(MAX_FAILURES):
        resp = await gateway.get("/sdapi/v1/samplers", headers=basic(victim.username, f"guess-{i}", attacker))
        assert resp.status == 401, await resp.text()
    for i in range(MAX_FAILURES + 2):
        headers = basic(victim.username, f"spray-{i}", f"10.21.2.{i}-{unique}")
        resp = await gateway.get("/sdapi/v1/samplers", headers=headers)
        assert resp.status == 401, await resp.text()
    # The attacker's address is locked even with the right password (asked before anyone signs in
    # with it: the gateway remembers sessions it opened for Basic callers).
    resp = await gateway.get("/sdapi/v1/samplers", headers=basic(victim.username, password, attacker))
    assert resp.status == 429, await resp.text()
    assert int(resp.headers["Retry-After"]) > 1
    # The victim's own client at home is not.
    resp = await gateway.get("/sdapi/v1/samplers", headers=basic(victim.username, password, home))
    assert resp.status == 200, await resp.text()
    assert any(s["name"] for s in await resp.json())


async def test_a_password_change_from_a_locked_address_waits_too(env: Env, unique: str) -> None:
    user, password = await register(env, unique, "changer")
    address = f"10.22.0.1-{unique}"
    await login(env, user.username, password, address)
    for i in range(MAX_FAILURES):
        await fails(login(env, user.username, f"guess-{i}", address))

    def change(at: str) -> auth_pb2.ChangePasswordRequest:
        return auth_pb2.ChangePasswordRequest(
            user_id=user.id,
            current_password=password,
            new_password=f"amber-signal-{unique}-orchard",
            client_address=at,
        )

    # A stolen session is no way around the lock ...
    err = await fails(env.stub.ChangePassword(change(address)))
    assert (err.code, err.status) == ("login_throttled", grpc.StatusCode.RESOURCE_EXHAUSTED)
    # ... and the lock at that address does not stop the owner elsewhere.
    await env.stub.ChangePassword(change(f"10.22.0.2-{unique}"))


async def test_http_basic_and_bearer_with_hostile_text_are_401(gateway: Client, unique: str) -> None:
    """A NUL in the Basic user reaches auth as a login name (invalid_field there, 401 here); a
    non-ASCII bearer token reaches auth as a token (invalid_token); neither is a 5xx."""
    for user in (f"vic\x00tim{unique}", "\x00", f"vïctim{unique}"):
        resp = await gateway.get(
            "/sdapi/v1/samplers", headers=basic(user, "a-password", f"10.23.0.1-{unique}")
        )
        assert resp.status == 401, (user, await resp.text())
    for token in ("ess_" + "é" * 32 + "_" + "A" * 43, "esk_ü"):
        resp = await gateway.get("/sdapi/v1/samplers", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401, (token, await resp.text())
        resp = await gateway.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401, (token, await resp.text())


async def test_parallel_guesses_from_one_address_get_no_more_than_the_limit(env: Env, unique: str) -> None:
    """Attempts are counted before the password is checked, so a burst cannot slip past the lock."""
    victim, password = await register(env, unique, "burst")
    address = f"10.24.0.1-{unique}"
    results = await asyncio.gather(
        *(fails(login(env, victim.username, f"guess-{i}", address)) for i in range(4 * MAX_FAILURES))
    )
    codes = [err.code for err in results]
    assert codes.count("invalid_credentials") == MAX_FAILURES, codes
    assert codes.count("login_throttled") == 3 * MAX_FAILURES, codes
    assert (await fails(login(env, victim.username, password, address))).code == "login_throttled"
