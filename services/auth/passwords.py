"""argon2id password hashing, always off the event loop.

Hashing costs tens of milliseconds and tens of megabytes on purpose; it runs on a small dedicated
thread pool so that a burst of logins neither blocks other calls nor takes unbounded memory.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .settings import AuthSettings

T = TypeVar("T")


class Passwords:
    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.auth_argon2_time_cost,
            memory_cost=settings.auth_argon2_memory_kib,
            parallelism=settings.auth_argon2_parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(settings.auth_hash_workers, thread_name_prefix="argon2")
        # Verified when the account does not exist, so that "no such user" costs as much as
        # "wrong password" and response times do not reveal which accounts exist.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def __enter__(self) -> Passwords:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: str | None) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            # argon2's verify compares digests in constant time.
            return bool(self._hasher.verify(stored or self._dummy, password)) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when `password` matches `stored`; None (no such user) costs the same and is False."""
        return await self._run(self._verify, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        try:
            return bool(self._hasher.check_needs_rehash(stored))
        except InvalidHashError:
            return True
