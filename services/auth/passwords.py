"""argon2id password hashing, always off the event loop.

Hashing costs tens of milliseconds and tens of megabytes on purpose; it runs on small dedicated
thread pools so that a burst neither blocks other calls nor takes unbounded memory. Sign-up hashing
has a pool of its own (`auth_signup_hash_workers` threads): a flood of sign-ups queues behind that
bound, while sign-ins, password changes and rehashes keep theirs (`auth_hash_workers`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .settings import AuthSettings

T = TypeVar("T")


# Nice value added to sign-up hashing threads: when the CPU is short, sign-ins win.
SIGNUP_NICENESS = 10


def _lower_cpu_priority() -> None:
    """Lowers the calling thread's CPU priority (Linux schedules threads by their own nice value);
    elsewhere, or where not permitted, the thread keeps the process's priority."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + SIGNUP_NICENESS))
    except (AttributeError, OSError):
        pass


class Passwords:
    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.auth_argon2_time_cost,
            memory_cost=settings.auth_argon2_memory_kib,
            parallelism=settings.auth_argon2_parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(settings.auth_hash_workers, thread_name_prefix="argon2")
        self._signup_pool = ThreadPoolExecutor(
            settings.auth_signup_hash_workers,
            thread_name_prefix="argon2-signup",
            initializer=_lower_cpu_priority,
        )
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
        self._signup_pool.shutdown(wait=True, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: str | None) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def hash(self, password: str) -> str:
        """For a signed-in user (a password change, a rehash): on the sign-in threads."""
        return await self._run(self._hasher.hash, password)

    async def hash_for_signup(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self._signup_pool, self._hasher.hash, password
        )

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
