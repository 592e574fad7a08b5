"""Per-user settings of the compatible client faces in auth (GetClientSettings/PutClientSettings):
what the gateway keeps A1111's server-wide /sdapi/v1/options in, one set per user."""

from __future__ import annotations

import json

import grpc

from easel.auth.v1 import auth_pb2
from tests.integration.test_auth_service import Env, env, fails, register

__all__ = ["env"]  # the module-scoped in-process auth server of test_auth_service


async def test_client_settings_round_trip_per_user(env: Env, unique: str) -> None:
    alice, _ = await register(env, unique, "alice")
    bob, _ = await register(env, unique, "bob")
    empty = await env.stub.GetClientSettings(
        auth_pb2.GetClientSettingsRequest(user_id=alice.id, face="a1111")
    )
    assert (empty.face, empty.settings_json) == ("a1111", "{}")

    saved = await env.stub.PutClientSettings(
        auth_pb2.PutClientSettingsRequest(
            user_id=alice.id, face="a1111", settings_json='{"sd_model_checkpoint": "tiny-sdxl", "x": "é"}'
        )
    )
    assert json.loads(saved.settings_json) == {"sd_model_checkpoint": "tiny-sdxl", "x": "é"}
    again = await env.stub.GetClientSettings(
        auth_pb2.GetClientSettingsRequest(user_id=alice.id, face="a1111")
    )
    assert json.loads(again.settings_json) == {"sd_model_checkpoint": "tiny-sdxl", "x": "é"}
    # Bob's are his own; a second put replaces the whole object.
    theirs = await env.stub.GetClientSettings(auth_pb2.GetClientSettingsRequest(user_id=bob.id, face="a1111"))
    assert theirs.settings_json == "{}"
    await env.stub.PutClientSettings(
        auth_pb2.PutClientSettingsRequest(user_id=alice.id, face="a1111", settings_json='{"a": 1}')
    )
    again = await env.stub.GetClientSettings(
        auth_pb2.GetClientSettingsRequest(user_id=alice.id, face="a1111")
    )
    assert json.loads(again.settings_json) == {"a": 1}


async def test_client_settings_refuse_bad_input(env: Env, unique: str) -> None:
    user, _ = await register(env, unique)

    def put(
        settings_json: str, face: str = "a1111", user_id: str = user.id
    ) -> auth_pb2.PutClientSettingsRequest:
        return auth_pb2.PutClientSettingsRequest(user_id=user_id, face=face, settings_json=settings_json)

    cases = [
        (put("{}", face="comfy"), "unknown_face"),
        (put("[1, 2]"), "invalid_settings"),
        (put("{oops"), "invalid_settings"),
        (put('{"a": "\\u0000"}'), "invalid_settings"),
        (put(json.dumps({"a": "x" * 20_000})), "settings_too_large"),
    ]
    for request, code in cases:
        err = await fails(env.stub.PutClientSettings(request))
        assert (err.code, err.status) == (code, grpc.StatusCode.INVALID_ARGUMENT), request.settings_json[:40]
    for user_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        err = await fails(env.stub.PutClientSettings(put("{}", user_id=user_id)))
        assert (err.code, err.status) == ("user_not_found", grpc.StatusCode.NOT_FOUND)
        err = await fails(
            env.stub.GetClientSettings(auth_pb2.GetClientSettingsRequest(user_id=user_id, face="a1111"))
        )
        assert err.code == "user_not_found"
    # Nothing was stored by the refused calls.
    kept = await env.stub.GetClientSettings(auth_pb2.GetClientSettingsRequest(user_id=user.id, face="a1111"))
    assert kept.settings_json == "{}"
