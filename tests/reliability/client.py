"""A small HTTP client for the studio's public API, shared by the reliability tests and the load test.

Everything goes through the gateway as a real client would: accounts, tokens, jobs, images.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from PIL import Image

PASSWORD = "correct horse battery staple"
TERMINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass
class User:
    """An account and the bearer credential it uses."""

    base: str
    username: str
    password: str = PASSWORD
    user_id: str = ""
    token: str = ""
    api_key: str = ""
    api_key_id: str = ""
    images: list[str] = field(default_factory=list)

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key or self.token}"}

    @property
    def session_bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def body_of(resp: aiohttp.ClientResponse) -> Any:
    """The JSON body, or the text when it is not JSON (for assertion messages)."""
    raw = await resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:2000]


async def register(
    http: aiohttp.ClientSession, base: str, prefix: str = "u", password: str = PASSWORD
) -> User:
    user = User(base, f"{prefix}{uuid.uuid4().hex[:10]}", password)
    account = {"username": user.username, "email": f"{user.username}@example.com", "password": password}
    async with http.post(f"{base}/api/v1/auth/register", json=account) as resp:
        assert resp.status == 201, (resp.status, await body_of(resp))
        user.user_id = (await resp.json())["user"]["id"]
    await login(http, user)
    return user


async def login(http: aiohttp.ClientSession, user: User) -> None:
    async with http.post(
        f"{user.base}/api/v1/auth/login", json={"username": user.username, "password": user.password}
    ) as resp:
        assert resp.status == 200, (resp.status, await body_of(resp))
        user.token = (await resp.json())["token"]


async def create_key(http: aiohttp.ClientSession, user: User, name: str = "tests") -> dict[str, Any]:
    async with http.post(
        f"{user.base}/api/v1/keys", json={"name": name}, headers=user.session_bearer
    ) as resp:
        assert resp.status == 201, (resp.status, await body_of(resp))
        key: dict[str, Any] = await resp.json()
    return key


async def submit(
    http: aiohttp.ClientSession, user: User, prompt: str = "a quiet harbour", **params: Any
) -> dict[str, Any]:
    """POST /api/v1/generations; returns the job (asserts 202)."""
    body = {"prompt": prompt, "width": 64, "height": 64, "steps": 2, **params}
    async with http.post(f"{user.base}/api/v1/generations", json=body, headers=user.bearer) as resp:
        assert resp.status == 202, (resp.status, await body_of(resp))
        job: dict[str, Any] = (await resp.json())["job"]
    return job


async def get_job(http: aiohttp.ClientSession, user: User, job_id: str) -> tuple[int, Any]:
    async with http.get(f"{user.base}/api/v1/jobs/{job_id}", headers=user.bearer) as resp:
        return resp.status, await body_of(resp)


async def wait_job(
    http: aiohttp.ClientSession,
    user: User,
    job_id: str,
    timeout: float = 120.0,
    tolerate: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Polls until the job ends. Statuses in `tolerate` (e.g. 503 while a service restarts) and
    connection errors (the gateway restarting) are retried; anything else fails the test."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            status, body = await get_job(http, user, job_id)
        except aiohttp.ClientError as exc:
            status, body = 0, repr(exc)
        if status == 200:
            last = body
            if body["status"] in TERMINAL:
                assert isinstance(body, dict)
                return body
        elif status not in tolerate and status != 0:
            raise AssertionError(f"GET job {job_id}: {status} {body}")
        assert time.monotonic() < deadline, f"job {job_id} not finished after {timeout}s: {last}"
        await asyncio.sleep(0.25)


async def wait_ready(http: aiohttp.ClientSession, base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{base}/readyz") as resp:
                if resp.status == 200:
                    return
                last = (resp.status, await body_of(resp))
        except aiohttp.ClientError as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise AssertionError(f"gateway not ready after {timeout}s: {last}")


@dataclass
class SseEvent:
    id: str | None
    event: str | None
    data: str | None


async def read_events(resp: aiohttp.ClientResponse, on_event: Any = None) -> tuple[list[SseEvent], list[str]]:
    """Reads a text/event-stream to its end: the events and the comment lines."""
    events: list[SseEvent] = []
    comments: list[str] = []
    current: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in current:
                event = SseEvent(current.get("id"), current.get("event"), current.get("data"))
                events.append(event)
                if on_event is not None:
                    await on_event(event)
            current = {}
        elif line.startswith(":"):
            comments.append(line[1:].strip())
        else:
            key, _, value = line.partition(":")
            current[key] = value.removeprefix(" ")
    return events, comments


def png_bytes(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()
