"""What a valid username, email address, password, API key name and scope look like.

Each rule that can fail has its own error code, and its message says what to change.
"""

from __future__ import annotations

import json
import re

from services.common import limits
from services.common.errors import EaselError, invalid

USERNAME_MIN, USERNAME_MAX = limits.USERNAME_MIN_CHARS, limits.USERNAME_MAX_CHARS
EMAIL_MAX = limits.EMAIL_MAX_CHARS
PASSWORD_MAX = limits.PASSWORD_MAX_CHARS
KEY_NAME_MAX = limits.KEY_NAME_MAX_CHARS

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Deliberately loose: the only real test of an address is mail reaching it. This catches typos
# (no @, spaces, no dot in the domain) without refusing unusual but valid addresses.
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")

# What a session may do: everything. API keys get DEFAULT_KEY_SCOPES unless they ask for others.
SCOPES: dict[str, str] = {
    "generate": "submit, watch and cancel generation and edit jobs",
    "images:read": "list and open your images and the community gallery",
    "images:write": "change, share and delete your images",
    "account": "manage API keys and the password",
}
SESSION_SCOPES: tuple[str, ...] = tuple(SCOPES)
DEFAULT_KEY_SCOPES: tuple[str, ...] = ("generate", "images:read", "images:write")

# The most common passwords of at least a few characters (from public breach statistics), plus
# the obvious ones for this service. Compared in lower case, also with trailing digits and
# punctuation removed, so "Password2024!" counts as "password".
_COMMON = frozenset(
    """
    password passw0rd p@ssw0rd p@ssword password1 passwort motdepasse contrasena
    123456 1234567 12345678 123456789 1234567890 0123456789 0987654321 9876543210 111111 000000
    qwerty qwertyuiop qwertyui qwerty123 asdfghjkl asdfghjk zxcvbnm azerty 1q2w3e4r 1q2w3e4r5t
    1qaz2wsx qazwsx qazwsxedc abc123 abcdef abcdefgh abcdefghij abcd1234 a1b2c3d4
    letmein iloveyou welcome monkey dragon football baseball basketball soccer hockey sunshine
    princess trustno1 shadow master superman batman starwars pokemon whatever freedom secret
    changeme default administrator admin root login hello hellothere computer internet
    michael jennifer jordan charlie thomas jessica ashley daniel
    easel easelstudio stablediffusion diffusion midjourney artstudio
    """.split()
)


# Postgres refuses NUL in text, and a lone surrogate is not UTF-8 at all: either would fail a query.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_storable(value: str, field: str) -> str:
    """`value`, unless it holds a character no text column can (checked before any other rule, so
    such input is refused the same way in every field, and never reaches a query)."""
    if _UNSTORABLE.search(value):
        raise invalid(
            "invalid_field",
            f"'{field}' contains a NUL character or an unpaired surrogate, which cannot be stored; "
            "remove it and try again.",
            field,
        )
    return value


def storable_key(value: str) -> str:
    """Text used only as a key (a client address from a forwarded header, what was typed at a
    sign-in), with NUL and lone surrogates escaped: the caller cannot fix it, so it is not refused."""
    if not _UNSTORABLE.search(value):
        return value
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


def normalize_login(value: str) -> str:
    return value.strip().lower()


def check_username(username: str) -> str:
    name = username.strip()
    if not (USERNAME_MIN <= len(name) <= USERNAME_MAX) or not _USERNAME.fullmatch(name):
        raise invalid(
            "invalid_username",
            f"Choose a username of {USERNAME_MIN} to {USERNAME_MAX} characters: letters, digits, "
            "'_', '-' or '.', starting with a letter or digit.",
            "username",
        )
    return name


def check_email(email: str) -> str:
    address = email.strip()
    if len(address) > EMAIL_MAX or not _EMAIL.fullmatch(address):
        raise invalid(
            "invalid_email",
            "Enter a valid email address, such as name@example.com.",
            "email",
        )
    return address


def _looks_common(password: str) -> bool:
    lowered = password.lower()
    if lowered in _COMMON or lowered.rstrip("0123456789!@#$%^&*?.-_ ") in _COMMON:
        return True
    # One character repeated ("aaaaaaaaaa") or a run of the keyboard's digits.
    return len(set(lowered)) <= 2 or lowered in "01234567890123456789" or lowered in "98765432109876543210"


def check_password(password: str, username: str, min_length: int, field: str = "password") -> None:
    if len(password) < min_length:
        raise invalid(
            "password_too_short",
            f"Choose a password of at least {min_length} characters; a few unrelated words work well.",
            field,
        )
    if len(password) > PASSWORD_MAX:
        raise invalid(
            "password_too_long",
            f"Choose a password of at most {PASSWORD_MAX} characters.",
            field,
        )
    if username and username.strip().lower() in password.lower():
        raise invalid(
            "password_contains_username",
            "Choose a password that does not contain your username.",
            field,
        )
    if _looks_common(password):
        raise invalid(
            "password_too_common",
            "This password is too common and among the first an attacker tries; choose a less "
            "predictable one.",
            field,
        )


def check_key_name(name: str) -> str:
    clean = name.strip()
    if not clean or len(clean) > KEY_NAME_MAX or not clean.isprintable():
        raise invalid(
            "invalid_key_name",
            f"Name the API key with 1 to {KEY_NAME_MAX} printable characters, such as 'laptop script'.",
            "name",
        )
    return clean


def check_scopes(requested: list[str]) -> list[str]:
    if not requested:
        return list(DEFAULT_KEY_SCOPES)
    unknown = sorted({s for s in requested if s not in SCOPES})
    if unknown:
        raise EaselError(
            "invalid_scope",
            f"Unknown scope {', '.join(unknown)}; use any of: {', '.join(SCOPES)}.",
            field="scopes",
        )
    # Keep the canonical order so that listings do not depend on how the caller spelled the request.
    return [s for s in SCOPES if s in set(requested)]


# Compatible client faces that keep per-user settings, and how big those may grow.
CLIENT_FACES = frozenset({"a1111"})
CLIENT_SETTINGS_MAX = 16 * 1024


def check_client_face(face: str) -> str:
    if face not in CLIENT_FACES:
        raise invalid(
            "unknown_face",
            f"No client settings for {face!r}; use one of: {', '.join(sorted(CLIENT_FACES))}.",
            "face",
        )
    return face


def check_client_settings(settings_json: str) -> str:
    """The settings as compact JSON text: an object of at most CLIENT_SETTINGS_MAX bytes."""
    if len(settings_json.encode()) > CLIENT_SETTINGS_MAX:
        raise invalid(
            "settings_too_large",
            f"The settings take more than {CLIENT_SETTINGS_MAX} bytes; keep fewer or shorter values.",
            "settings_json",
        )
    try:
        value = json.loads(settings_json)
    except ValueError:
        raise invalid(
            "invalid_settings", "The settings are not valid JSON; send a JSON object.", "settings_json"
        ) from None
    if not isinstance(value, dict):
        raise invalid("invalid_settings", "The settings must be a JSON object.", "settings_json")
    # Postgres jsonb refuses NUL characters in strings; so does this check, with a 400.
    if "\\u0000" in settings_json:
        raise invalid("invalid_settings", "The settings contain a NUL character; remove it.", "settings_json")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
