"""gRPC `easel.auth.v1.Auth`: accounts, sessions, API keys and the authentication of every request.

Nothing is cached: Authenticate reads the credential's row on every call, so a logout or a revoked key
is refused on the very next request, on every replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from easel.auth.v1 import auth_pb2, auth_pb2_grpc
from services.common import limits
from services.common.errors import EaselError, invalid, not_found, unauthenticated

from . import policy, store, tokens
from .metrics import AUTHENTICATE_LATENCY, AUTHENTICATIONS, LOGINS, REGISTRATIONS
from .passwords import Passwords
from .settings import AuthSettings
from .signup_limit import SignupLimit
from .throttle import Subject, Throttle

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# One error for "no such user" and "wrong password", so that nobody can probe which accounts exist.
INVALID_CREDENTIALS = (
    "invalid_credentials",
    "The username or password is not correct; check both and try again.",
)


def _invalid_credentials() -> EaselError:
    return unauthenticated(*INVALID_CREDENTIALS)


def _invalid_token() -> EaselError:
    return unauthenticated(
        "invalid_token", "This token is not valid; sign in again, or use a current API key."
    )


def _user_not_found() -> EaselError:
    return not_found("user_not_found", "No such user; check the user id.")


def _key_not_found() -> EaselError:
    return not_found(
        "api_key_not_found", "You have no API key with this id; list your keys to find the right id."
    )


def _uuid(value: str, error: EaselError) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise error from None


def _ts(when: datetime | None) -> Timestamp | None:
    if when is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(
        self,
        db: store.Store,
        throttle: Throttle,
        passwords: Passwords,
        settings: AuthSettings,
        signups: SignupLimit | None = None,
    ) -> None:
        self.db = db
        self.throttle = throttle
        self.signups = signups or SignupLimit(db.pool, settings)
        self.passwords = passwords
        self.settings = settings
        self.admin_ids = settings.admin_ids

    # Helpers

    def _role(self, user_id: uuid.UUID, is_admin: bool) -> str:
        # Read from the account's row at every call: a grant or revoke counts from the next request.
        return "admin" if is_admin or user_id in self.admin_ids else "user"

    def _user_pb(self, user: store.User) -> auth_pb2.User:
        return auth_pb2.User(
            id=str(user.id),
            username=user.username,
            email=user.email,
            role=self._role(user.id, user.is_admin),
            created_at=_ts(user.created_at),
        )

    @staticmethod
    def _key_pb(key: store.ApiKey) -> auth_pb2.ApiKey:
        return auth_pb2.ApiKey(
            id=str(key.id),
            name=key.name,
            prefix=key.prefix,
            created_at=_ts(key.created_at),
            expires_at=_ts(key.expires_at),
            last_used_at=_ts(key.last_used_at),
            scopes=key.scopes,
        )

    async def _existing_user(self, user_id: str) -> store.User:
        user = await self.db.user_by_id(_uuid(user_id, _user_not_found()))
        if user is None:
            raise _user_not_found()
        return user

    async def _maybe_rehash(self, user: store.User, password: str) -> None:
        """Upgrades a hash made with older argon2 parameters; a failure here must not fail the login."""
        if not self.passwords.needs_rehash(user.password_hash):
            return
        try:
            fresh = await self.passwords.hash(password)
            if await self.db.replace_password_hash(user.id, user.password_hash, fresh):
                log.info("password rehashed with current parameters", extra={"user_id": str(user.id)})
        except Exception:
            log.exception("password rehash failed")

    # Accounts

    async def Register(
        self, request: auth_pb2.RegisterRequest, context: Context
    ) -> auth_pb2.RegisterResponse:
        try:
            username = policy.check_username(policy.check_storable(request.username, "username"))
            email = policy.check_email(policy.check_storable(request.email, "email"))
            policy.check_password(request.password, username, self.settings.auth_password_min_length)
            # Counted before the (costly) hash, which runs on sign-up's own bounded threads so that
            # a flood of sign-ups queues behind itself and not in front of anyone's sign-in.
            await self.signups.take(request.client_address)
            hashed = await self.passwords.hash_for_signup(request.password)
            user = await self.db.create_user(username, email, hashed)
        except EaselError as exc:
            REGISTRATIONS.labels(exc.code).inc()
            raise
        REGISTRATIONS.labels("success").inc()
        log.info("user registered", extra={"user_id": str(user.id)})
        return auth_pb2.RegisterResponse(user=self._user_pb(user))

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        login = request.username.strip()
        try:
            policy.check_storable(login, "username")
        except EaselError:
            LOGINS.labels("invalid_request").inc()
            raise
        if not login or not request.password:
            LOGINS.labels("invalid_request").inc()
            raise invalid("missing_credentials", "Enter your username (or email address) and password.")
        user = await self.db.user_by_login(login)
        subject = Subject(
            str(user.id) if user else f"name:{policy.normalize_login(login)}",
            request.client_address.strip(),
            user.id if user else None,
        )
        try:
            verdict = await self.throttle.check(subject)
        except EaselError:
            LOGINS.labels("throttled").inc()
            raise
        if verdict.delay_s > 0:
            # Many recent failures from addresses this account never signed in from: slow this
            # one down (the same for unknown names, so the delay does not reveal which exist).
            await asyncio.sleep(verdict.delay_s)
        # A password longer than any we accept cannot match, but it still costs one dummy check.
        stored = user.password_hash if user and len(request.password) <= policy.PASSWORD_MAX else None
        ok = await self.passwords.verify(stored, request.password)
        if not ok or user is None:
            await self.throttle.failed(subject, verdict.known)
            LOGINS.labels("invalid_credentials").inc()
            raise _invalid_credentials()
        await self.throttle.succeeded(subject)
        await self._maybe_rehash(user, request.password)
        token = tokens.new_token("session")
        expires = await self.db.create_session(
            token.id, user.id, token.digest, subject.address, self.settings.auth_session_ttl_s
        )
        LOGINS.labels("success").inc()
        return auth_pb2.LoginResponse(token=token.token, expires_at=_ts(expires), user=self._user_pb(user))

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Context) -> auth_pb2.LogoutResponse:
        # Idempotent: ending a credential that is already dead (or never existed) succeeds quietly.
        parsed = tokens.parse(request.token)
        if parsed is None:
            return auth_pb2.LogoutResponse()
        if parsed.kind == "session":
            cred = await self.db.session(parsed.id)
            if cred is not None and tokens.matches(parsed, cred.secret_hash):
                await self.db.revoke_session(cred.id)
        else:
            # The contract says the presented credential is dead afterwards, API keys included.
            cred = await self.db.api_key(parsed.id)
            if cred is not None and tokens.matches(parsed, cred.secret_hash):
                await self.db.revoke_api_key_by_id(cred.id)
        return auth_pb2.LogoutResponse()

    async def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: Context
    ) -> auth_pb2.Principal:
        start = time.perf_counter()
        kind = "unknown"
        try:
            parsed = tokens.parse(request.token)
            if parsed is None:
                raise _invalid_token()
            kind = parsed.kind
            is_session = parsed.kind == "session"
            # A key's last_used_at is touched by the same statement that reads it (only when live
            # and matching), so Authenticate is one database round trip for either kind.
            cred = await (
                self.db.session(parsed.id) if is_session else self.db.api_key_in_use(parsed.id, parsed.digest)
            )
            if cred is None or not tokens.matches(parsed, cred.secret_hash):
                raise _invalid_token()
            if cred.revoked:
                raise unauthenticated(
                    "invalid_token",
                    "This session has ended; sign in again."
                    if is_session
                    else "This API key was revoked; create a new one.",
                )
            if cred.expired:
                if is_session:
                    raise unauthenticated("session_expired", "Your session has expired; sign in again.")
                raise unauthenticated("api_key_expired", "This API key has expired; create a new one.")
        except EaselError as exc:
            AUTHENTICATIONS.labels(kind, exc.code).inc()
            raise
        finally:
            AUTHENTICATE_LATENCY.labels(kind).observe(time.perf_counter() - start)
        AUTHENTICATIONS.labels(kind, "ok").inc()
        return auth_pb2.Principal(
            user_id=str(cred.user_id),
            username=cred.username,
            role=self._role(cred.user_id, cred.is_admin),
            scopes=policy.SESSION_SCOPES if cred.scopes is None else cred.scopes,
            credential_kind=parsed.kind,
            credential_id=str(cred.id),
        )

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Context
    ) -> auth_pb2.ChangePasswordResponse:
        user = await self._existing_user(request.user_id)
        policy.check_password(
            request.new_password, user.username, self.settings.auth_password_min_length, "new_password"
        )
        if request.new_password == request.current_password:
            raise invalid(
                "password_unchanged",
                "Choose a new password that differs from the current one.",
                "new_password",
            )
        # Throttled like a login from the caller's address: a stolen session must not become a way
        # to guess the password. (No delay: the caller holds a credential of the account.)
        subject = Subject(str(user.id), request.client_address.strip(), user.id)
        verdict = await self.throttle.check(subject)
        if not await self.passwords.verify(user.password_hash, request.current_password):
            await self.throttle.failed(subject, verdict.known)
            raise invalid(
                "wrong_password",
                "The current password is not correct; enter the password you sign in with.",
                "current_password",
            )
        await self.throttle.succeeded(subject)
        keep: uuid.UUID | None = None
        parsed = tokens.parse(request.keep_session_token)
        if parsed is not None and parsed.kind == "session":
            cred = await self.db.session(parsed.id)
            if cred is not None and cred.user_id == user.id and tokens.matches(parsed, cred.secret_hash):
                keep = cred.id
        fresh = await self.passwords.hash(request.new_password)
        if not await self.db.change_password(user.id, user.password_hash, fresh, keep):
            raise EaselError(
                "password_changed_concurrently",
                "The password was changed by another request at the same moment; sign in again and retry.",
                grpc.StatusCode.ABORTED,
            )
        log.info("password changed", extra={"user_id": str(user.id)})
        return auth_pb2.ChangePasswordResponse()

    async def GetUser(self, request: auth_pb2.GetUserRequest, context: Context) -> auth_pb2.User:
        return self._user_pb(await self._existing_user(request.user_id))

    # Settings of the compatible client faces

    async def GetClientSettings(
        self, request: auth_pb2.GetClientSettingsRequest, context: Context
    ) -> auth_pb2.ClientSettings:
        user = await self._existing_user(request.user_id)
        face = policy.check_client_face(request.face)
        saved = await self.db.client_settings(user.id, face)
        return auth_pb2.ClientSettings(face=face, settings_json=saved or "{}")

    async def PutClientSettings(
        self, request: auth_pb2.PutClientSettingsRequest, context: Context
    ) -> auth_pb2.ClientSettings:
        user_id = _uuid(request.user_id, _user_not_found())
        face = policy.check_client_face(request.face)
        settings_json = policy.check_client_settings(request.settings_json)
        if not await self.db.put_client_settings(user_id, face, settings_json):
            raise _user_not_found()
        return auth_pb2.ClientSettings(face=face, settings_json=settings_json)

    # API keys

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: Context
    ) -> auth_pb2.CreateApiKeyResponse:
        user_id = _uuid(request.user_id, _user_not_found())
        name = policy.check_key_name(policy.check_storable(request.name, "name"))
        scopes = policy.check_scopes([policy.check_storable(s, "scopes") for s in request.scopes])
        longest = self.settings.auth_api_key_max_ttl_s
        ttl = request.ttl_seconds or self.settings.auth_api_key_ttl_s
        if not limits.KEY_TTL_MIN_S <= ttl <= longest:
            raise invalid(
                "invalid_ttl",
                f"Choose a key lifetime between {limits.KEY_TTL_MIN_S} and {longest} seconds, or 0 "
                "for the default.",
                "ttl_seconds",
            )
        token = tokens.new_token("api_key")
        try:
            key = await self.db.create_api_key(
                token.id,
                user_id,
                name,
                token.display_prefix,
                token.digest,
                scopes,
                ttl,
                self.settings.auth_max_api_keys,
            )
        except LookupError:
            raise _user_not_found() from None
        if key is None:
            raise EaselError(
                "too_many_api_keys",
                f"You have {self.settings.auth_max_api_keys} live API keys already; revoke one you no "
                "longer use, then try again.",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        log.info("api key created", extra={"user_id": str(user_id), "key_id": str(key.id)})
        return auth_pb2.CreateApiKeyResponse(key=self._key_pb(key), secret=token.token)

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: Context
    ) -> auth_pb2.ListApiKeysResponse:
        user = await self._existing_user(request.user_id)
        return auth_pb2.ListApiKeysResponse(keys=[self._key_pb(k) for k in await self.db.api_keys(user.id)])

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: Context
    ) -> auth_pb2.RevokeApiKeyResponse:
        user_id = _uuid(request.user_id, _key_not_found())
        key_id = _uuid(request.key_id, _key_not_found())
        if not await self.db.revoke_api_key(user_id, key_id):
            raise _key_not_found()
        log.info("api key revoked", extra={"user_id": str(user_id), "key_id": str(key_id)})
        return auth_pb2.RevokeApiKeyResponse()
