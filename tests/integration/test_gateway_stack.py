"""The gateway over the whole real stack: auth, gallery, inference api and worker, Postgres, NATS.

One stack for the module; the tests run in order on one account and share what they made.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image

from services.local.stack import Stack
from tests.stacks import isolated_stack

pytestmark = pytest.mark.timeout(180)

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, models_dir: Path) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory, postgres_url, models_dir, "gateway") as s:
        yield s


class World:
    """What the tests share: the account, its sessions and what it made."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.username = f"gw{uuid.uuid4().hex[:8]}"
        self.token = ""
        self.csrf = ""
        self.image_id = ""
        self.job_id = ""

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(stack: Stack) -> World:
    return World(stack.gateway_url)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """No cookies: every call says who it is with a bearer token (or is anonymous)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """Keeps cookies like a browser (unsafe=True: the stack lives at an IP address)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def _json(resp: aiohttp.ClientResponse) -> Any:
    assert resp.content_type == "application/json", await resp.text()
    return await resp.json()


async def test_ready_and_register_and_login(world: World, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{world.base}/readyz") as resp:
        assert resp.status == 200, await resp.text()
    account = {"username": world.username, "email": f"{world.username}@example.com", "password": PASSWORD}
    async with http.post(f"{world.base}/api/v1/auth/register", json=account) as resp:
        assert resp.status == 201, await resp.text()
        assert (await _json(resp))["user"]["username"] == world.username
    async with http.post(f"{world.base}/api/v1/auth/register", json=account) as resp:
        assert resp.status == 409
        assert (await _json(resp))["error"]["code"] == "username_taken"
    async with http.post(
        f"{world.base}/api/v1/auth/login", json={"username": world.username, "password": "not it at all"}
    ) as resp:
        assert resp.status == 401
        assert (await _json(resp))["error"]["code"] == "invalid_credentials"
    async with http.post(
        f"{world.base}/api/v1/auth/login",
        json={"username": f"{world.username}@example.com", "password": PASSWORD},
    ) as resp:
        assert resp.status == 200, await resp.text()
        body = await _json(resp)
        assert body["token"].startswith("ess_") and body["expires_at"]
        assert "easel_session" in resp.cookies
        world.token = body["token"]
    async with http.get(f"{world.base}/api/v1/auth/me", headers=world.bearer) as resp:
        assert resp.status == 200
        assert (await _json(resp))["user"]["username"] == world.username


async def test_web_login_and_csrf(world: World, browser: aiohttp.ClientSession) -> None:
    async with browser.get(f"{world.base}/login") as resp:
        html = await resp.text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    form = {"username": world.username, "password": PASSWORD, "csrf_token": token.group(1), "next": "/"}
    async with browser.post(f"{world.base}/login", data=form, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        cookie = resp.cookies["easel_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax"
    async with browser.get(f"{world.base}/") as resp:
        assert resp.status == 200
        html = await resp.text()
        assert "tiny-sd" in html  # the model select is filled from ListModels
    meta = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert meta is not None
    world.csrf = meta.group(1)
    # A state-changing call with the cookie and no token is refused...
    async with browser.post(f"{world.base}/api/v1/generations", json={"prompt": "forged"}) as resp:
        assert resp.status == 403
        assert (await _json(resp))["error"]["code"] == "csrf_failed"
    # ...and with the token it goes through.
    async with browser.post(
        f"{world.base}/api/v1/generations",
        json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 1},
        headers={"X-CSRF-Token": world.csrf},
    ) as resp:
        assert resp.status == 202, await resp.text()


async def test_models(world: World, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{world.base}/api/v1/models", headers=world.bearer) as resp:
        assert resp.status == 200
        models = (await _json(resp))["items"]
    assert "tiny-sd" in [m["name"] for m in models]


async def test_generate_and_follow_events(world: World, http: aiohttp.ClientSession) -> None:
    body = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 3, "seed": 42}
    headers = {**world.bearer, "Idempotency-Key": uuid.uuid4().hex}
    async with http.post(f"{world.base}/api/v1/generations", json=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        job = (await _json(resp))["job"]
        assert job["status"] in ("queued", "running", "completed")
        world.job_id = job["id"]
    async with http.post(f"{world.base}/api/v1/generations", json=body, headers=headers) as resp:
        assert resp.status == 202
        assert (await _json(resp))["job"]["id"] == world.job_id  # the same key: the same job

    events: list[dict[str, Any]] = []
    url = f"{world.base}/api/v1/jobs/{world.job_id}/events"
    async with http.get(url, headers=world.bearer, timeout=aiohttp.ClientTimeout(total=120)) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                current[key] = value
    assert events, "no events"
    seqs = [int(e["id"]) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    final = json.loads(events[-1]["data"])
    assert events[-1]["event"] == "completed", events[-1]
    assert final["status"] == "completed" and len(final["images"]) == 1
    assert final["progress"]["step"] == final["progress"]["steps"]
    world.image_id = final["images"][0]["id"]

    # A reconnect that has seen everything is told to stop.
    async with http.get(url, headers={**world.bearer, "Last-Event-ID": str(seqs[-1])}) as resp:
        assert resp.status == 204

    async with http.get(f"{world.base}/api/v1/jobs", headers=world.bearer) as resp:
        assert resp.status == 200
        assert world.job_id in [j["id"] for j in (await _json(resp))["items"]]


async def test_images_list_download_thumb(world: World, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{world.base}/api/v1/images", headers=world.bearer) as resp:
        assert resp.status == 200
        page = await _json(resp)
    ids = [i["id"] for i in page["items"]]
    assert world.image_id in ids
    item = page["items"][ids.index(world.image_id)]
    assert item["params"]["seed"] == 42 and item["visibility"] == "private"
    assert item["owner"]["username"] == world.username
    assert "next_cursor" in page

    async with http.get(item["url"], headers=world.bearer) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("image/png")
        assert resp.headers["Cache-Control"] == "private, max-age=31536000, immutable"
        etag = resp.headers["ETag"]
        png = await resp.read()
    picture = Image.open(io.BytesIO(png))
    picture.load()
    assert picture.format == "PNG" and picture.size == (64, 64)

    async with http.get(item["url"], headers={**world.bearer, "If-None-Match": etag}) as resp:
        assert resp.status == 304
        assert await resp.read() == b""

    async with http.get(item["thumb_url"], headers=world.bearer) as resp:
        assert resp.status == 200
        thumb = Image.open(io.BytesIO(await resp.read()))
        thumb.load()
        assert resp.headers["ETag"] != etag

    # Private: nobody else sees it.
    async with http.get(item["url"]) as resp:
        assert resp.status == 404


async def test_visibility_share_and_pages(
    world: World, http: aiohttp.ClientSession, browser: aiohttp.ClientSession
) -> None:
    image_url = f"{world.base}/api/v1/images/{world.image_id}"
    async with http.patch(
        image_url, json={"visibility": "public", "title": "Fox"}, headers=world.bearer
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await _json(resp))["visibility"] == "public"
    async with http.patch(image_url, json={"visibility": "everyone"}, headers=world.bearer) as resp:
        assert resp.status == 400
        assert (await _json(resp))["error"]["field"] == "visibility"
    async with http.get(image_url) as resp:  # public: anonymous can open it
        assert resp.status == 200
        assert (await _json(resp))["title"] == "Fox"
    async with http.get(f"{world.base}/api/v1/community") as resp:
        assert resp.status == 200
        assert world.image_id in [i["id"] for i in (await _json(resp))["items"]]

    async with http.patch(image_url, json={"visibility": "private"}, headers=world.bearer) as resp:
        assert resp.status == 200
    async with http.post(f"{image_url}/share", headers=world.bearer) as resp:
        assert resp.status == 200, await resp.text()
        link = await _json(resp)
    assert link["url"].endswith(f"/s/{link['token']}")
    async with http.get(link["url"], headers={"Accept": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()
        shared = await _json(resp)
        assert shared["id"] == world.image_id
    async with http.get(shared["url"]) as resp:
        assert resp.status == 200
        assert Image.open(io.BytesIO(await resp.read())).size == (64, 64)
    async with http.get(link["url"]) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"

    for path in ("/", "/gallery", f"/images/{world.image_id}", "/community"):
        async with browser.get(f"{world.base}{path}", allow_redirects=False) as resp:
            assert resp.status == 200, (path, await resp.text())
            assert resp.headers["X-Frame-Options"] == "DENY"


async def test_api_keys_and_logout(world: World, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{world.base}/api/v1/keys", json={"name": "ci"}, headers=world.bearer) as resp:
        assert resp.status == 201, await resp.text()
        key = await _json(resp)
    assert key["key"].startswith("esk_")
    as_key = {"Authorization": f"Bearer {key['key']}"}
    async with http.get(f"{world.base}/api/v1/images", headers=as_key) as resp:
        assert resp.status == 200
    async with http.get(f"{world.base}/api/v1/keys", headers=world.bearer) as resp:
        assert key["id"] in [k["id"] for k in (await _json(resp))["items"]]
    async with http.delete(f"{world.base}/api/v1/keys/{key['id']}", headers=world.bearer) as resp:
        assert resp.status == 204
    async with http.get(f"{world.base}/api/v1/images", headers=as_key) as resp:
        assert resp.status == 401

    async with http.post(f"{world.base}/api/v1/auth/logout", headers=world.bearer) as resp:
        assert resp.status == 204
    async with http.get(f"{world.base}/api/v1/auth/me", headers=world.bearer) as resp:
        assert resp.status == 401
        assert (await _json(resp))["error"]["code"] in ("invalid_token", "session_expired")
