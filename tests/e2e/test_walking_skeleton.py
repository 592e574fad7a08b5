"""The walking skeleton: register → login → generate → image listed and downloadable, every hop real."""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import aiohttp
from PIL import Image

from services.local.stack import Stack


async def _json(resp: aiohttp.ClientResponse) -> dict[str, object]:
    body = await resp.json()
    assert isinstance(body, dict)
    return body


async def test_register_login_generate_list_download(stack: Stack) -> None:
    base = stack.gateway_url
    name = f"ada{uuid.uuid4().hex[:8]}"
    password = "correct horse battery staple"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200, await resp.text()

        async with http.post(
            f"{base}/api/v1/auth/register",
            json={"username": name, "email": f"{name}@example.com", "password": password},
        ) as resp:
            assert resp.status == 201, await resp.text()
            user = (await _json(resp))["user"]
            assert isinstance(user, dict) and user["username"] == name

        async with http.post(
            f"{base}/api/v1/auth/login", json={"username": name, "password": password}
        ) as resp:
            assert resp.status == 200, await resp.text()
            token = (await _json(resp))["token"]
        auth = {"Authorization": f"Bearer {token}"}

        async with http.post(
            f"{base}/api/v1/generations",
            json={"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seed": 42},
            headers=auth,
        ) as resp:
            assert resp.status == 202, await resp.text()
            job = (await _json(resp))["job"]
            assert isinstance(job, dict)
            job_id = job["id"]

        deadline = time.monotonic() + 120
        while True:
            async with http.get(f"{base}/api/v1/jobs/{job_id}", headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                state = await _json(resp)
            if state["status"] in ("completed", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, f"job still {state['status']} after 120 s"
            await asyncio.sleep(0.3)
        assert state["status"] == "completed", state
        images = state["images"]
        assert isinstance(images, list) and len(images) == 1

        async with http.get(f"{base}/api/v1/images", headers=auth) as resp:
            assert resp.status == 200
            listed = await _json(resp)
        items = listed["items"]
        assert isinstance(items, list)
        assert [i["id"] for i in items] == [images[0]["id"]]
        assert items[0]["params"]["seed"] == 42
        assert items[0]["params"]["prompt"] == "a lighthouse at dusk"

        async with http.get(f"{base}/api/v1/images/{images[0]['id']}/file", headers=auth) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("image/png")
            png = await resp.read()
        picture = Image.open(io.BytesIO(png))
        picture.load()
        assert picture.format == "PNG"
        assert picture.size == (64, 64)

        # Someone else cannot see it: a private image answers not found.
        other = f"bob{uuid.uuid4().hex[:8]}"
        async with http.post(
            f"{base}/api/v1/auth/register",
            json={"username": other, "email": f"{other}@example.com", "password": password},
        ) as resp:
            assert resp.status == 201
        async with http.post(
            f"{base}/api/v1/auth/login", json={"username": other, "password": password}
        ) as resp:
            other_token = (await _json(resp))["token"]
        async with http.get(
            f"{base}/api/v1/images/{images[0]['id']}/file", headers={"Authorization": f"Bearer {other_token}"}
        ) as resp:
            assert resp.status == 404
            assert (await _json(resp))["error"]["code"] == "image_not_found"  # type: ignore[index]


async def test_web_ui_pages_render(stack: Stack) -> None:
    base = stack.gateway_url
    async with aiohttp.ClientSession() as http:
        for path, marker in (("/login", "password"), ("/register", "email")):
            async with http.get(f"{base}{path}") as resp:
                assert resp.status == 200
                assert "text/html" in resp.headers["Content-Type"]
                assert marker in (await resp.text()).lower()
