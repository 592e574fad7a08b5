"""The auth service over real gRPC sockets against a real Postgres.

Most tests talk to an in-process server (cheap argon2id parameters, a 2-second throttle window); two
start `python -m services.auth` as a real process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from argon2 import PasswordHasher
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from easel.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.__main__ import MIGRATIONS
from services.auth.housekeeping import housekeep
from services.auth.passwords import Passwords
from services.auth.servicer import AuthServicer
from services.auth.settings import AuthSettings
from services.auth.store import Store
from services.auth.throttle import Throttle
from services.common.db import database
from services.common.errors import EaselError, from_rpc_error
from services.common.grpc_server import GrpcServer
from services.local.infra import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
WINDOW_S = 2
MAX_FAILURES = 3
MAX_FAILURES_PER_ADDRESS = 5
MAX_KEYS = 3
TOKEN_FORMAT = re.compile(r"(ess|esk)_[0-9a-f]{32}_[A-Za-z0-9_-]{43}")


def settings_for(postgres_url: str, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "database_url": postgres_url,
        "grpc_port": 0,
        "metrics_port": 0,
        "auth_argon2_time_cost": 1,
        "auth_argon2_memory_kib": 256,
        "auth_argon2_parallelism": 1,
        "auth_hash_workers": 2,
        "auth_login_max_failures": MAX_FAILURES,
        "auth_login_max_failures_per_address": MAX_FAILURES_PER_ADDRESS,
        "auth_login_window_s": WINDOW_S,
        "auth_login_lockout_s": WINDOW_S,
        "auth_max_api_keys": MAX_KEYS,
        "shutdown_grace_s": 1.0,
    }
    values.update(overrides)
    return AuthSettings(**values)


class Env:
    """What a test needs: the stub, a raw pool on the auth schema, and the settings in force."""

    def __init__(
        self, stub: auth_pb2_grpc.AuthStub, pool: asyncpg.Pool, settings: AuthSettings, target: str = ""
    ) -> None:
        self.stub = stub
        self.pool = pool
        self.settings = settings
        self.target = target  # host:port of the server, for a gateway in front of it


@asynccontextmanager
async def serve_auth(settings: AuthSettings) -> AsyncIterator[Env]:
    """A real auth gRPC server in this process on a free port, and a channel to it."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(database(settings.database_url, "auth", MIGRATIONS, 1, 4))
        passwords = stack.enter_context(Passwords(settings))
        server = GrpcServer("auth", settings)
        server.add(
            auth_pb2_grpc.add_AuthServicer_to_server,
            AuthServicer(Store(pool), Throttle(pool, settings), passwords, settings),
            "easel.auth.v1.Auth",
        )
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close)
        stack.push_async_callback(server.server.stop, 0)
        yield Env(auth_pb2_grpc.AuthStub(channel), pool, settings, f"127.0.0.1:{port}")


@pytest_asyncio.fixture(scope="module")
async def env(postgres_url: str) -> AsyncIterator[Env]:
    async with serve_auth(settings_for(postgres_url)) as served:
        yield served


async def fails(call: Awaitable[Any]) -> EaselError:
    """The user-facing error a call ended with (the test fails if it succeeded)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return from_rpc_error(info.value, "auth")


def password_for(unique: str) -> str:
    return f"violet-harbour-{unique}-lantern"


async def register(env: Env, unique: str, name: str = "user") -> tuple[auth_pb2.User, str]:
    username = f"{name}_{unique}"
    password = password_for(unique)
    reply = await env.stub.Register(
        auth_pb2.RegisterRequest(username=username, email=f"{username}@example.com", password=password)
    )
    return reply.user, password


async def login(env: Env, username: str, password: str, address: str = "") -> auth_pb2.LoginResponse:
    reply: auth_pb2.LoginResponse = await env.stub.Login(
        auth_pb2.LoginRequest(username=username, password=password, client_address=address)
    )
    return reply


# Round trips


async def test_register_login_authenticate_logout_round_trip(env: Env, unique: str) -> None:
    user, password = await register(env, unique)
    assert user.role == "user" and user.id and user.created_at.seconds > 0
    fetched = await env.stub.GetUser(auth_pb2.GetUserRequest(user_id=user.id))
    assert fetched == user

    by_name = await login(env, user.username.upper(), password)
    by_email = await login(env, user.email.upper(), password)
    assert by_name.user == user and by_email.user == user
    assert TOKEN_FORMAT.fullmatch(by_name.token) and by_name.token.startswith("ess_")
    assert by_name.token != by_email.token
    ttl = by_name.expires_at.seconds - time.time()
    assert abs(ttl - env.settings.auth_session_ttl_s) < 60

    principal = await env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=by_name.token))
    assert (principal.user_id, principal.username, principal.role) == (user.id, user.username, "user")
    assert principal.credential_kind == "session"
    assert principal.credential_id.replace("-", "") == by_name.token.split("_")[1]
    assert "account" in principal.scopes and "generate" in principal.scopes

    await env.stub.Logout(auth_pb2.LogoutRequest(token=by_name.token))
    err = await fails(env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=by_name.token)))
    assert (err.code, err.status) == ("invalid_token", grpc.StatusCode.UNAUTHENTICATED)
    # Logging out twice is fine, and the other session lives on.
    await env.stub.Logout(auth_pb2.LogoutRequest(token=by_name.token))
    still = await env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=by_email.token))
    assert still.user_id == user.id


async def test_api_key_lifecycle_and_revocation_is_immediate(env: Env, unique: str) -> None:
    user, _ = await register(env, unique)
    created = await env.stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(user_id=user.id, name=" laptop "))
    secret = created.secret
    assert TOKEN_FORMAT.fullmatch(secret) and secret.startswith("esk_")
    assert created.key.name == "laptop" and secret.startswith(created.key.prefix)
    assert len(created.key.prefix) == 12
    assert list(created.key.scopes) == ["generate", "images:read", "images:write"]
    ttl = created.key.expires_at.seconds - created.key.created_at.seconds
    assert abs(ttl - env.settings.auth_api_key_ttl_s) <= 1

    principal = await env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=secret))
    assert principal.credential_kind == "api_key" and principal.credential_id == created.key.id
    assert principal.user_id == user.id and "account" not in principal.scopes

    listed = await env.stub.ListApiKeys(auth_pb2.ListApiKeysRequest(user_id=user.id))
    assert [k.id for k in listed.keys] == [created.key.id]
    assert listed.keys[0].last_used_at.seconds > 0  # the Authenticate above
    assert secret not in str(listed)

    # Only the owner can revoke it.
    other, _ = await register(env, unique, "other")
    err = await fails(
        env.stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(user_id=other.id, key_id=created.key.id))
    )
    assert (err.code, err.status) == ("api_key_not_found", grpc.StatusCode.NOT_FOUND)
    assert (await env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=secret))).user_id == user.id

    await env.stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(user_id=user.id, key_id=created.key.id))
    err = await fails(env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=secret)))
    assert (err.code, err.status) == ("invalid_token", grpc.StatusCode.UNAUTHENTICATED)
    assert not (await env.stub.ListApiKeys(auth_pb2.ListApiKeysRequest(user_id=user.id))).keys
    err = await fails(env.stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(user_id=user.id, key_id="nope")))
    assert err.code == "api_key_not_found"


async def test_api_key_requests_are_validated(env: Env, unique: str) -> None:
    user, _ = await register(env, unique)
    bad = [
        (auth_pb2.CreateApiKeyRequest(user_id=user.id, name="  "), "invalid_key_name", "name"),
        (auth_pb2.CreateApiKeyRequest(user_id=user.id, name="k", scopes=["root"]), "invalid_scope", "scopes"),
        (
            auth_pb2.CreateApiKeyRequest(user_id=user.id, name="k", ttl_seconds=-5),
            "invalid_ttl",
            "ttl_seconds",
        ),
        (
            auth_pb2.CreateApiKeyRequest(user_id=user.id, name="k", ttl_seconds=10**12),
            "invalid_ttl",
            "ttl_seconds",
        ),
    ]
    for request, code, field in bad:
        err = await fails(env.stub.CreateApiKey(request))
        assert (err.code, err.field, err.status) == (code, field, grpc.StatusCode.INVALID_ARGUMENT)
    err = await fails(
        env.stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(user_id="00000000-0000-0000-0000-000000000000", name="k")
        )
    )
    assert (err.code, err.status) == ("user_not_found", grpc.StatusCode.NOT_FOUND)

    short = await env.stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(
            user_id=user.id, name="k", scopes=["account", "generate"], ttl_seconds=600
        )
    )
    assert list(short.key.scopes) == ["generate", "account"]
    assert short.key.expires_at.seconds - short.key.created_at.seconds == 600
    for _ in range(MAX_KEYS - 1):
        await env.stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(user_id=user.id, name="k"))
    err = await fails(env.stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(user_id=user.id, name="k")))
    assert (err.code, err.status) == ("too_many_api_keys", grpc.StatusCode.FAILED_PRECONDITION)
    assert len((await env.stub.ListApiKeys(auth_pb2.ListApiKeysRequest(user_id=user.id))).keys) == MAX_KEYS


async def test_expired_session_and_key_are_refused(env: Env, unique: str) -> None:
    user, password = await register(env, unique)
    session = (await login(env, user.username, password)).token
    key = await env.stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(user_id=user.id, name="k"))
    await env.pool.execute(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE user_id = $1::uuid", user.id
    )
    await env.pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE user_id = $1::uuid", user.id
    )
    err = await fails(env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=session)))
    assert (err.code, err.status) == ("session_expired", grpc.StatusCode.UNAUTHENTICATED)
    err = await fails(env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=key.secret)))
    assert (err.code, err.status) == ("api_key_expired", grpc.StatusCode.UNAUTHENTICATED)


async def test_forged_and_malformed_tokens_are_refused(env: Env, unique: str) -> None:
    user, password = await register(env, unique)
    token = (await login(env, user.username, password)).token
    kind, ident, secret = token.split("_", 2)
    forged_secret = f"{kind}_{ident}_{'A' * 43}"
    other_kind = f"esk_{ident}_{secret}"
    for bad in ["", "garbage", token[:-1], token + "x", forged_secret, other_kind, "Bearer " + token]:
        err = await fails(env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=bad)))
        assert (err.code, err.status) == ("invalid_token", grpc.StatusCode.UNAUTHENTICATED), bad
    # None of that hurt the real session; logging out with a forged token does not end it either.
    await env.stub.Logout(auth_pb2.LogoutRequest(token=forged_secret))
    assert (await env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=token))).user_id == user.id


# Registration rules


async def test_duplicates_are_refused_case_insensitively_without_touching_the_account(
    env: Env, unique: str
) -> None:
    user, password = await register(env, unique)
    dup_name = await fails(
        env.stub.Register(
            auth_pb2.RegisterRequest(
                username=user.username.upper(),
                email=f"new_{unique}@example.com",
                password="another-fine-password",
            )
        )
    )
    assert (dup_name.code, dup_name.field, dup_name.status) == (
        "username_taken",
        "username",
        grpc.StatusCode.ALREADY_EXISTS,
    )
    dup_email = await fails(
        env.stub.Register(
            auth_pb2.RegisterRequest(
                username=f"new_{unique}", email=user.email.upper(), password="another-fine-password"
            )
        )
    )
    assert (dup_email.code, dup_email.field) == ("email_taken", "email")
    # The original account still signs in with its own password, and the failed one did not appear.
    assert (await login(env, user.username, password)).user.id == user.id
    err = await fails(login(env, f"new_{unique}", "another-fine-password"))
    assert err.code == "invalid_credentials"


@pytest.mark.parametrize(
    ("username", "email", "password", "code", "field"),
    [
        ("ab", "a@example.com", "violet-harbour-lantern", "invalid_username", "username"),
        ("has space", "a@example.com", "violet-harbour-lantern", "invalid_username", "username"),
        ("_leading", "a@example.com", "violet-harbour-lantern", "invalid_username", "username"),
        ("x" * 33, "a@example.com", "violet-harbour-lantern", "invalid_username", "username"),
        ("valid_name", "not-an-email", "violet-harbour-lantern", "invalid_email", "email"),
        ("valid_name", "a@localhost", "violet-harbour-lantern", "invalid_email", "email"),
        ("valid_name", "a b@example.com", "violet-harbour-lantern", "invalid_email", "email"),
        ("valid_name", "a@example.com", "short-pw", "password_too_short", "password"),
        ("valid_name", "a@example.com", "x" * 300 + "-Q9", "password_too_long", "password"),
        ("valid_name", "a@example.com", "my-VALID_NAME-rules", "password_contains_username", "password"),
        ("valid_name", "a@example.com", "Password2024!", "password_too_common", "password"),
        ("valid_name", "a@example.com", "qwertyuiop", "password_too_common", "password"),
        ("valid_name", "a@example.com", "zzzzzzzzzzzz", "password_too_common", "password"),
    ],
)
async def test_malformed_registrations_get_their_own_codes(
    env: Env, username: str, email: str, password: str, code: str, field: str
) -> None:
    err = await fails(
        env.stub.Register(auth_pb2.RegisterRequest(username=username, email=email, password=password))
    )
    assert (err.code, err.field, err.status) == (code, field, grpc.StatusCode.INVALID_ARGUMENT)
    assert err.message.endswith(".") and len(err.message) > 20
    assert (
        await env.pool.fetchval("SELECT count(*) FROM users WHERE lower(username) = lower($1)", username) == 0
    )


# Passwords


async def test_change_password_ends_other_sessions_and_keeps_the_callers(env: Env, unique: str) -> None:
    user, password = await register(env, unique)
    mine = (await login(env, user.username, password)).token
    elsewhere = (await login(env, user.username, password)).token
    new_password = f"quiet-meadow-{unique}-copper"

    wrong = await fails(
        env.stub.ChangePassword(
            auth_pb2.ChangePasswordRequest(
                user_id=user.id, current_password="not-my-password", new_password=new_password
            )
        )
    )
    assert (wrong.code, wrong.field) == ("wrong_password", "current_password")
    weak = await fails(
        env.stub.ChangePassword(
            auth_pb2.ChangePasswordRequest(
                user_id=user.id, current_password=password, new_password="Password123!"
            )
        )
    )
    assert (weak.code, weak.field) == ("password_too_common", "new_password")

    await env.stub.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            user_id=user.id, current_password=password, new_password=new_password, keep_session_token=mine
        )
    )
    assert (await env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=mine))).user_id == user.id
    err = await fails(env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=elsewhere)))
    assert err.code == "invalid_token"
    assert (await fails(login(env, user.username, password))).code == "invalid_credentials"
    assert (await login(env, user.username, new_password)).user.id == user.id


async def test_login_rehashes_a_password_hashed_with_old_parameters(env: Env, unique: str) -> None:
    user, password = await register(env, unique)
    old_hash = PasswordHasher(time_cost=2, memory_cost=512, parallelism=1).hash(password)
    await env.pool.execute("UPDATE users SET password_hash = $2 WHERE id = $1::uuid", user.id, old_hash)
    await login(env, user.username, password)
    new_hash = await env.pool.fetchval("SELECT password_hash FROM users WHERE id = $1::uuid", user.id)
    assert new_hash != old_hash and new_hash.startswith("$argon2id$") and ",t=1," in new_hash
    assert "m=256" in new_hash
    await login(env, user.username, password)  # the new hash still verifies


# Brute force


async def test_unknown_user_and_wrong_password_get_identical_answers(env: Env, unique: str) -> None:
    user, _ = await register(env, unique)
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await login(env, user.username, "not-the-password", f"10.1.0.1-{unique}")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await login(env, f"ghost_{unique}", "not-the-password", f"10.1.0.2-{unique}")
    assert wrong.value.code() == unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.value.details() == unknown.value.details()
    assert tuple(wrong.value.trailing_metadata()) == tuple(unknown.value.trailing_metadata())
    assert from_rpc_error(wrong.value, "auth").code == "invalid_credentials"


async def test_throttling_locks_the_address_after_max_failures_and_lifts_after_the_window(
    env: Env, unique: str
) -> None:
    user, password = await register(env, unique)
    address = f"10.2.0.1-{unique}"
    for i in range(MAX_FAILURES):
        err = await fails(login(env, user.username, f"wrong-guess-{i}", address))
        assert err.code == "invalid_credentials"
    locked = await fails(login(env, user.username, password, address))
    assert (locked.code, locked.status) == ("login_throttled", grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert locked.retry_after is not None and 1 <= locked.retry_after <= WINDOW_S
    assert f"try again in {locked.retry_after} seconds" in locked.message
    # The lock is per (account, address): the account signs in from elsewhere, someone else from here.
    assert (await login(env, user.username, password, f"10.2.9.1-{unique}")).user.id == user.id
    other, other_password = await register(env, unique, "bystander")
    await login(env, other.username, other_password, address)

    await asyncio.sleep(WINDOW_S + 0.3)
    assert (await login(env, user.username, password, address)).user.id == user.id
    # Success cleared the pair's count: a single failure now is no lockout.
    assert (await fails(login(env, user.username, "wrong-again", address))).code == "invalid_credentials"
    assert (await login(env, user.username, password, address)).user.id == user.id


async def test_throttling_per_client_address_spans_accounts(env: Env, unique: str) -> None:
    address = f"10.3.0.1-{unique}"
    for i in range(MAX_FAILURES_PER_ADDRESS):
        # Unknown accounts count as much as real ones (otherwise the lock would reveal which exist).
        err = await fails(login(env, f"probe{i}_{unique}", "wrong-password", address))
        assert err.code == "invalid_credentials"
    user, password = await register(env, unique)
    locked = await fails(login(env, user.username, password, address))
    assert locked.code == "login_throttled"
    assert (await login(env, user.username, password, f"10.3.0.2-{unique}")).user.id == user.id


async def test_stale_throttle_rows_and_old_sessions_are_purged(env: Env, unique: str) -> None:
    user, password = await register(env, unique)
    await login(env, user.username, password, f"10.4.0.1-{unique}")
    await fails(login(env, user.username, "wrong-password"))
    key = f"account:{user.id}"
    await env.pool.execute(
        "UPDATE login_throttle SET window_start = now() - interval '1 hour' WHERE key = $1", key
    )
    # An address not seen for longer than auth_known_address_ttl_s is forgotten.
    known = "SELECT count(*) FROM known_addresses WHERE user_id = $1::uuid"
    assert await env.pool.fetchval(known, user.id) == 1
    await env.pool.execute(
        "UPDATE known_addresses SET last_seen = now() - make_interval(secs => $2) WHERE user_id = $1::uuid",
        user.id,
        env.settings.auth_known_address_ttl_s + 60.0,
    )
    await housekeep(Store(env.pool), Throttle(env.pool, env.settings))
    assert await env.pool.fetchval("SELECT count(*) FROM login_throttle WHERE key = $1", key) == 0
    assert await env.pool.fetchval(known, user.id) == 0


async def test_login_metrics_count_outcomes(env: Env, unique: str) -> None:
    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before_ok = sample("easel_auth_logins_total", {"outcome": "success"})
    before_bad = sample("easel_auth_logins_total", {"outcome": "invalid_credentials"})
    before_auth = sample("easel_auth_authenticate_latency_seconds_count", {"kind": "session"})
    user, password = await register(env, unique)
    token = (await login(env, user.username, password)).token
    await fails(login(env, user.username, "wrong-password"))
    await env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=token))
    assert sample("easel_auth_logins_total", {"outcome": "success"}) == before_ok + 1
    assert sample("easel_auth_logins_total", {"outcome": "invalid_credentials"}) == before_bad + 1
    assert sample("easel_auth_authenticate_latency_seconds_count", {"kind": "session"}) == before_auth + 1


# The real process


def _env_for(postgres_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_")}
    env.update({"EASEL_DATABASE_URL": postgres_url, "EASEL_METRICS_PORT": "0", "EASEL_GRPC_PORT": "0"})
    env.update(extra)
    return env


def test_bad_database_url_exits_with_one_line_naming_it(postgres_url: str) -> None:
    bad_url = postgres_url.rsplit("/", 1)[0] + "/no_such_database"
    proc = subprocess.run(
        [sys.executable, "-m", "services.auth"],
        cwd=ROOT,
        env=_env_for(bad_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "EASEL_DATABASE_URL" in lines[0] and "Traceback" not in proc.stderr + proc.stdout


def test_bad_setting_exits_with_one_line_naming_it(postgres_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.auth"],
        cwd=ROOT,
        env=_env_for(postgres_url, EASEL_AUTH_LOGIN_WINDOW_S="soon"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "EASEL_AUTH_LOGIN_WINDOW_S" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def auth_process(postgres_url: str) -> Iterator[tuple[int, int]]:
    grpc_port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.auth"],
        cwd=ROOT,
        env=_env_for(
            postgres_url,
            EASEL_GRPC_PORT=str(grpc_port),
            EASEL_METRICS_PORT=str(metrics_port),
            # Costly enough that skipping the hash would show in the timings below.
            EASEL_AUTH_ARGON2_TIME_COST="2",
            EASEL_AUTH_ARGON2_MEMORY_KIB="32768",
            EASEL_AUTH_ARGON2_PARALLELISM="1",
            EASEL_AUTH_LOGIN_MAX_FAILURES="20",
            EASEL_SHUTDOWN_GRACE_S="2",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", grpc_port, 30, proc)
        yield grpc_port, metrics_port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_real_process_serves_auth_and_hides_which_accounts_exist(
    auth_process: tuple[int, int], unique: str
) -> None:
    grpc_port, metrics_port = auth_process
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="easel.auth.v1.Auth"), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = auth_pb2_grpc.AuthStub(channel)
        username, password = f"proc_{unique}", password_for(unique)
        await stub.Register(
            auth_pb2.RegisterRequest(username=username, email=f"{username}@example.com", password=password)
        )
        token = (await stub.Login(auth_pb2.LoginRequest(username=username, password=password))).token
        assert (await stub.Authenticate(auth_pb2.AuthenticateRequest(token=token))).username == username

        async def timed_failure(name: str) -> float:
            start = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Login(auth_pb2.LoginRequest(username=name, password="not-the-password"))
            assert from_rpc_error(info.value, "auth").code == "invalid_credentials"
            return time.perf_counter() - start

        wrong = [await timed_failure(username) for _ in range(4)]
        unknown = [await timed_failure(f"ghost_{unique}") for _ in range(4)]
        # Without the dummy hash an unknown user would answer several times faster.
        assert min(unknown) > 0.5 * min(wrong), (wrong, unknown)

    metrics = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    )
    assert 'easel_auth_logins_total{outcome="success"} 1.0' in metrics
    assert 'easel_auth_logins_total{outcome="invalid_credentials"} 8.0' in metrics
    assert "easel_auth_authenticate_latency_seconds_bucket" in metrics


def test_real_process_stops_gracefully_on_sigterm(postgres_url: str) -> None:
    grpc_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.auth"],
        cwd=ROOT,
        env=_env_for(postgres_url, EASEL_GRPC_PORT=str(grpc_port), EASEL_SHUTDOWN_GRACE_S="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port("127.0.0.1", grpc_port, 30, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = (s.decode() for s in proc.communicate(timeout=20))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert '"msg": "stopped"' in out and "Traceback" not in err
