"""Text Postgres cannot store never becomes an internal error in auth (issue 18, finding 3).

A NUL character (Postgres refuses it in text) or a lone surrogate (not UTF-8 at all) in any text the
service stores or looks up is refused with `invalid_field` naming the field: over gRPC for what a
request can carry (a lone surrogate cannot cross gRPC, whose strings are UTF-8), and by the store
itself for everything, as a second line. Malformed credentials, non-ASCII ones included, are
`invalid_token` (unauthenticated), never an internal error.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from easel.auth.v1 import auth_pb2
from services.auth.store import Store
from services.auth.throttle import Subject, Throttle
from services.common.errors import EaselError

from .test_auth_service import Env, fails, login, password_for, register, serve_auth, settings_for

NUL = "\x00"
SURROGATE = "\ud800"


@pytest_asyncio.fixture(scope="module")
async def env(postgres_url: str) -> AsyncIterator[Env]:
    async with serve_auth(settings_for(postgres_url)) as served:
        yield served


@pytest.mark.parametrize(
    ("username", "email", "field"),
    [
        ("nul" + NUL + "name", "a@example.com", "username"),
        ("validname", "a" + NUL + "b@example.com", "email"),
        ("validname", "ab@exa" + NUL + "mple.com", "email"),
    ],
)
async def test_registration_with_nul_is_an_invalid_field(
    env: Env, unique: str, username: str, email: str, field: str
) -> None:
    err = await fails(
        env.stub.Register(
            auth_pb2.RegisterRequest(
                username=f"{username}{unique}", email=email, password=password_for(unique)
            )
        )
    )
    assert (err.code, err.field, err.status) == ("invalid_field", field, grpc.StatusCode.INVALID_ARGUMENT)
    assert "NUL" in err.message and err.message.endswith(".")


async def test_login_with_nul_is_an_invalid_field(env: Env, unique: str) -> None:
    user, password = await register(env, unique)
    for name in (f"{user.username}{NUL}", f"{NUL}x@example.com", NUL):
        err = await fails(login(env, name, password, f"10.40.0.1-{unique}"))
        assert (err.code, err.field, err.status) == (
            "invalid_field",
            "username",
            grpc.StatusCode.INVALID_ARGUMENT,
        ), name
    # A NUL in the client address (a forwarded header) is no reason to refuse the sign-in itself.
    assert (await login(env, user.username, password, f"10.40.0.2{NUL}-{unique}")).user.id == user.id
    # And a NUL in a password is just a wrong password.
    assert (await fails(login(env, user.username, password + NUL, f"10.40.0.3-{unique}"))).code == (
        "invalid_credentials"
    )


async def test_api_key_names_and_scopes_with_nul_are_invalid_fields(env: Env, unique: str) -> None:
    user, _ = await register(env, unique)
    for request, field in (
        (auth_pb2.CreateApiKeyRequest(user_id=user.id, name=f"lap{NUL}top"), "name"),
        (auth_pb2.CreateApiKeyRequest(user_id=user.id, name="k", scopes=[f"generate{NUL}"]), "scopes"),
    ):
        err = await fails(env.stub.CreateApiKey(request))
        assert (err.code, err.field) == ("invalid_field", field)


async def test_a_password_change_from_an_address_with_nul_works(env: Env, unique: str) -> None:
    user, password = await register(env, unique)
    await env.stub.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            user_id=user.id,
            current_password=password,
            new_password=f"amber-signal-{unique}-orchard",
            client_address=f"10.41.0.1{NUL}",
        )
    )


@pytest.mark.parametrize(
    "token",
    [
        "ess_" + "é" * 32 + "_" + "A" * 43,
        "esk_" + "0" * 32 + "_" + "Ä" * 43,
        "ess_" + "0" * 32 + "_" + "A" * 42 + NUL,
        NUL,
        "Bearer ü",
        "\u202eess_" + "0" * 32 + "_" + "A" * 43,
        "ess_" + "\uff10" * 32 + "_" + "A" * 43,  # fullwidth zeros: digits to Unicode, not to us
        "x" * 10_000,
    ],
)
async def test_malformed_and_non_ascii_tokens_are_unauthenticated(env: Env, token: str) -> None:
    err = await fails(env.stub.Authenticate(auth_pb2.AuthenticateRequest(token=token)))
    assert (err.code, err.status) == ("invalid_token", grpc.StatusCode.UNAUTHENTICATED)
    await env.stub.Logout(auth_pb2.LogoutRequest(token=token))  # quietly nothing to end


@pytest.mark.parametrize("bad", [NUL, SURROGATE])
async def test_the_store_itself_refuses_what_postgres_cannot_hold(env: Env, unique: str, bad: str) -> None:
    """The second line: whatever reaches the store without passing the service's checks."""
    db = Store(env.pool)
    user, password = await register(env, unique)
    user_id = uuid.UUID(user.id)
    calls = {
        "username": lambda: db.create_user(f"u{bad}{unique}", f"{unique}@example.com", "hash"),
        "email": lambda: db.create_user(f"u{unique}", f"{bad}{unique}@example.com", "hash"),
        "login": lambda: db.user_by_login(f"{bad}{unique}"),
        "name": lambda: db.create_api_key(
            uuid.uuid4(), user_id, f"k{bad}", "esk_00000000", b"x" * 32, ["generate"], 600, 10
        ),
        "scopes": lambda: db.create_api_key(
            uuid.uuid4(), user_id, "k", "esk_00000000", b"x" * 32, [f"generate{bad}"], 600, 10
        ),
    }
    for field, call in calls.items():
        with pytest.raises(EaselError) as info:
            await call()
        assert (info.value.code, info.value.status) == ("invalid_field", grpc.StatusCode.INVALID_ARGUMENT), (
            field
        )
    # The throttle keys on what was typed and where from: such text is made storable, not refused.
    throttle = Throttle(env.pool, env.settings)
    subject = Subject(f"name:{bad}{unique}", f"10.42.0.1{bad}")
    verdict = await throttle.check(subject)
    await throttle.failed(subject, verdict.known)
    await db.create_session(uuid.uuid4(), user_id, b"y" * 32, f"10.42.0.1{bad}", 600)
    assert (await login(env, user.username, password)).user.id == user.id
