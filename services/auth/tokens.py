"""Session tokens and API keys: how they look, how they are made, how they are checked.

Format (both kinds): ``<kind>_<id>_<secret>``

- ``kind`` is ``ess`` for a session token (from Login) or ``esk`` for an API key (from
  CreateApiKey), so a caller, a log scrubber or a secret scanner can tell them apart;
- ``id`` is the credential's id (a UUID as 32 lowercase hex digits). It is not secret: it is the
  database lookup key, the Principal's ``credential_id`` and, for keys, the id that ListApiKeys and
  RevokeApiKey use;
- ``secret`` is ``secrets.token_urlsafe(32)``: 43 characters of ``A-Z a-z 0-9 - _`` (256 bits).

Example: ``esk_0f1e2d3c4b5a69788796a5b4c3d2e1f0_q3Jc...`` (80 characters in all). Every character is
safe in a cookie, a header and a URL.

Only SHA-256 of the whole token is stored. Looking the row up by id and then comparing the hash with
`hmac.compare_digest` keeps the comparison constant-time; a fast hash is enough because the secret
carries 256 bits of entropy (nobody can guess it, so nothing needs slowing down).

An API key's display ``prefix`` is its first 12 characters (``esk_`` and 8 hex digits of the id).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal

SESSION_PREFIX = "ess"
API_KEY_PREFIX = "esk"
DISPLAY_PREFIX_LEN = 12

Kind = Literal["session", "api_key"]
_KIND_BY_PREFIX: dict[str, Kind] = {SESSION_PREFIX: "session", API_KEY_PREFIX: "api_key"}
_PREFIX_BY_KIND: dict[Kind, str] = {v: k for k, v in _KIND_BY_PREFIX.items()}

_TOKEN = re.compile(r"(ess|esk)_([0-9a-f]{32})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class ParsedToken:
    kind: Kind
    id: uuid.UUID
    digest: bytes


@dataclass(frozen=True)
class NewToken:
    id: uuid.UUID
    token: str
    digest: bytes

    @property
    def display_prefix(self) -> str:
        return self.token[:DISPLAY_PREFIX_LEN]


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token(kind: Kind) -> NewToken:
    ident = uuid.uuid4()
    token = f"{_PREFIX_BY_KIND[kind]}_{ident.hex}_{secrets.token_urlsafe(32)}"
    return NewToken(ident, token, digest(token))


def parse(token: str) -> ParsedToken | None:
    """The token's parts, or None when it is not an Easel token at all."""
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        return None
    return ParsedToken(_KIND_BY_PREFIX[match.group(1)], uuid.UUID(hex=match.group(2)), digest(match.group(0)))


def matches(parsed: ParsedToken, stored_digest: bytes) -> bool:
    return hmac.compare_digest(parsed.digest, bytes(stored_digest))
