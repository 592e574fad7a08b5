"""API keys show their scopes, and their limits are one set of numbers (issue 18, finding 10).

The lifetime and name limits live in `services/common/limits.py`, which the service enforces and the
documents describe; creating and listing keys through a real gateway app (in this process) in front
of the real auth service shows each key's scopes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from easel.auth.v1 import auth_pb2
from services.common import limits
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.local.infra import free_port

from .test_auth_service import Env, fails, login, register, serve_auth, settings_for

pytestmark = pytest.mark.timeout(60)
Client = TestClient[web.Request, web.Application]


@pytest_asyncio.fixture(scope="module")
async def env(postgres_url: str) -> AsyncIterator[Env]:
    # The service's own defaults for key lifetimes, not the test suite's.
    defaults = settings_for(postgres_url)
    async with serve_auth(
        settings_for(
            postgres_url,
            auth_api_key_max_ttl_s=type(defaults).model_fields["auth_api_key_max_ttl_s"].default,
            auth_max_api_keys=20,
        )
    ) as served:
        yield served


@pytest_asyncio.fixture(scope="module")
async def gateway(env: Env) -> AsyncIterator[Client]:
    dead = f"127.0.0.1:{free_port()}"
    settings = GatewaySettings(auth_target=env.target, gallery_target=dead, inference_target=dead)
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


async def test_created_and_listed_keys_show_their_scopes(env: Env, gateway: Client, unique: str) -> None:
    user, password = await register(env, unique)
    bearer = {"Authorization": f"Bearer {(await login(env, user.username, password)).token}"}
    resp = await gateway.post(
        "/api/v1/keys", json={"name": "reader", "scopes": ["images:read"]}, headers=bearer
    )
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["scopes"] == ["images:read"] and created["key"].startswith("esk_")
    resp = await gateway.post("/api/v1/keys", json={"name": "default"}, headers=bearer)
    assert (await resp.json())["scopes"] == ["generate", "images:read", "images:write"]

    resp = await gateway.get("/api/v1/keys", headers=bearer)
    assert resp.status == 200, await resp.text()
    listed = {k["name"]: k["scopes"] for k in (await resp.json())["items"]}
    assert listed == {"reader": ["images:read"], "default": ["generate", "images:read", "images:write"]}
    assert all("key" not in k for k in (await resp.json())["items"])


async def test_key_lifetimes_are_the_shared_limits(env: Env, gateway: Client, unique: str) -> None:
    user, password = await register(env, unique)
    for ttl in (limits.KEY_TTL_MIN_S, limits.KEY_TTL_MAX_S):
        made = await env.stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(user_id=user.id, name="k", ttl_seconds=ttl)
        )
        assert made.key.expires_at.seconds - made.key.created_at.seconds == ttl
    for ttl in (limits.KEY_TTL_MIN_S - 1, limits.KEY_TTL_MAX_S + 1):
        err = await fails(
            env.stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(user_id=user.id, name="k", ttl_seconds=ttl))
        )
        assert (err.code, err.field, err.status) == (
            "invalid_ttl",
            "ttl_seconds",
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert f"between {limits.KEY_TTL_MIN_S} and {limits.KEY_TTL_MAX_S} seconds" in err.message

    # The gateway answers the same numbers: the longest lifetime is accepted, one more is a 400.
    bearer = {"Authorization": f"Bearer {(await login(env, user.username, password)).token}"}
    resp = await gateway.post(
        "/api/v1/keys", json={"name": "long", "ttl_seconds": limits.KEY_TTL_MAX_S}, headers=bearer
    )
    assert resp.status == 201, await resp.text()
    resp = await gateway.post(
        "/api/v1/keys", json={"name": "too long", "ttl_seconds": limits.KEY_TTL_MAX_S + 1}, headers=bearer
    )
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "ttl_seconds"


async def test_key_names_are_limited_to_the_shared_length(env: Env, unique: str) -> None:
    user, _ = await register(env, unique)
    name = "n" * limits.KEY_NAME_MAX_CHARS
    made = await env.stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(user_id=user.id, name=name))
    assert made.key.name == name
    err = await fails(env.stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(user_id=user.id, name=name + "n")))
    assert (err.code, err.field) == ("invalid_key_name", "name")
    assert f"1 to {limits.KEY_NAME_MAX_CHARS} printable characters" in err.message
