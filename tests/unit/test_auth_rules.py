"""Token format, password policy and settings of the auth service (no servers needed)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.auth import policy, tokens
from services.auth.settings import AuthSettings
from services.common.errors import EaselError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["session", "api_key"])
def test_new_tokens_parse_back_to_their_kind_id_and_digest(kind: tokens.Kind) -> None:
    made = tokens.new_token(kind)
    assert made.token.startswith("ess_" if kind == "session" else "esk_") and len(made.token) == 80
    parsed = tokens.parse(made.token)
    assert parsed is not None
    assert (parsed.kind, parsed.id) == (kind, made.id)
    assert tokens.matches(parsed, made.digest)
    assert not tokens.matches(parsed, tokens.digest(made.token + "x"))
    assert made.display_prefix == made.token[:12]


@pytest.mark.parametrize(
    "token",
    [
        "",
        "ess_",
        "xyz_" + "0" * 32 + "_" + "a" * 43,
        "ess_" + "0" * 31 + "_" + "a" * 44,
        "ess_" + "0" * 32 + "_" + "a" * 42,
    ],
)
def test_malformed_tokens_do_not_parse(token: str) -> None:
    assert tokens.parse(token) is None


def test_two_tokens_never_repeat() -> None:
    assert len({tokens.new_token("session").token for _ in range(200)}) == 200


@pytest.mark.parametrize(
    ("password", "code"),
    [
        ("abc", "password_too_short"),
        ("iloveyou2024", "password_too_common"),
        ("Sunshine!!!!", "password_too_common"),
        ("1234567890", "password_too_common"),
        ("xx-alice-xx-long", "password_contains_username"),
        ("ALICEALICEALICE", "password_contains_username"),
    ],
)
def test_password_policy_names_each_violation(password: str, code: str) -> None:
    with pytest.raises(EaselError) as info:
        policy.check_password(password, "Alice", 10)
    assert info.value.code == code and info.value.field == "password"


def test_a_reasonable_password_passes() -> None:
    policy.check_password("copper kettle on a quiet hill", "alice", 10)


def test_scopes_default_and_canonical_order() -> None:
    assert policy.check_scopes([]) == list(policy.DEFAULT_KEY_SCOPES)
    assert policy.check_scopes(["account", "images:read", "account"]) == ["images:read", "account"]
    with pytest.raises(EaselError) as info:
        policy.check_scopes(["images:read", "sudo"])
    assert info.value.code == "invalid_scope" and "sudo" in info.value.message


def test_admin_ids_setting_is_a_list_of_account_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EASEL_GRPC_PORT", "EASEL_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    one, two = uuid.uuid4(), uuid.uuid4()
    settings = AuthSettings(auth_admin_ids=f" {str(one).upper()}, ,{two.hex} ")
    assert settings.admin_ids == {one, two}
    assert (settings.grpc_port, settings.metrics_port) == (50051, 9101)
    with pytest.raises(ValidationError, match="not an account id"):
        AuthSettings(auth_admin_ids="ada")
    with pytest.raises(ValidationError, match="admin grant"):
        AuthSettings(auth_admin_users="ada")


def test_argon2_memory_below_the_lane_minimum_is_refused_by_name() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from services.common.config import load_settings as l;"
            "from services.auth.settings import AuthSettings as A; l(A)",
        ],
        cwd=ROOT,
        env={"EASEL_AUTH_ARGON2_PARALLELISM": "4", "EASEL_AUTH_ARGON2_MEMORY_KIB": "16", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("easel: bad setting EASEL_AUTH_ARGON2_MEMORY_KIB:")
    assert "Traceback" not in proc.stderr
