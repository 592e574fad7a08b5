"""Fixtures of the reliability tests: whole studios as real processes, each on its own NATS.

Stacks that only need a database get one of their own on the session's Postgres (its result cache
and community feed then hold only what the module made); the fault tests bring their own Postgres,
since they stop and restart it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest_asyncio

from services.local.stack import Ports, Stack

# Lower password-hashing cost: the tests log in often, and hashing is not what they are about.
FAST_AUTH = {
    "EASEL_AUTH_ARGON2_TIME_COST": "1",
    "EASEL_AUTH_ARGON2_MEMORY_KIB": "8192",
    "EASEL_AUTH_ARGON2_PARALLELISM": "1",
}

# Every simulated user of the load runs comes from the same loopback address, so the per-address
# limit for anonymous requests would treat fifty people as one client; it is raised to what fifty
# separate addresses would get. The per-user limits stay as configured.
SHARED_ADDRESS = {
    "EASEL_RATE_LIMIT_CLIENT_PER_S": "1000",
    "EASEL_RATE_LIMIT_CLIENT_BURST": "10000",
    "EASEL_AUTH_SIGNUP_PER_ADDRESS": "1000000",
}
# For suites whose one user and one address make many users' worth of requests on purpose; the
# request rate limits have their own tests (the gateway's).
NO_REQUEST_RATE_LIMITS = {
    "EASEL_RATE_LIMIT_USER_PER_S": "100000",
    "EASEL_RATE_LIMIT_USER_BURST": "100000",
    "EASEL_RATE_LIMIT_CLIENT_PER_S": "100000",
    "EASEL_RATE_LIMIT_CLIENT_BURST": "100000",
}


def make_stack(
    run_dir: Path, models_dir: Path, database_url: str | None, extra_env: dict[str, str] | None = None
) -> Stack:
    return Stack(
        run_dir=run_dir,
        models_dir=models_dir,
        ports=Ports.free(),
        database_url=database_url,
        nats_url=None,  # always its own: stacks sharing NATS pull each other's jobs
        log_dir=run_dir / "logs",
        grace=20,
        extra_env={**FAST_AUTH, **(extra_env or {})},
    )


def pids(stack: Stack) -> dict[str, int]:
    """Every process of the stack that is running now, by name."""
    out = {name: child.proc.pid for name, child in stack.children.items() if child.alive and child.proc}
    for name, server in (("nats", stack.nats), ("postgres", stack.postgres)):
        if server is not None and server.proc is not None and server.proc.poll() is None:
            out[name] = server.proc.pid
    return out


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """No cookies: each call says who it is with a bearer token (or is anonymous)."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        yield session
