"""Attacks on a whole running studio through its public HTTP surface.

One stack for the module. Three accounts: the owner (who made the images, the job, the API key and
the share link under attack), another user, and an administrator. After every test the owner's
things must read exactly as before (`intact`): no attack may change or lose what was stored.

Every refusal is checked for its status and its stable error code (`{"error": {"code", "message"}}`
on the studio's API; the OpenAI and AUTOMATIC1111 shapes on theirs); none may be a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yarl

from services.local.stack import Stack
from tests.stacks import grant_admin, new_database

from .client import PASSWORD, User, body_of, create_key, login, png_bytes, register, submit, wait_job
from .conftest import NO_REQUEST_RATE_LIMITS, make_stack

pytestmark = pytest.mark.timeout(300)

ADMIN = f"admin{uuid.uuid4().hex[:8]}"
ROLES = ("anon", "owner", "other", "admin")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def database_url(postgres_url: str) -> str:
    return await new_database(postgres_url, "security")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str, models_dir: Path) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("security-stack"),
        models_dir,
        database_url,
        extra_env={
            # Every test client is 127.0.0.1: only the per-account lock is under test here.
            "EASEL_AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
            # One owner and one address make the whole module's requests.
            **NO_REQUEST_RATE_LIMITS,
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """No cookie jar: each request says who it is."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        yield session


@dataclass
class World:
    stack: Stack
    base: str
    owner: User
    other: User
    admin: User
    job: dict[str, Any] = field(default_factory=dict)
    private: str = ""  # the owner's private image
    public: str = ""  # the owner's public image
    spares: list[str] = field(default_factory=list)  # owner's images tests may delete
    key_id: str = ""
    share_token: str = ""
    snapshot: dict[str, Any] = field(default_factory=dict)

    def user(self, role: str) -> User | None:
        return None if role == "anon" else getattr(self, role)

    def headers(self, role: str) -> dict[str, str]:
        user = self.user(role)
        return user.session_bearer if user else {}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(stack: Stack, http: aiohttp.ClientSession) -> World:
    base = stack.gateway_url
    owner = await register(http, base, "owner")
    other = await register(http, base, "other")
    admin = User(base, ADMIN)
    async with http.post(
        f"{base}/api/v1/auth/register",
        json={"username": ADMIN, "email": f"{ADMIN}@example.com", "password": PASSWORD},
    ) as resp:
        assert resp.status == 201, await body_of(resp)
    await asyncio.to_thread(grant_admin, stack.database_url, ADMIN)
    await login(http, admin)
    w = World(stack, base, owner, other, admin)

    job = await submit(http, owner, "the owner's private harbour", n=4, seed=7)
    w.job = await wait_job(http, owner, job["id"])
    assert w.job["status"] == "completed", w.job
    ids = [i["id"] for i in sorted(w.job["images"], key=lambda i: i["index"])]
    w.private, w.public, w.spares = ids[0], ids[1], ids[2:]
    async with http.patch(
        f"{base}/api/v1/images/{w.public}",
        json={"visibility": "public", "title": "Open"},
        headers=owner.bearer,
    ) as resp:
        assert resp.status == 200, await body_of(resp)
    async with http.patch(
        f"{base}/api/v1/images/{w.private}", json={"title": "Mine", "tags": ["secret"]}, headers=owner.bearer
    ) as resp:
        assert resp.status == 200, await body_of(resp)
    key = await create_key(http, owner, "owner's script")
    w.key_id, owner.api_key = key["id"], key["key"]
    async with http.post(f"{base}/api/v1/images/{w.private}/share", headers=owner.session_bearer) as resp:
        assert resp.status == 200, await body_of(resp)
        w.share_token = (await resp.json())["token"]
    w.snapshot = await snapshot(http, w)
    return w


async def snapshot(http: aiohttp.ClientSession, w: World) -> dict[str, Any]:
    """What the owner has, as the owner reads it (likes aside: other users may like public images)."""
    out: dict[str, Any] = {}
    me = w.owner.session_bearer
    for name, image in (("private", w.private), ("public", w.public)):
        async with http.get(f"{w.base}/api/v1/images/{image}", headers=me) as resp:
            assert resp.status == 200, (name, await body_of(resp))
            record = await resp.json()
        record.pop("likes"), record.pop("liked")
        out[name] = record
        async with http.get(f"{w.base}/api/v1/images/{image}/file", headers=me) as resp:
            assert resp.status == 200
            out[f"{name}_sha256"] = hashlib.sha256(await resp.read()).hexdigest()
    async with http.get(f"{w.base}/api/v1/jobs/{w.job['id']}", headers=me) as resp:
        assert resp.status == 200
        out["job"] = await resp.json()
    async with http.get(f"{w.base}/api/v1/keys", headers=me) as resp:
        assert resp.status == 200
        # The owner's own key (tests may add keys of their own beside it).
        keys = (await resp.json())["items"]
        out["key"] = [(k["id"], k["name"], k["prefix"], k["expires_at"]) for k in keys if k["id"] == w.key_id]
    async with http.get(
        f"{w.base}/api/v1/auth/me", headers={"Authorization": f"Bearer {w.owner.api_key}"}
    ) as resp:
        assert resp.status == 200, await body_of(resp)
        out["key_works_for"] = (await resp.json())["user"]["username"]
    async with http.get(f"{w.base}/s/{w.share_token}", headers={"Accept": "application/json"}) as resp:
        assert resp.status == 200, await body_of(resp)
        out["shared"] = (await resp.json())["id"]
    return out


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def intact(world: World, http: aiohttp.ClientSession) -> AsyncIterator[None]:
    yield
    assert await snapshot(http, world) == world.snapshot, "an attack changed what the owner had stored"


# --- helpers -------------------------------------------------------------------------------------


async def expect(
    resp: aiohttp.ClientResponse, status: int, code: str | None = None, field: str | None = None
) -> Any:
    """The answer has `status`; an error carries `code` (and `field`) in the studio's error shape."""
    body = await body_of(resp)
    where = f"{resp.method} {resp.url.path}"
    assert resp.status == status, (where, resp.status, body)
    if status >= 400 and code is not None:
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), (where, body)
        assert body["error"]["code"] == code, (where, body)
        assert isinstance(body["error"].get("message"), str) and body["error"]["message"], (where, body)
        if field is not None:
            assert body["error"].get("field") == field, (where, body)
    return body


def raw(base: str, path: str) -> yarl.URL:
    """A URL sent exactly as written (no normalising of `..` or percent-escapes)."""
    return yarl.URL(base + path, encoded=True)


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny IDAT: a decompression-bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, (filename, data, ctype) in files.items():
        form.add_field(name, data, filename=filename, content_type=ctype)
    return form


# --- the authorization matrix --------------------------------------------------------------------

# (status, code): code None means "any success" for 2xx and "do not check" for the compatible APIs.
Expect = tuple[int, str | None]


@dataclass
class Case:
    method: str
    path: str  # placeholders: {private} {public} {job} {key} {token} {spare} {fresh_key} {fresh_token}
    expect: dict[str, Expect]
    body: Any = None
    shape: str = "easel"  # "easel", "openai", "a1111"
    form: bool = False  # multipart instead of JSON


def everyone(status: int, code: str | None = None) -> dict[str, Expect]:
    return {role: (status, code) for role in ROLES}


def signed_in(
    status: int, code: str | None = None, anon: Expect = (401, "unauthenticated")
) -> dict[str, Expect]:
    return {"anon": anon, "owner": (status, code), "other": (status, code), "admin": (status, code)}


NF_IMAGE = (404, "image_not_found")
NF_JOB = (404, "job_not_found")
NF_KEY = (404, "api_key_not_found")
ANON = (401, "unauthenticated")
GEN = {"prompt": "matrix check", "width": 64, "height": 64, "steps": 1}

MATRIX: list[Case] = [
    # accounts and keys
    Case("GET", "/api/v1/auth/me", signed_in(200)),
    Case("POST", "/api/v1/auth/logout", signed_in(204)),  # each role with a session of its own
    Case(
        "POST",
        "/api/v1/auth/password",
        signed_in(400, "wrong_password"),
        {"current_password": "not the password", "new_password": "another long passphrase"},
    ),
    Case("POST", "/api/v1/keys", signed_in(201), {"name": "matrix"}),
    Case("GET", "/api/v1/keys", signed_in(200)),
    Case(
        "DELETE", "/api/v1/keys/{key}", {"anon": ANON, "owner": (204, None), "other": NF_KEY, "admin": NF_KEY}
    ),
    # jobs
    Case("POST", "/api/v1/generations", signed_in(202), GEN),
    Case("GET", "/api/v1/jobs", signed_in(200)),
    Case("GET", "/api/v1/jobs/{job}", {"anon": ANON, "owner": (200, None), "other": NF_JOB, "admin": NF_JOB}),
    Case(
        "GET",
        "/api/v1/jobs/{job}/events",
        {"anon": ANON, "owner": (200, None), "other": NF_JOB, "admin": NF_JOB},
    ),
    Case(
        "POST",
        "/api/v1/jobs/{job}/cancel",
        {"anon": ANON, "owner": (202, None), "other": NF_JOB, "admin": NF_JOB},
    ),
    Case("GET", "/api/v1/models", signed_in(200)),
    Case(
        "POST",
        "/api/v1/edits",
        {"anon": ANON, "owner": (202, None), "other": NF_IMAGE, "admin": NF_IMAGE},
        {"kind": "variation", "image_id": "{private}", "steps": 1},
    ),
    # images
    Case("GET", "/api/v1/images", signed_in(200)),
    Case(
        "GET",
        "/api/v1/images/{private}",
        {"anon": NF_IMAGE, "owner": (200, None), "other": NF_IMAGE, "admin": (200, None)},
    ),
    Case("GET", "/api/v1/images/{public}", everyone(200)),
    Case(
        "GET",
        "/api/v1/images/{private}/file",
        {"anon": NF_IMAGE, "owner": (200, None), "other": NF_IMAGE, "admin": (200, None)},
    ),
    Case("GET", "/api/v1/images/{public}/file", everyone(200)),
    Case(
        "PATCH",
        "/api/v1/images/{private}",
        {"anon": ANON, "owner": (200, None), "other": NF_IMAGE, "admin": (200, None)},
        {"title": "Mine"},
    ),
    Case(
        "PATCH",
        "/api/v1/images/{public}",
        {"anon": ANON, "owner": (200, None), "other": (403, "not_image_owner"), "admin": (200, None)},
        {"title": "Open"},
    ),
    Case(
        "DELETE",
        "/api/v1/images/{spare}",
        {"anon": ANON, "owner": (204, None), "other": NF_IMAGE, "admin": (204, None)},
    ),
    Case(
        "DELETE",
        "/api/v1/images/{public}",
        {"anon": ANON, "other": (403, "not_image_owner")},
    ),
    Case(
        "POST",
        "/api/v1/images/{private}/like",
        {"anon": ANON, "owner": (200, None), "other": NF_IMAGE, "admin": (200, None)},
    ),
    Case(
        "DELETE",
        "/api/v1/images/{private}/like",
        {"anon": ANON, "owner": (200, None), "other": NF_IMAGE, "admin": (200, None)},
    ),
    Case("POST", "/api/v1/images/{public}/like", signed_in(200)),
    Case("DELETE", "/api/v1/images/{public}/like", signed_in(200)),
    Case(
        "POST",
        "/api/v1/images/{private}/share",
        {"anon": ANON, "owner": (200, None), "other": NF_IMAGE, "admin": (200, None)},
    ),
    Case("POST", "/api/v1/images/{public}/share", {"other": (403, "not_image_owner")}),
    Case(
        "DELETE",
        "/api/v1/images/{private}/share?token={fresh_token}",
        {"anon": ANON, "owner": (204, None), "other": NF_IMAGE, "admin": (204, None)},
    ),
    Case(
        "DELETE",
        "/api/v1/images/{private}/share?token={token}",
        {"anon": ANON, "other": NF_IMAGE},
    ),
    Case("DELETE", "/api/v1/images/{public}/share", {"other": (403, "not_image_owner")}),
    Case(
        "POST",
        "/api/v1/images/{private}/report",
        {"anon": ANON, "owner": (202, None), "other": NF_IMAGE, "admin": (202, None)},
        {"reason": "matrix"},
    ),
    Case("POST", "/api/v1/images/{public}/report", signed_in(202), {"reason": "matrix"}),
    Case(
        "POST",
        "/api/v1/images/{private}/hide",
        {
            "anon": ANON,
            "owner": (403, "admin_required"),
            "other": (403, "admin_required"),
            "admin": (200, None),
        },
        {"hidden": False},
    ),
    Case(
        "POST",
        "/api/v1/images/{public}/hide",
        {
            "anon": ANON,
            "owner": (403, "admin_required"),
            "other": (403, "admin_required"),
            "admin": (200, None),
        },
        {"hidden": False},
    ),
    Case("GET", "/api/v1/community", everyone(200)),
    Case("GET", "/api/v1/search?q=harbour", everyone(200)),
    Case("GET", "/api/v1/search?q=harbour&mine=true", signed_in(200)),
    Case("GET", "/s/{token}", everyone(200)),
    Case("GET", "/s/{token}/file", everyone(200)),
    Case("GET", "/api/v1/openapi.json", everyone(200)),
    # OpenAI-compatible: a bearer key or token, never the cookie; errors in OpenAI's shape
    Case("GET", "/v1/models", signed_in(200, anon=(401, "missing_api_key")), shape="openai"),
    Case("GET", "/v1/models/{model}", signed_in(200, anon=(401, "missing_api_key")), shape="openai"),
    Case(
        "POST",
        "/v1/images/generations",
        signed_in(200, anon=(401, "missing_api_key")),
        {"prompt": "openai matrix", "size": "64x64", "steps": 1},
        shape="openai",
    ),
    Case(
        "POST",
        "/v1/images/edits",
        signed_in(400, anon=(401, "missing_api_key")),
        {"prompt": "x"},
        "openai",
        True,
    ),
    Case(
        "POST",
        "/v1/images/variations",
        signed_in(400, anon=(401, "missing_api_key")),
        {"n": "1"},
        "openai",
        True,
    ),
    # AUTOMATIC1111-compatible: HTTP Basic or bearer; FastAPI's error shapes
    Case(
        "POST",
        "/sdapi/v1/txt2img",
        signed_in(200, anon=(401, None)),
        {"prompt": "a1111 matrix", "width": 64, "height": 64, "steps": 1},
        shape="a1111",
    ),
    Case("POST", "/sdapi/v1/img2img", signed_in(422, anon=(401, None)), {"prompt": "x"}, shape="a1111"),
    Case("GET", "/sdapi/v1/progress", signed_in(200, anon=(401, None)), shape="a1111"),
    Case("POST", "/sdapi/v1/interrupt", signed_in(200, anon=(401, None)), shape="a1111"),
    Case("GET", "/sdapi/v1/sd-models", signed_in(200, anon=(401, None)), shape="a1111"),
    Case("GET", "/sdapi/v1/samplers", signed_in(200, anon=(401, None)), shape="a1111"),
    Case("GET", "/sdapi/v1/schedulers", signed_in(200, anon=(401, None)), shape="a1111"),
    Case("GET", "/sdapi/v1/scripts", signed_in(200, anon=(401, None)), shape="a1111"),
    Case("GET", "/sdapi/v1/options", signed_in(200, anon=(401, None)), shape="a1111"),
    Case(
        "POST", "/sdapi/v1/options", signed_in(200, anon=(401, None)), {"sd_vae": "Automatic"}, shape="a1111"
    ),
    *(
        Case("GET", f"/sdapi/v1/{name}", signed_in(200, anon=(401, None)), shape="a1111")
        for name in (
            "upscalers",
            "latent-upscale-modes",
            "sd-vae",
            "sd-modules",
            "loras",
            "hypernetworks",
            "face-restorers",
            "realesrgan-models",
            "prompt-styles",
            "script-info",
            "extensions",
            "embeddings",
            "cmd-flags",
            "memory",
        )
    ),
    *(
        Case("POST", f"/sdapi/v1/{name}", signed_in(200, anon=(401, None)), shape="a1111")
        for name in ("refresh-checkpoints", "refresh-vae", "refresh-loras")
    ),
    # png-info reads only the bytes it is sent: no credential needed (a bad image is a 422 for all).
    Case("POST", "/sdapi/v1/png-info", everyone(422), {"image": "not base64!"}, shape="a1111"),
    Case("GET", "/sdapi/v1/openapi.json", everyone(200)),
    Case("GET", "/v1/openapi.json", everyone(200)),
]

# Routes the matrix need not cover: no credential involved, or covered by their own tests below.
NOT_IN_MATRIX = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/auth/register"),  # anonymous by nature: see the rate-limit and body tests
    ("POST", "/api/v1/auth/login"),
    # Signed image URLs of the OpenAI-compatible API: no credential but the signature (see
    # tests/integration/test_gateway_compat.py, which alters each part of one).
    ("GET", "/v1/images/files/{name}"),
}


def _template(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "{}", path.split("?")[0])


def test_matrix_covers_every_api_route() -> None:
    """Every route of the API (REST, OpenAI, A1111, share links) is in the matrix; a new route
    without a row here fails this test."""
    from services.gateway.app import create_app
    from services.gateway.settings import GatewaySettings

    app = create_app(GatewaySettings())
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if route.method == "HEAD" or not path.startswith(("/api/", "/v1/", "/sdapi/", "/s/")):
            continue
        routes.add((route.method, _template(path)))
    covered = {(c.method, _template(c.path)) for c in MATRIX} | {(m, _template(p)) for m, p in NOT_IN_MATRIX}
    assert routes - covered == set(), f"routes missing from the matrix: {sorted(routes - covered)}"


async def _fresh_session(http: aiohttp.ClientSession, user: User) -> str:
    async with http.post(
        f"{user.base}/api/v1/auth/login", json={"username": user.username, "password": user.password}
    ) as resp:
        assert resp.status == 200
        token: str = (await resp.json())["token"]
    return token


async def _resolve(http: aiohttp.ClientSession, w: World, text: str) -> str:
    """Fills the placeholders; the `fresh_*` and `spare` ones make a new thing of the owner's each time."""
    text = (
        text.replace("{private}", w.private)
        .replace("{public}", w.public)
        .replace("{job}", w.job["id"])
        .replace("{token}", w.share_token)
        .replace("{model}", "tiny-sd")
    )
    if "{key}" in text:
        key = await create_key(http, w.owner, "doomed")
        text = text.replace("{key}", key["id"])
    if "{fresh_token}" in text:
        async with http.post(
            f"{w.base}/api/v1/images/{w.private}/share", headers=w.owner.session_bearer
        ) as resp:
            text = text.replace("{fresh_token}", (await resp.json())["token"])
    if "{spare}" in text:
        text = text.replace("{spare}", w.spares.pop())
    return text


def _case_id(case: Case) -> str:
    return f"{case.method} {case.path}"


@pytest.mark.parametrize("case", MATRIX, ids=_case_id)
async def test_authorization_matrix(case: Case, world: World, http: aiohttp.ClientSession) -> None:
    for role, (status, code) in case.expect.items():
        user = world.user(role)
        headers: dict[str, str] = {}
        if user is not None:
            token = user.token
            if case.path == "/api/v1/auth/logout":
                token = await _fresh_session(http, user)
            headers["Authorization"] = f"Bearer {token}"
        # Keys and spare images are the owner's whoever attacks them; `{key}` stays the owner's
        # real key for the others (it must survive), a fresh one for the owner (who may revoke it).
        path = case.path
        if role != "owner":
            path = path.replace("{key}", world.key_id)
            if "{spare}" in path:
                path = path.replace("{spare}", world.spares[-1] if role == "admin" else world.private)
        path = await _resolve(http, world, path)
        kwargs: dict[str, Any] = {}
        if case.body is not None:
            body = json.loads(await _resolve(http, world, json.dumps(case.body)))
            kwargs["data" if case.form else "json"] = multipart(body, {}) if case.form else body
        async with http.request(case.method, world.base + path, headers=headers, **kwargs) as resp:
            answer = await body_of(resp)
            where = (role, case.method, path, resp.status, answer)
            assert resp.status == status, where
            if status >= 400:
                if case.shape == "easel" or (case.shape == "openai" and code is not None):
                    assert answer["error"]["code"] == code, where
                    assert answer["error"]["message"], where
                elif case.shape == "openai":
                    assert answer["error"]["message"], where
                else:  # AUTOMATIC1111: 401 {"detail": "..."}, 422 {"detail": [{loc, msg, type}]}
                    assert answer["detail"], where
                if status == 401 and case.shape != "easel":
                    assert "WWW-Authenticate" in resp.headers, where
        if role == "admin" and "{spare}" in case.path and status == 204:
            world.spares.pop()


async def test_admin_edit_of_someone_elses_private_image_is_refused_up_front(
    world: World, http: aiohttp.ClientSession
) -> None:
    """An administrator may see a private image, but the job would read it with the owner's ordinary
    rights and could only fail later; it is refused at once, and nothing of the owner's changes."""
    async with http.post(
        f"{world.base}/api/v1/edits",
        json={"kind": "variation", "image_id": world.private, "steps": 1},
        headers=world.admin.bearer,
    ) as resp:
        await expect(resp, 404, "image_not_found", "image_id")


# --- IDOR: ids of other people's things --------------------------------------------------------


async def test_idor_other_user_cannot_reach_images_jobs_share_links_or_keys(
    world: World, http: aiohttp.ClientSession
) -> None:
    other = world.other.bearer
    base = world.base
    # Lists never show another user's things.
    async with http.get(f"{base}/api/v1/images?limit=100", headers=other) as resp:
        assert world.private not in [i["id"] for i in (await expect(resp, 200))["items"]]
    async with http.get(f"{base}/api/v1/jobs?limit=100", headers=other) as resp:
        assert world.job["id"] not in [j["id"] for j in (await expect(resp, 200))["items"]]
    async with http.get(f"{base}/api/v1/keys", headers=other) as resp:
        assert world.key_id not in [k["id"] for k in (await expect(resp, 200))["items"]]
    async with http.get(
        f"{base}/api/v1/search", params={"q": "harbour", "mine": "true"}, headers=other
    ) as resp:
        assert world.private not in [i["id"] for i in (await expect(resp, 200))["items"]]
    async with http.get(f"{base}/api/v1/search", params={"q": "private harbour"}, headers=other) as resp:
        assert world.private not in [i["id"] for i in (await expect(resp, 200))["items"]]
    async with http.get(f"{base}/api/v1/community?limit=100") as resp:
        assert world.private not in [i["id"] for i in (await expect(resp, 200))["items"]]
    # A share link opens that one image; its token does not open the owner's other images, nor
    # make the image's API record readable to others.
    async with http.get(f"{base}/api/v1/images/{world.private}", headers=other) as resp:
        await expect(resp, 404, "image_not_found")
    async with http.get(
        f"{base}/api/v1/images/{world.private}/file?share_token={world.share_token}", headers=other
    ) as resp:
        await expect(resp, 404, "image_not_found")
    # The job's events, cancel and idempotency keys are per owner.
    async with http.post(f"{base}/api/v1/jobs/{world.job['id']}/cancel", headers=other) as resp:
        await expect(resp, 404, "job_not_found")
    # Another user's API key id: not found, and the key keeps working.
    async with http.delete(f"{base}/api/v1/keys/{world.key_id}", headers=other) as resp:
        await expect(resp, 404, "api_key_not_found")
    # Edits of someone else's private image: refused before any job exists.
    async with http.post(
        f"{base}/api/v1/edits",
        json={"kind": "img2img", "image_id": world.private, "prompt": "mine now"},
        headers=other,
    ) as resp:
        await expect(resp, 404, "image_not_found", "image_id")
    async with http.post(
        f"{base}/api/v1/edits",
        json={"kind": "inpaint", "image_id": world.public, "mask_id": world.private, "prompt": "x"},
        headers=other,
    ) as resp:
        await expect(resp, 404, "image_not_found", "mask_id")
    # An idempotency key the owner used does not hand the owner's job to someone else.
    key = f"shared-{uuid.uuid4().hex}"
    async with http.post(
        f"{base}/api/v1/generations", json=GEN, headers={**world.owner.bearer, "Idempotency-Key": key}
    ) as resp:
        owners = (await expect(resp, 202))["job"]["id"]
    async with http.post(
        f"{base}/api/v1/generations", json=GEN, headers={**other, "Idempotency-Key": key}
    ) as resp:
        assert (await expect(resp, 202))["job"]["id"] != owners
    # Made-up ids of the right shape are the same "not found" as other people's.
    fake = str(uuid.uuid4())
    for path, code in (
        (f"/api/v1/images/{fake}", "image_not_found"),
        (f"/api/v1/jobs/{fake}", "job_not_found"),
        (f"/s/{'x' * 43}", "share_link_not_found"),
    ):
        async with http.get(base + path, headers={**other, "Accept": "application/json"}) as resp:
            await expect(resp, 404, code)
    async with http.delete(f"{base}/api/v1/keys/{fake}", headers=other) as resp:
        await expect(resp, 404, "api_key_not_found")


async def test_api_key_scopes_are_enforced(world: World, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{world.base}/api/v1/keys",
        json={"name": "read only", "scopes": ["images:read"]},
        headers=world.other.bearer,
    ) as resp:
        key = (await expect(resp, 201))["key"]
    ro = {"Authorization": f"Bearer {key}"}
    async with http.get(f"{world.base}/api/v1/images", headers=ro) as resp:
        await expect(resp, 200)
    for method, path, body in (
        ("POST", "/api/v1/generations", GEN),
        ("POST", "/api/v1/keys", {"name": "escalate"}),
        ("GET", "/api/v1/keys", None),
        ("POST", "/api/v1/auth/password", {"current_password": PASSWORD, "new_password": "x" * 20}),
        ("PATCH", f"/api/v1/images/{world.public}", {"title": "defaced"}),
    ):
        async with http.request(method, world.base + path, json=body, headers=ro) as resp:
            await expect(resp, 403, "insufficient_scope")
    async with http.post(f"{world.base}/v1/images/generations", json={"prompt": "x"}, headers=ro) as resp:
        answer = await expect(resp, 403)
        assert answer["error"]["code"] == "insufficient_scope"
    # Scopes that do not exist are refused, not ignored.
    async with http.post(
        f"{world.base}/api/v1/keys", json={"name": "root", "scopes": ["admin"]}, headers=world.other.bearer
    ) as resp:
        await expect(resp, 400, "invalid_scope", "scopes")


# --- CSRF ----------------------------------------------------------------------------------------


class Browser:
    """A cookie-keeping client logged in through the web form, as a browser is."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.http = session
        self.csrf = ""

    @classmethod
    async def login(cls, base: str, user: User) -> Browser:
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        b = cls(base, session)
        token = await b.form_token("/login")
        async with session.post(
            f"{base}/login",
            data={"username": user.username, "password": user.password, "csrf_token": token, "next": "/"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303, await body_of(resp)
        b.csrf = await b.form_token("/settings/keys")
        return b

    async def form_token(self, path: str) -> str:
        async with self.http.get(f"{self.base}{path}") as resp:
            html = await resp.text()
        found = re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert found is not None, html[:500]
        return found.group(1)

    def cookie(self) -> str:
        for c in self.http.cookie_jar:
            if c.key == "easel_session":
                return c.value
        return ""

    async def close(self) -> None:
        await self.http.close()


def unsafe_routes() -> list[tuple[str, str, str]]:
    """(method, path template, auth need) of every state-changing route."""
    from services.gateway.app import create_app
    from services.gateway.principal import auth_need
    from services.gateway.settings import GatewaySettings

    app = create_app(GatewaySettings())
    out = []
    for route in app.router.routes():
        if route.method not in ("POST", "PUT", "PATCH", "DELETE"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        out.append((route.method, path, auth_need(route.handler)))
    return sorted(out)


async def test_csrf_every_cookie_authenticated_state_change_needs_the_token(
    world: World, http: aiohttp.ClientSession
) -> None:
    """With only the session cookie (what a forged cross-site request carries), every state-changing
    route refuses with csrf_failed, and nothing changes. The victim's own things are the targets, so
    a missing check would show as a change."""
    victim = await register(http, world.base, "victim")
    job = await wait_job(http, victim, (await submit(http, victim, "the victim's picture"))["id"])
    image = job["images"][0]["id"]
    key = await create_key(http, victim, "victim key")
    browser = await Browser.login(world.base, victim)
    forged_token = (await Browser.login(world.base, world.other)).csrf  # a valid token of another session
    values = {"image_id": image, "job_id": job["id"], "key_id": key["id"]}
    checked = []
    try:
        for method, template, need in unsafe_routes():
            if need == "none":
                continue  # login/register forms and the compatible APIs: see the next tests
            path = template.format(**{k: values.get(k, "x") for k in re.findall(r"\{(\w+)\}", template)})
            for label, token in (("no token", None), ("another session's token", forged_token)):
                headers = {"X-CSRF-Token": token} if token else {}
                # Forms post form data; the API takes JSON. Both must be refused.
                if path.startswith("/api/"):
                    kwargs: dict[str, Any] = {
                        "json": {"title": "forged", "name": "forged", "prompt": "forged"}
                    }
                else:
                    kwargs = {"data": {"title": "forged", "name": "forged", "visibility": "public"}}
                async with browser.http.request(
                    method, world.base + path, headers=headers, allow_redirects=False, **kwargs
                ) as resp:
                    body = await body_of(resp)
                    assert resp.status == 403, (label, method, path, resp.status, body)
                    if path.startswith("/api/"):
                        assert body["error"]["code"] == "csrf_failed", (method, path, body)
                    else:  # the page says why (not some other 403, such as "admins only")
                        assert "security token" in body, (method, path, body[:300])
                checked.append((method, path))
        # The positive control: with its own token the same cookie may act.
        async with browser.http.patch(
            f"{world.base}/api/v1/images/{image}",
            json={"title": "real"},
            headers={"X-CSRF-Token": browser.csrf},
        ) as resp:
            await expect(resp, 200)
    finally:
        await browser.close()
    assert len(checked) >= 2 * 20, checked
    # Nothing the forged requests aimed at changed (the title is the one the real request set).
    async with http.get(f"{world.base}/api/v1/images/{image}", headers=victim.bearer) as resp:
        got = await expect(resp, 200)
        assert got["title"] == "real" and got["visibility"] == "private", got
    async with http.get(f"{world.base}/api/v1/keys", headers=victim.bearer) as resp:
        assert [k["id"] for k in (await expect(resp, 200))["items"]] == [key["id"]]
    async with http.get(f"{world.base}/api/v1/jobs?limit=100", headers=victim.bearer) as resp:
        assert [j["id"] for j in (await expect(resp, 200))["items"]] == [job["id"]]
    async with http.get(f"{world.base}/api/v1/auth/me", headers=victim.bearer) as resp:
        await expect(resp, 200)  # the session was not logged out


async def test_csrf_login_and_register_forms_need_the_presession_token(world: World) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as b:
        form = {"username": world.other.username, "password": PASSWORD, "next": "/"}
        for path in ("/login", "/register"):
            # No token at all, then a token without its cookie (a forged cross-site post).
            async with b.post(f"{world.base}{path}", data=form, allow_redirects=False) as resp:
                assert resp.status == 403, (path, await resp.text())
                assert "easel_session" not in resp.cookies
            async with b.post(
                f"{world.base}{path}", data={**form, "csrf_token": "made-up"}, allow_redirects=False
            ) as resp:
                assert resp.status == 403
    # The JSON login and register refuse what a form can send cross-site (no preflight).
    async with aiohttp.ClientSession() as b:
        for path in ("/api/v1/auth/login", "/api/v1/auth/register"):
            for ctype, data in (
                ("application/x-www-form-urlencoded", f"username={world.other.username}&password=x"),
                ("text/plain", json.dumps({"username": world.other.username, "password": PASSWORD})),
                ("multipart/form-data; boundary=z", "--z--"),
            ):
                async with b.post(f"{world.base}{path}", data=data, headers={"Content-Type": ctype}) as resp:
                    await expect(resp, 415, "unsupported_media_type")


async def test_cookie_alone_does_not_authenticate_the_compatible_apis(world: World) -> None:
    browser = await Browser.login(world.base, world.other)
    try:
        async with browser.http.post(
            f"{world.base}/v1/images/generations", json={"prompt": "forged"}
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "missing_api_key"
        async with browser.http.post(f"{world.base}/sdapi/v1/txt2img", json={"prompt": "forged"}) as resp:
            assert resp.status == 401
        async with browser.http.post(f"{world.base}/sdapi/v1/interrupt") as resp:
            assert resp.status == 401
    finally:
        await browser.close()


# --- sessions ------------------------------------------------------------------------------------


async def test_session_fixation_a_planted_cookie_is_replaced_at_login_and_logout_kills_the_session(
    world: World, http: aiohttp.ClientSession
) -> None:
    victim = await register(http, world.base, "fixed")
    attacker_token = await _fresh_session(http, world.other)
    for planted in (attacker_token, "ess_" + "0" * 32 + "_" + "A" * 43):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as b:
            browser = Browser(world.base, b)
            # The login page is open; then the attacker's cookie is planted (a sibling subdomain, a
            # shared computer), and the victim logs in.
            token = await browser.form_token("/login")
            b.cookie_jar.update_cookies({"easel_session": planted}, yarl.URL(world.base))
            async with b.post(
                f"{world.base}/login",
                data={"username": victim.username, "password": PASSWORD, "csrf_token": token, "next": "/"},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303, await resp.text()
                cookie = resp.cookies["easel_session"]
                assert cookie.value and cookie.value != planted
                assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
            session = cookie.value
            # The new session is the victim's; the planted one was not promoted to it.
            async with http.get(
                f"{world.base}/api/v1/auth/me", headers={"Authorization": f"Bearer {session}"}
            ) as r:
                assert (await expect(r, 200))["user"]["username"] == victim.username
            async with http.get(
                f"{world.base}/api/v1/auth/me", headers={"Authorization": f"Bearer {planted}"}
            ) as r:
                if planted == attacker_token:
                    assert (await expect(r, 200))["user"]["username"] == world.other.username
                else:
                    await expect(r, 401, "invalid_token")
            # Logout (a form post with its token) ends the session and clears the cookie.
            browser.csrf = await browser.form_token("/settings/keys")
            async with b.post(
                f"{world.base}/logout", data={"csrf_token": browser.csrf}, allow_redirects=False
            ) as resp:
                assert resp.status == 303 and resp.headers["Location"] == "/login"
                cleared = resp.cookies["easel_session"]
                assert (cleared.value == "" and cleared["max-age"] in ("0", 0)) or cleared["expires"]
            async with http.get(
                f"{world.base}/api/v1/auth/me", headers={"Authorization": f"Bearer {session}"}
            ) as r:
                await expect(r, 401)
            # A browser that kept the dead cookie is sent to log in, and told to drop it.
            async with aiohttp.ClientSession() as stale:
                async with stale.get(
                    f"{world.base}/gallery",
                    headers={"Cookie": f"easel_session={session}"},
                    allow_redirects=False,
                ) as resp:
                    assert resp.status == 303 and resp.headers["Location"].startswith("/login")
                    assert any(
                        h.startswith("easel_session=;") or 'easel_session=""' in h
                        for h in resp.headers.getall("Set-Cookie", [])
                    )
    # The REST logout ends a bearer session on the next request.
    token = await _fresh_session(http, victim)
    async with http.post(
        f"{world.base}/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        await expect(r, 204)
    async with http.get(f"{world.base}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}) as r:
        await expect(r, 401)


# --- rate limits ---------------------------------------------------------------------------------


async def test_login_throttling_answers_429_with_retry_after(
    world: World, http: aiohttp.ClientSession
) -> None:
    target = await register(http, world.base, "target")
    for _ in range(5):
        async with http.post(
            f"{world.base}/api/v1/auth/login",
            json={"username": target.username, "password": "wrong guess 123"},
        ) as resp:
            await expect(resp, 401, "invalid_credentials")
    for password in ("wrong guess 123", PASSWORD):  # locked: even the right password is refused
        async with http.post(
            f"{world.base}/api/v1/auth/login", json={"username": target.username, "password": password}
        ) as resp:
            await expect(resp, 429, "login_throttled")
            assert int(resp.headers["Retry-After"]) > 0
    # The same lock through the web form, HTTP Basic (AUTOMATIC1111) and a password change.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as b:
        token = await Browser(world.base, b).form_token("/login")
        async with b.post(
            f"{world.base}/login",
            data={"username": target.username, "password": PASSWORD, "csrf_token": token},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
            assert "easel_session" not in resp.cookies
    basic = base64.b64encode(f"{target.username}:{PASSWORD}".encode()).decode()
    async with http.get(
        f"{world.base}/sdapi/v1/options", headers={"Authorization": f"Basic {basic}"}
    ) as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0, await body_of(resp)
    async with http.post(
        f"{world.base}/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "brand new passphrase"},
        headers=target.session_bearer,
    ) as resp:
        # A stolen session must not become a way around the lock: password changes wait too.
        await expect(resp, 429, "login_throttled")
        assert int(resp.headers["Retry-After"]) > 0
    # Other accounts are not locked out by someone else's failures.
    async with http.post(
        f"{world.base}/api/v1/auth/login", json={"username": world.other.username, "password": PASSWORD}
    ) as resp:
        await expect(resp, 200)


async def test_jobs_in_flight_limit_answers_429_with_retry_after(
    world: World, http: aiohttp.ClientSession
) -> None:
    greedy = await register(http, world.base, "greedy")
    accepted, refused = [], []
    for i in range(12):
        async with http.post(
            f"{world.base}/api/v1/generations",
            json={"prompt": f"one more {i}", "width": 64, "height": 64, "steps": 2},
            headers=greedy.bearer,
        ) as resp:
            if resp.status == 429:
                await expect(resp, 429, "too_many_jobs_in_flight")
                assert int(resp.headers["Retry-After"]) > 0
                refused.append(i)
            else:
                accepted.append((await expect(resp, 202))["job"]["id"])
    assert refused, "twelve jobs at once were all accepted"
    for job_id in accepted:  # leave nothing running for the next tests
        async with http.post(f"{world.base}/api/v1/jobs/{job_id}/cancel", headers=greedy.bearer) as resp:
            await expect(resp, 202)


# --- path traversal ------------------------------------------------------------------------------


TRAVERSALS = (
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252F..%252Fetc%252Fpasswd",
    "....%2F%2F....%2F%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "..%5C..%5Cwindows%5Cwin.ini",
    "sha256%2F..%2F..%2Fetc%2Fpasswd",
)


async def test_path_traversal_in_ids_and_paths_finds_nothing(
    world: World, http: aiohttp.ClientSession
) -> None:
    me = world.owner.session_bearer
    for bad in TRAVERSALS:
        for method, path, codes in (
            ("GET", f"/api/v1/images/{bad}", {"image_not_found", "not_found"}),
            ("GET", f"/api/v1/images/{bad}/file", {"image_not_found", "not_found"}),
            ("GET", f"/api/v1/images/{bad}/file?size=thumb", {"image_not_found", "not_found"}),
            ("PATCH", f"/api/v1/images/{bad}", {"image_not_found", "not_found"}),
            ("DELETE", f"/api/v1/images/{bad}", {"image_not_found", "not_found"}),
            ("GET", f"/api/v1/jobs/{bad}", {"job_not_found", "not_found"}),
            ("GET", f"/api/v1/jobs/{bad}/events", {"job_not_found", "not_found"}),
            ("DELETE", f"/api/v1/keys/{bad}", {"api_key_not_found", "not_found"}),
            ("GET", f"/s/{bad}", {"share_link_not_found", "not_found"}),
            ("GET", f"/s/{bad}/file", {"share_link_not_found", "not_found"}),
        ):
            kwargs = {"json": {"title": "x"}} if method == "PATCH" else {}
            async with http.request(
                method, raw(world.base, path), headers={**me, "Accept": "application/json"}, **kwargs
            ) as resp:
                body = await body_of(resp)
                assert resp.status == 404, (method, path, resp.status, body)
                assert body["error"]["code"] in codes, (method, path, body)
    for path in (
        "/static/../../../../etc/passwd",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/../../../etc/passwd",
        "/api/v1/../../../../etc/passwd",
    ):
        async with http.get(raw(world.base, path)) as resp:
            text = (await resp.read()).decode("utf-8", "replace")
            assert resp.status in (400, 403, 404), (path, resp.status)
            assert "root:" not in text


async def test_upload_filenames_cannot_escape_the_blob_store(
    world: World, http: aiohttp.ClientSession, stack: Stack
) -> None:
    run_dir = stack.run_dir
    before = {p for p in run_dir.rglob("*") if "blobs" not in p.parts and "logs" not in p.parts}
    names = (
        "../../etc/passwd",
        "..\\..\\..\\windows\\win.ini",
        "/etc/shadow",
        "../" * 20 + "tmp/easel-escape.png",
        "sha256/../../escape.png",
        "%2e%2e%2fescape.png",
        "a" * 5000 + ".png",
    )
    source = png_bytes(64, 64, (1, 2, 3))
    for name in names:
        form = multipart({"kind": "variation", "steps": "1"}, {"image": (name, source, "image/png")})
        async with http.post(f"{world.base}/api/v1/edits", data=form, headers=world.other.bearer) as resp:
            job = (await expect(resp, 202))["job"]
        init = job["params"]["init_image_id"]
        async with http.get(f"{world.base}/api/v1/images/{init}", headers=world.other.bearer) as resp:
            record = await expect(resp, 200)
        # Kept only as a title: the last path segment, never a path, never more than 200 characters.
        assert "/" not in record["title"] and "\\" not in record["title"], record["title"]
        assert len(record["title"]) <= 200
        async with http.post(
            f"{world.base}/api/v1/jobs/{job['id']}/cancel", headers=world.other.bearer
        ) as resp:
            await expect(resp, 202)
    # Blobs are content-addressed under the store; nothing was written anywhere else.
    blobs = run_dir / "blobs"
    for path in blobs.rglob("*"):
        if path.is_file():
            rel = path.relative_to(blobs).as_posix()
            assert re.fullmatch(
                r"(sha256/[0-9a-f]{2}/[0-9a-f]{64}\.png|thumb/[0-9a-f]{2}/[0-9a-f]{64}\.webp)", rel
            ) or (rel.startswith(".")), rel
    after = {p for p in run_dir.rglob("*") if "blobs" not in p.parts and "logs" not in p.parts}
    assert {
        p for p in after - before if "escape" in p.name or p.name in ("passwd", "shadow", "win.ini")
    } == set()
    assert not Path("/tmp/easel-escape.png").exists()


# --- SQL metacharacters --------------------------------------------------------------------------

SQLISH = (
    "Robert'); DROP TABLE jobs;--",
    "' OR '1'='1",
    '" OR ""="',
    "100% _wild_ \\ card",
    "$1 $$ ::text ; -- /* */",
    "\u00e9\u00e8 \u2603 \U0001f600 \\x00",
)


async def test_sql_metacharacters_are_stored_and_returned_verbatim(
    world: World, http: aiohttp.ClientSession
) -> None:
    me = world.other.bearer
    prompt = " | ".join(SQLISH)
    job = await submit(http, world.other, prompt, negative_prompt=SQLISH[0], seed=11)
    assert job["params"]["prompt"] == prompt and job["params"]["negative_prompt"] == SQLISH[0]
    done = await wait_job(http, world.other, job["id"])
    assert done["status"] == "completed", done
    image = done["images"][0]["id"]
    async with http.get(f"{world.base}/api/v1/images/{image}", headers=me) as resp:
        record = await expect(resp, 200)
    assert record["params"]["prompt"] == prompt
    title = SQLISH[0] + " " + SQLISH[3]
    tags = [t.lower() for t in SQLISH[:3]]
    async with http.patch(
        f"{world.base}/api/v1/images/{image}",
        json={"title": title, "tags": tags, "visibility": "public"},
        headers=me,
    ) as resp:
        updated = await expect(resp, 200)
    assert updated["title"] == title and updated["tags"] == tags, updated
    # Searching with metacharacters is an ordinary search: 200, and only images the caller may see.
    for q in (*SQLISH, "%", "_", "\\", "'", "*", "harbour' OR 1=1 --", "%' AND owner_id <> '"):
        for headers in ({}, me, world.admin.bearer):
            async with http.get(f"{world.base}/api/v1/search", params={"q": q}, headers=headers) as resp:
                found = await expect(resp, 200)
            ids = [i["id"] for i in found["items"]]
            if headers is not world.admin.bearer:
                assert world.private not in ids, (q, ids)
    async with http.get(f"{world.base}/api/v1/search", params={"q": "DROP TABLE jobs"}, headers=me) as resp:
        assert image in [i["id"] for i in (await expect(resp, 200))["items"]]
    # Metacharacters in names and cursors: a clean refusal or success, never an error page.
    for name in SQLISH:
        async with http.post(
            f"{world.base}/api/v1/auth/login", json={"username": name, "password": name}
        ) as resp:
            await expect(resp, 401, "invalid_credentials")
        async with http.post(
            f"{world.base}/api/v1/auth/register",
            json={"username": name, "email": f"{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD},
        ) as resp:
            await expect(resp, 400, "invalid_username", "username")
        async with http.post(
            f"{world.base}/api/v1/keys", json={"name": name}, headers=world.other.session_bearer
        ) as resp:
            created = await expect(resp, 201)
            assert created["name"] == name.strip()
        async with http.delete(
            f"{world.base}/api/v1/keys/{created['id']}", headers=world.other.session_bearer
        ) as r:
            await expect(r, 204)
        for path in ("/api/v1/images", "/api/v1/jobs", "/api/v1/community"):
            async with http.get(f"{world.base}{path}", params={"cursor": name}, headers=me) as resp:
                assert resp.status in (200, 400), (path, name, resp.status, await body_of(resp))
                if resp.status == 400:
                    assert (await resp.json())["error"]["code"] in ("invalid_cursor", "invalid_query")


# --- lengths -------------------------------------------------------------------------------------


async def test_prompt_and_field_length_limits(world: World, http: aiohttp.ClientSession) -> None:
    me = world.other.bearer
    s = world.other.session_bearer
    mine = world.owner.bearer
    base = world.base
    cases: list[tuple[str, str, dict[str, Any], dict[str, str], int, str, str | None]] = [
        ("POST", "/api/v1/generations", {"prompt": "p" * 2001}, me, 400, "invalid_prompt", "prompt"),
        (
            "POST",
            "/api/v1/generations",
            {"prompt": "ok", "negative_prompt": "n" * 2001},
            me,
            400,
            "invalid_prompt",
            "negative_prompt",
        ),
        # One limit per field (services/common/limits.py): far past it is the same answer as just past it.
        ("POST", "/api/v1/generations", {"prompt": "p" * 100_001}, me, 400, "invalid_prompt", "prompt"),
        (
            "POST",
            "/api/v1/generations",
            {"prompt": "ok", "sampler": "s" * 101},
            me,
            400,
            "invalid_field",
            "sampler",
        ),
        (
            "POST",
            "/api/v1/generations",
            {"prompt": "ok", "model": "m" * 201},
            me,
            400,
            "invalid_field",
            "model",
        ),
        ("POST", "/api/v1/generations", {"prompt": "ok", "n": 1000}, me, 400, "too_many_images", "n"),
        (
            "POST",
            "/api/v1/generations",
            {"prompt": "ok", "steps": 100_000},
            me,
            400,
            "invalid_steps",
            "steps",
        ),
        ("POST", "/api/v1/generations", {"prompt": "ok", "width": 100_000}, me, 400, "invalid_size", "width"),
        ("PATCH", f"/api/v1/images/{world.public}", {"title": "t" * 201}, me, 400, "invalid_field", "title"),
        ("PATCH", f"/api/v1/images/{world.public}", {"tags": ["t"] * 31}, me, 400, "too_many_tags", "tags"),
        ("PATCH", f"/api/v1/images/{world.public}", {"tags": ["t" * 51]}, me, 400, "tag_too_long", "tags"),
        # Checked by gallery (after it knows the caller may change the image): the owner sends these.
        ("PATCH", f"/api/v1/images/{world.public}", {"tags": ["t" * 41]}, mine, 400, "tag_too_long", "tags"),
        (
            "PATCH",
            f"/api/v1/images/{world.public}",
            {"tags": [f"t{i}" for i in range(21)]},
            mine,
            400,
            "too_many_tags",
            "tags",
        ),
        (
            "POST",
            f"/api/v1/images/{world.public}/report",
            {"reason": "r" * 1001},
            me,
            400,
            "invalid_field",
            "reason",
        ),
        ("POST", "/api/v1/keys", {"name": "k" * 101}, s, 400, "invalid_key_name", "name"),
        ("POST", "/api/v1/keys", {"name": "k" * 65}, s, 400, "invalid_key_name", "name"),
        (
            "POST",
            "/api/v1/auth/register",
            {"username": "u" * 201, "email": "a@b.co", "password": PASSWORD},
            {},
            400,
            "invalid_username",
            "username",
        ),
        (
            "POST",
            "/api/v1/auth/register",
            {"username": "u" * 33, "email": "a@b.co", "password": PASSWORD},
            {},
            400,
            "invalid_username",
            "username",
        ),
        (
            "POST",
            "/api/v1/auth/register",
            {"username": "okname", "email": "e" * 321, "password": PASSWORD},
            {},
            400,
            "invalid_email",
            "email",
        ),
        (
            "POST",
            "/api/v1/auth/register",
            {"username": "okname", "email": "a@b.co", "password": "p" * 1001},
            {},
            400,
            "password_too_long",
            "password",
        ),
        (
            "POST",
            "/api/v1/auth/register",
            {"username": "okname", "email": "a@b.co", "password": "p" * 257},
            {},
            400,
            "password_too_long",
            "password",
        ),
        (
            "POST",
            "/api/v1/auth/login",
            {"username": "u" * 321, "password": PASSWORD},
            {},
            400,
            "invalid_field",
            "username",
        ),
        (
            "POST",
            "/api/v1/auth/login",
            {"username": "okname", "password": "p" * 1001},
            {},
            400,
            "invalid_field",
            "password",
        ),
    ]
    for method, path, body, headers, status, code, field_name in cases:
        async with http.request(method, base + path, json=body, headers=headers) as resp:
            await expect(resp, status, code, field_name)
    async with http.get(f"{base}/api/v1/search", params={"q": "q" * 201}) as resp:
        await expect(resp, 400, "query_too_long", "q")
    async with http.post(
        f"{base}/api/v1/generations", json={"prompt": "ok"}, headers={**me, "Idempotency-Key": "k" * 201}
    ) as resp:
        await expect(resp, 400, "invalid_idempotency_key")
    # A body over the limit is refused before it is read, on every JSON route.
    huge = b'{"prompt": "' + b"p" * (1024 * 1024 + 10) + b'"}'
    for path in ("/api/v1/generations", "/api/v1/auth/register", f"/api/v1/images/{world.public}"):
        method = "PATCH" if "images" in path else "POST"
        async with http.request(
            method, base + path, data=huge, headers={**me, "Content-Type": "application/json"}
        ) as resp:
            await expect(resp, 413, "body_too_large")
    # Prompts at the limit are fine (and stored whole).
    job = await submit(http, world.other, "p" * 2000, steps=1)
    assert len(job["params"]["prompt"]) == 2000
    async with http.post(f"{base}/api/v1/jobs/{job['id']}/cancel", headers=me) as resp:
        await expect(resp, 202)


# --- uploads -------------------------------------------------------------------------------------


def _bad_uploads() -> list[tuple[str, bytes, int, set[str]]]:
    good = png_bytes(64, 64)
    return [
        ("empty", b"", 400, {"missing_image", "not_an_image"}),
        ("text", b"hello, this is not an image at all", 400, {"not_an_image", "invalid_image"}),
        (
            "truncated png",
            good[: len(good) // 2],
            400,
            {"invalid_image", "not_an_image", "image_undecodable"},
        ),
        ("png header only", good[:40], 400, {"invalid_image", "not_an_image", "image_undecodable"}),
        ("gif", b"GIF89a" + b"\x00" * 100, 400, {"unsupported_image_format"}),
        (
            "svg",
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            400,
            {"unsupported_image_format"},
        ),
        ("html", b"<html><script>alert(1)</script></html>", 400, {"not_an_image", "invalid_image"}),
        (
            "bomb 100000x100000",
            png_with_size(100_000, 100_000),
            400,
            {"decompression_bomb", "image_too_many_pixels"},
        ),
        (
            "too many pixels 5000x5000",
            png_with_size(5000, 5000),
            400,
            {"image_too_many_pixels", "decompression_bomb"},
        ),
        ("oversized 21 MiB", b"\x89PNG\r\n\x1a\n" + b"\x00" * (21 * 1024 * 1024), 400, {"image_too_large"}),
    ]


async def test_bad_uploads_are_refused_with_their_codes(world: World, http: aiohttp.ClientSession) -> None:
    me = world.other.bearer
    base = world.base
    for label, data, status, codes in _bad_uploads():
        form = multipart({"kind": "variation"}, {"image": ("upload.png", data, "image/png")})
        async with http.post(f"{base}/api/v1/edits", data=form, headers=me) as resp:
            body = await body_of(resp)
            assert resp.status == status, (label, resp.status, body)
            assert body["error"]["code"] in codes, (label, body)
            assert body["error"].get("field") == "image", (label, body)
        if len(data) < 2 * 1024 * 1024:
            b64 = base64.b64encode(data).decode()
            async with http.post(
                f"{base}/api/v1/edits", json={"kind": "variation", "image": b64}, headers=me
            ) as resp:
                body = await body_of(resp)
                assert resp.status == status, ("json " + label, resp.status, body)
                assert body["error"]["code"] in codes, ("json " + label, body)
    # Over the upload body limit (48 MiB): refused before it is read.
    form = multipart({"kind": "variation"}, {"image": ("big.png", b"\x00" * (49 * 1024 * 1024), "image/png")})
    async with http.post(f"{base}/api/v1/edits", data=form, headers=me) as resp:
        await expect(resp, 413, "body_too_large")
    # Not base64, and base64 of the wrong type.
    for value, code in (
        ("!!!not base64!!!", "invalid_base64"),
        (12345, "invalid_field"),
        ("data:text/plain,hi", "invalid_base64"),
    ):
        async with http.post(
            f"{base}/api/v1/edits", json={"kind": "variation", "image": value}, headers=me
        ) as resp:
            await expect(resp, 400, code, "image")
    # The same files through the OpenAI and AUTOMATIC1111 routes: their own error shapes, 4xx.
    for label, data, _, _ in _bad_uploads()[:8]:
        form = multipart({"prompt": "x"}, {"image": ("upload.png", data, "image/png")})
        async with http.post(f"{base}/v1/images/edits", data=form, headers=me) as resp:
            body = await body_of(resp)
            assert resp.status == 400, ("openai " + label, resp.status, body)
            assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"], body
        async with http.post(
            f"{base}/sdapi/v1/img2img",
            json={"prompt": "x", "init_images": [base64.b64encode(data).decode()]},
            headers=me,
        ) as resp:
            body = await body_of(resp)
            assert resp.status == 422, ("a1111 " + label, resp.status, body)
            assert body["detail"][0]["loc"][:2] == ["body", "init_images"], body


# --- malformed bodies ----------------------------------------------------------------------------

JSON_ROUTES = (
    ("POST", "/api/v1/auth/register", "anon"),
    ("POST", "/api/v1/auth/login", "anon"),
    ("POST", "/api/v1/auth/password", "session"),
    ("POST", "/api/v1/keys", "session"),
    ("POST", "/api/v1/generations", "user"),
    ("POST", "/api/v1/edits", "user"),
    ("PATCH", "/api/v1/images/{public}", "user"),
    ("POST", "/api/v1/images/{public}/report", "user"),
    ("POST", "/api/v1/images/{public}/hide", "admin"),
)
MALFORMED: tuple[tuple[str, bytes, str, int, str], ...] = (
    ("truncated", b'{"prompt": "a', "application/json", 400, "invalid_json"),
    ("not utf-8", b'{"prompt": "\xff\xfe"}', "application/json", 400, "invalid_json"),
    ("array", b"[1, 2, 3]", "application/json", 400, "invalid_body"),
    ("string", b'"hello"', "application/json", 400, "invalid_body"),
    ("null", b"null", "application/json", 400, "invalid_body"),
    ("number", b"12", "application/json", 400, "invalid_body"),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "invalid_json"),
    (
        "deeply nested object",
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "application/json",
        400,
        "invalid_json",
    ),
    ("text/plain", b'{"prompt": "x"}', "text/plain", 415, "unsupported_media_type"),
    ("xml", b"<prompt>x</prompt>", "application/xml", 415, "unsupported_media_type"),
)


async def test_malformed_json_on_every_body_route(world: World, http: aiohttp.ClientSession) -> None:
    for method, template, who in JSON_ROUTES:
        path = template.replace("{public}", world.public)
        headers = {
            "anon": {},
            "session": world.other.session_bearer,
            "user": world.other.bearer,
            "admin": world.admin.bearer,
        }[who]
        for label, data, ctype, status, code in MALFORMED:
            if path == "/api/v1/edits" and status == 415:
                continue  # edits take multipart too; see below
            async with http.request(
                method, world.base + path, data=data, headers={**headers, "Content-Type": ctype}
            ) as resp:
                body = await body_of(resp)
                assert resp.status == status, (label, method, path, resp.status, body)
                assert body["error"]["code"] == code, (label, path, body)
    # The compatible APIs: the same inputs answer in their own shapes, never 5xx.
    for path, shape in (
        ("/v1/images/generations", "openai"),
        ("/sdapi/v1/txt2img", "a1111"),
        ("/sdapi/v1/img2img", "a1111"),
    ):
        for label, data, ctype, _, _ in MALFORMED:
            async with http.post(
                world.base + path, data=data, headers={**world.other.bearer, "Content-Type": ctype}
            ) as resp:
                body = await body_of(resp)
                if shape == "openai":
                    assert resp.status in (400, 415), (label, path, resp.status, body)
                    assert body["error"]["message"], body
                else:
                    assert resp.status == 422, (label, path, resp.status, body)
                    assert body["detail"], body
    # Multipart bodies that do not parse.
    for data, ctype in (
        (
            b'--zz\r\nContent-Disposition: form-data; name="kind"\r\n\r\nvariation',
            "multipart/form-data; boundary=zz",
        ),
        (b"garbage", "multipart/form-data"),
        (b"garbage", "multipart/form-data; boundary="),
    ):
        async with http.post(
            f"{world.base}/api/v1/edits", data=data, headers={**world.other.bearer, "Content-Type": ctype}
        ) as resp:
            body = await body_of(resp)
            assert resp.status == 400, (ctype, resp.status, body)
            assert body["error"]["code"] in ("invalid_form", "missing_image", "missing_field"), body


WRONG_TYPES: tuple[tuple[str, str, str, dict[str, Any], str], ...] = (
    # (method, path, who, body, field)
    ("POST", "/api/v1/generations", "user", {"prompt": 5}, "prompt"),
    ("POST", "/api/v1/generations", "user", {"prompt": ["a"]}, "prompt"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "width": "64"}, "width"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "width": 64.5}, "width"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "steps": True}, "steps"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "n": -1}, "n"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "seed": 2**64}, "seed"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "seed": "1"}, "seed"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "guidance": "high"}, "guidance"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "guidance": 1e300}, "guidance"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "model": {"name": "x"}}, "model"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "sampler": 3}, "sampler"),
    ("POST", "/api/v1/generations", "user", {"prompt": "ok", "negative_prompt": False}, "negative_prompt"),
    ("POST", "/api/v1/generations", "user", {}, "prompt"),
    ("POST", "/api/v1/generations", "user", {"prompt": "   "}, "prompt"),
    ("POST", "/api/v1/edits", "user", {"kind": 1, "image_id": "x"}, "kind"),
    ("POST", "/api/v1/edits", "user", {"kind": "teleport", "image_id": "x"}, "kind"),
    ("POST", "/api/v1/edits", "user", {"kind": "variation", "image_id": 12}, "image_id"),
    (
        "POST",
        "/api/v1/edits",
        "user",
        {"kind": "variation", "image_id": "{public}", "strength": 2},
        "strength",
    ),
    (
        "POST",
        "/api/v1/edits",
        "user",
        {"kind": "variation", "image_id": "{public}", "strength": "max"},
        "strength",
    ),
    ("POST", "/api/v1/edits", "user", {"kind": "variation"}, "image"),
    ("PATCH", "/api/v1/images/{public}", "owner", {"visibility": 1}, "visibility"),
    ("PATCH", "/api/v1/images/{public}", "owner", {"visibility": "everyone"}, "visibility"),
    ("PATCH", "/api/v1/images/{public}", "owner", {"title": ["a"]}, "title"),
    ("PATCH", "/api/v1/images/{public}", "owner", {"tags": "a,b"}, "tags"),
    ("PATCH", "/api/v1/images/{public}", "owner", {"tags": [1, 2]}, "tags"),
    ("POST", "/api/v1/images/{public}/report", "user", {"reason": 5}, "reason"),
    ("POST", "/api/v1/images/{public}/hide", "admin", {"hidden": "yes"}, "hidden"),
    ("POST", "/api/v1/images/{public}/hide", "admin", {}, "hidden"),
    ("POST", "/api/v1/keys", "session", {"name": 5}, "name"),
    ("POST", "/api/v1/keys", "session", {"name": "k", "ttl_seconds": "soon"}, "ttl_seconds"),
    ("POST", "/api/v1/keys", "session", {"name": "k", "ttl_seconds": -5}, "ttl_seconds"),
    ("POST", "/api/v1/keys", "session", {"name": "k", "scopes": "generate"}, "scopes"),
    ("POST", "/api/v1/keys", "session", {}, "name"),
    (
        "POST",
        "/api/v1/auth/register",
        "anon",
        {"username": 1, "email": "a@b.co", "password": PASSWORD},
        "username",
    ),
    (
        "POST",
        "/api/v1/auth/register",
        "anon",
        {"username": "okname", "email": None, "password": PASSWORD},
        "email",
    ),
    (
        "POST",
        "/api/v1/auth/register",
        "anon",
        {"username": "okname", "email": "a@b.co", "password": 1234567890123},
        "password",
    ),
    ("POST", "/api/v1/auth/login", "anon", {"username": ["a"], "password": PASSWORD}, "username"),
    ("POST", "/api/v1/auth/login", "anon", {"username": "a", "password": {"$ne": ""}}, "password"),
    (
        "POST",
        "/api/v1/auth/password",
        "session",
        {"current_password": 1, "new_password": "x" * 20},
        "current_password",
    ),
    ("POST", "/api/v1/auth/password", "session", {"current_password": PASSWORD}, "new_password"),
)


async def test_wrong_types_on_every_body_field_name_the_field(
    world: World, http: aiohttp.ClientSession
) -> None:
    for method, template, who, body, field_name in WRONG_TYPES:
        path = template.replace("{public}", world.public)
        payload = json.loads(json.dumps(body).replace("{public}", world.public))
        headers = {
            "anon": {},
            "session": world.other.session_bearer,
            "user": world.other.bearer,
            "owner": world.owner.bearer,
            "admin": world.admin.bearer,
        }[who]
        async with http.request(method, world.base + path, json=payload, headers=headers) as resp:
            answer = await body_of(resp)
            assert resp.status == 400, (method, path, body, resp.status, answer)
            assert answer["error"]["code"] and answer["error"]["message"], answer
            assert answer["error"].get("field") == field_name, (method, path, body, answer)
    # NaN and Infinity are not JSON, though Python's parser would take them.
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        async with http.post(
            f"{world.base}/api/v1/generations",
            data=b'{"prompt": "ok", "guidance": ' + literal + b"}",
            headers={**world.other.bearer, "Content-Type": "application/json"},
        ) as resp:
            answer = await body_of(resp)
            assert resp.status == 400, (literal, resp.status, answer)
            assert answer["error"]["code"] in ("invalid_json", "invalid_field"), answer
    # Query strings: wrong numbers and choices.
    for path, field_name in (
        ("/api/v1/images?limit=abc", "limit"),
        ("/api/v1/images?limit=0", "limit"),
        ("/api/v1/images?limit=99999999999999999999", "limit"),
        ("/api/v1/jobs?limit=-1", "limit"),
        ("/api/v1/community?order=random", "order"),
        ("/api/v1/search?q=x&mine=perhaps", "mine"),
        (f"/api/v1/images/{world.public}/file?size=huge", "size"),
    ):
        async with http.get(world.base + path, headers=world.other.bearer) as resp:
            await expect(resp, 400, "invalid_query", field_name)
