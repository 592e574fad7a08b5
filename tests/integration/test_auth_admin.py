"""Administrators are designated explicitly, never by being first to sign up with a name (issue 18).

An `is_admin` flag on the account, set by `python -m services.auth admin grant|revoke|list` against
the database, or by EASEL_AUTH_ADMIN_IDS (account ids: made by the server at sign-up, so nobody can
register their way into the list). EASEL_AUTH_ADMIN_USERS (usernames: whoever signs up first with a
listed name) is gone, and setting it stops the service with a line saying what to do instead.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from easel.auth.v1 import auth_pb2

from .test_auth_service import Env, login, register, serve_auth, settings_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture(scope="module")
async def env(postgres_url: str) -> AsyncIterator[Env]:
    async with serve_auth(settings_for(postgres_url)) as served:
        yield served


def admin_command(database_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_")}
    env.update({"EASEL_DATABASE_URL": database_url, **extra})
    return subprocess.run(
        [sys.executable, "-m", "services.auth", "admin", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def role_of(env: Env, token: str) -> str:
    principal = await env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=token))
    return principal.role


async def test_grant_list_and_revoke_by_command_take_effect_at_once(env: Env, unique: str) -> None:
    user, password = await register(env, unique, "chief")
    assert user.role == "user"
    token = (await login(env, user.username, password)).token
    assert await role_of(env, token) == "user"
    url = env.settings.database_url

    done = await asyncio.to_thread(admin_command, url, "grant", user.username.upper())
    assert done.returncode == 0, done.stderr
    assert user.username in done.stdout and user.id in done.stdout
    # The session opened before the grant is an administrator's from its next request.
    assert await role_of(env, token) == "admin"
    assert (await env.stub.GetUser(auth_pb2.GetUserRequest(user_id=user.id))).role == "admin"
    listed = await asyncio.to_thread(admin_command, url, "list")
    assert listed.returncode == 0 and f"{user.id}  {user.username}" in listed.stdout.splitlines()

    done = await asyncio.to_thread(admin_command, url, "revoke", user.id)  # by id works too
    assert done.returncode == 0, done.stderr
    assert await role_of(env, token) == "user"
    listed = await asyncio.to_thread(admin_command, url, "list")
    assert user.id not in listed.stdout


async def test_the_command_names_what_is_wrong(env: Env, unique: str) -> None:
    url = env.settings.database_url
    missing = await asyncio.to_thread(admin_command, url, "grant", f"nobody_{unique}")
    assert missing.returncode == 1
    assert f"no account named nobody_{unique}" in missing.stderr and "Traceback" not in missing.stderr
    usage = await asyncio.to_thread(admin_command, url, "promote", "x")
    assert usage.returncode == 2 and "grant" in usage.stderr and "Traceback" not in usage.stderr


async def test_signing_up_with_a_would_be_admin_name_grants_nothing(env: Env, unique: str) -> None:
    for name in ("admin", "root", "administrator"):
        reply = await env.stub.Register(
            auth_pb2.RegisterRequest(
                username=f"{name}{unique}",
                email=f"{name}{unique}@example.com",
                password=f"pw-{unique}-harbour",
            )
        )
        assert reply.user.role == "user"


async def test_admin_ids_setting_grants_by_account_id(postgres_url: str, unique: str) -> None:
    async with serve_auth(settings_for(postgres_url)) as plain:
        chosen, password = await register(plain, unique, "chosen")
        bystander, other_password = await register(plain, unique, "bystander")
    async with serve_auth(settings_for(postgres_url, auth_admin_ids=f" {chosen.id.upper()} ,")) as served:
        assert await role_of(served, (await login(served, chosen.username, password)).token) == "admin"
        assert (await served.stub.GetUser(auth_pb2.GetUserRequest(user_id=chosen.id))).role == "admin"
        assert (
            await role_of(served, (await login(served, bystander.username, other_password)).token) == "user"
        )


def test_admin_users_setting_stops_the_service_with_what_to_do(postgres_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_")}
    env.update(
        {"EASEL_DATABASE_URL": postgres_url, "EASEL_AUTH_ADMIN_USERS": "alice", "EASEL_GRPC_PORT": "0"}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "services.auth"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "EASEL_AUTH_ADMIN_USERS" in proc.stderr and "admin grant" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_admin_ids_are_refused_by_name(postgres_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_")}
    env.update({"EASEL_DATABASE_URL": postgres_url, "EASEL_AUTH_ADMIN_IDS": "alice", "EASEL_GRPC_PORT": "0"})
    proc = subprocess.run(
        [sys.executable, "-m", "services.auth"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "EASEL_AUTH_ADMIN_IDS" in proc.stderr and "Traceback" not in proc.stderr
