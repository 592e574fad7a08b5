"""The hostile corpus: every string field of every face, times NUL, lone surrogates, control characters,
huge numbers and wrong types, over a whole running studio. Not one answer may be a 5xx, and none may
show Python's internals.

The cases are generated from one table (`ENDPOINTS`: each endpoint with a valid request and the
names of its text and number fields), so a new field is one word in the table. Faces: the REST API,
the OpenAI- and AUTOMATIC1111-compatible APIs, the web pages' forms, query strings and headers.

Strict expectations where the issue sets them (finding 3): a NUL character or a lone surrogate is a
400 `invalid_field` naming the field (AUTOMATIC1111's validation shape: 422 with the same type), a
credential that cannot be real is a 401, a huge number a 4xx without Python's words. Everything else
(control characters, wrong types) may be accepted or refused, but a refusal has the face's error
shape with a code and a message.

Also here, over the same stack: the sign-in `next` (finding 6) and absolute URLs that do not follow
the Host header (finding 7).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
import pytest_asyncio
import yarl

from services.local.stack import Stack
from tests.stacks import new_database

from .client import PASSWORD, User, body_of, png_bytes, register, submit, wait_job
from .conftest import NO_REQUEST_RATE_LIMITS, make_stack

pytestmark = pytest.mark.timeout(900)

HUGE = "9" * 5000
LEAKS = ("Traceback", "set_int_max_str_digits", "asyncpg", "UnicodeEncodeError", "surrogates not allowed")


# --- hostile values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    name: str
    value: Any  # a str (sent as UTF-8 with surrogates passed through as bytes), or a JSON value
    strict: bool = False  # NUL or lone surrogate: must be 400 invalid_field naming the field
    json_only: bool = False  # a JSON type (number, list, ...) a form or query cannot carry
    raw_json: str | None = None  # sent as this JSON text instead of a dumped value


TEXT_VALUES = (
    Hostile("nul", "a\x00b", strict=True),
    Hostile("nul_only", "\x00", strict=True),
    Hostile("surrogate", "x\ud800y", strict=True),
    Hostile("low_surrogate", "\udfff", strict=True),
    Hostile("control", "a\x01\x08\x1b[31m\x7f\u202e\u200bb"),
    Hostile("newlines", "a\r\nSet-Cookie: x=1\n\tb"),
    Hostile("digits", HUGE),
    Hostile("int", 12345, json_only=True),
    Hostile("huge_int", None, json_only=True, raw_json=HUGE),
    Hostile("float", 1.5, json_only=True),
    Hostile("bool", True, json_only=True),
    Hostile("list", ["a", "b"], json_only=True),
    Hostile("object", {"a": "\x00"}, json_only=True),
)
NUMBER_VALUES = (
    Hostile("huge_int", None, json_only=True, raw_json=HUGE),
    Hostile("huge_negative", None, json_only=True, raw_json="-" + HUGE),
    Hostile("huge_float", None, json_only=True, raw_json="1" + "0" * 400 + ".5"),
    Hostile("exponent", None, json_only=True, raw_json="1e999999"),
    Hostile("text", "twelve"),
    Hostile("nul", "1\x00", strict=True),
    Hostile("digits_text", HUGE),
    Hostile("float", 1.5, json_only=True),
    Hostile("bool", True, json_only=True),
    Hostile("list", [1], json_only=True),
    Hostile("object", {}, json_only=True),
)


def utf8(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")  # a lone surrogate goes out as its (invalid) bytes


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    face: str  # rest | openai | a1111 | web
    method: str
    path: str  # {image}, {job} and {key} are filled in from the world
    body: str  # json | form | multipart | query
    base: dict[str, Any]
    strings: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # multipart file fields (a small PNG each)
    who: str = "bearer"  # bearer | anon | basic | cookie | presession


GEN = {"prompt": "a quiet harbour", "width": 64, "height": 64, "steps": 2, "seed": 11}
A1111 = {"prompt": "a quiet harbour", "width": 64, "height": 64, "steps": 2, "seed": 11}
ENDPOINTS: tuple[Endpoint, ...] = (
    # REST /api/v1
    Endpoint(
        "rest",
        "POST",
        "/api/v1/auth/register",
        "json",
        {"username": "hostile", "email": "h@example.com", "password": PASSWORD},
        ("username", "email", "password"),
        who="anon",
    ),
    Endpoint(
        "rest",
        "POST",
        "/api/v1/auth/login",
        "json",
        {"username": "nobody", "password": "x"},
        ("username", "password"),
        who="anon",
    ),
    Endpoint(
        "rest",
        "POST",
        "/api/v1/auth/password",
        "json",
        {"current_password": "wrong wrong wrong", "new_password": PASSWORD + "!"},
        ("current_password", "new_password"),
    ),
    Endpoint("rest", "POST", "/api/v1/keys", "json", {"name": "k"}, ("name", "scopes"), ("ttl_seconds",)),
    Endpoint(
        "rest",
        "POST",
        "/api/v1/generations",
        "json",
        GEN,
        ("prompt", "negative_prompt", "model", "sampler"),
        ("width", "height", "steps", "guidance", "seed", "n"),
    ),
    Endpoint(
        "rest",
        "POST",
        "/api/v1/edits",
        "json",
        {"kind": "img2img", "image_id": "{image}", "prompt": "a storm", "steps": 2, "seed": 3},
        ("kind", "image_id", "mask_id", "model", "prompt", "negative_prompt", "image", "mask"),
        ("strength", "steps", "seed"),
    ),
    Endpoint(
        "rest",
        "POST",
        "/api/v1/edits",
        "multipart",
        {"kind": "img2img", "prompt": "a storm", "steps": "2", "seed": "3"},
        ("kind", "prompt", "model"),
        ("strength",),
        files=("image",),
    ),
    Endpoint(
        "rest", "PATCH", "/api/v1/images/{image}", "json", {"title": "t"}, ("title", "visibility", "tags")
    ),
    Endpoint("rest", "POST", "/api/v1/images/{image}/report", "json", {"reason": "r"}, ("reason",)),
    Endpoint("rest", "POST", "/api/v1/images/{image}/hide", "json", {"hidden": False}, ("hidden",)),
    Endpoint("rest", "GET", "/api/v1/community", "query", {}, ("order", "cursor", "limit")),
    Endpoint("rest", "GET", "/api/v1/search", "query", {"q": "harbour"}, ("q", "cursor", "limit")),
    Endpoint("rest", "GET", "/api/v1/images", "query", {}, ("cursor", "limit")),
    Endpoint("rest", "GET", "/api/v1/jobs", "query", {}, ("cursor", "limit")),
    Endpoint("rest", "GET", "/api/v1/images/{image}/file", "query", {}, ("size",)),
    Endpoint("rest", "DELETE", "/api/v1/images/{image}/share", "query", {"token": "x"}, ("token",)),
    Endpoint("rest", "GET", "/api/v1/jobs/{job}/events", "query", {}, ("last_event_id",)),
    # OpenAI /v1
    Endpoint(
        "openai",
        "POST",
        "/v1/images/generations",
        "json",
        {"prompt": "a quiet harbour", "size": "64x64", "seed": 11},
        ("prompt", "model", "size", "response_format", "user", "quality", "style"),
        ("n",),
    ),
    Endpoint(
        "openai",
        "POST",
        "/v1/images/edits",
        "multipart",
        {"prompt": "a storm", "size": "64x64"},
        ("prompt", "model", "size", "response_format"),
        ("n",),
        files=("image",),
    ),
    Endpoint(
        "openai",
        "POST",
        "/v1/images/variations",
        "multipart",
        {"size": "64x64"},
        ("model", "size", "response_format"),
        ("n",),
        files=("image",),
    ),
    Endpoint("openai", "GET", "/v1/models", "query", {}, ("after",)),
    # AUTOMATIC1111 /sdapi/v1
    Endpoint(
        "a1111",
        "POST",
        "/sdapi/v1/txt2img",
        "json",
        A1111,
        ("prompt", "negative_prompt", "sampler_name", "sampler_index", "scheduler", "script_name"),
        ("width", "height", "steps", "cfg_scale", "seed", "batch_size", "n_iter"),
        who="basic",
    ),
    Endpoint(
        "a1111",
        "POST",
        "/sdapi/v1/img2img",
        "json",
        {**A1111, "init_images": ["{png_b64}"], "denoising_strength": 0.5},
        ("prompt", "negative_prompt", "sampler_name", "mask", "init_images"),
        ("denoising_strength", "steps", "seed"),
        who="basic",
    ),
    Endpoint("a1111", "GET", "/sdapi/v1/progress", "query", {}, ("skip_current_image",), who="basic"),
    # Web pages' forms and query strings
    Endpoint(
        "web",
        "POST",
        "/login",
        "form",
        {"username": "nobody", "password": "x", "next": "/"},
        ("username", "password", "next", "csrf_token"),
        who="presession",
    ),
    Endpoint(
        "web",
        "POST",
        "/register",
        "form",
        {"username": "hostile", "email": "h@example.com", "password": PASSWORD, "password_confirm": PASSWORD},
        ("username", "email", "password", "password_confirm"),
        who="presession",
    ),
    Endpoint(
        "web",
        "POST",
        "/images/{image}",
        "form",
        {"title": "t", "visibility": "private"},
        ("title", "visibility"),
        who="cookie",
    ),
    Endpoint("web", "POST", "/images/{image}/report", "form", {"reason": "r"}, ("reason",), who="cookie"),
    Endpoint("web", "POST", "/settings/keys", "form", {"name": "k"}, ("name", "scopes"), who="cookie"),
    Endpoint(
        "web",
        "POST",
        "/settings/password",
        "form",
        {"current_password": "wrong", "new_password": "x", "new_password_confirm": "x"},
        ("current_password", "new_password", "new_password_confirm"),
        who="cookie",
    ),
    Endpoint("web", "GET", "/search", "query", {"q": "harbour"}, ("q", "cursor"), who="cookie"),
    Endpoint("web", "GET", "/community", "query", {}, ("order", "cursor"), who="cookie"),
    Endpoint("web", "GET", "/edit", "query", {}, ("image", "kind"), who="cookie"),
    Endpoint("web", "GET", "/", "query", {}, ("remix",), who="cookie"),
    Endpoint("web", "GET", "/login", "query", {}, ("next",), who="anon"),
)

HEADERS = (
    "X-Request-Id",
    "Idempotency-Key",
    "Last-Event-ID",
    "Accept",
    "Accept-Language",
    "User-Agent",
    "If-None-Match",
    "X-CSRF-Token",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "Cookie",
    "Content-Type",
)
HEADER_PATHS = ("/api/v1/jobs", "/v1/models", "/sdapi/v1/progress", "/gallery")


@dataclass(frozen=True)
class Case:
    endpoint: Endpoint
    field: str
    hostile: Hostile

    @property
    def id(self) -> str:
        e = self.endpoint
        return f"{e.face}:{e.method}:{e.path}:{e.body}:{self.field}:{self.hostile.name}"


def cases() -> list[Case]:
    out: list[Case] = []
    for endpoint in ENDPOINTS:
        for name in endpoint.strings:
            for hostile in TEXT_VALUES:
                if hostile.json_only and endpoint.body != "json":
                    continue
                out.append(Case(endpoint, name, hostile))
        for name in endpoint.numbers:
            for hostile in NUMBER_VALUES:
                if hostile.json_only and endpoint.body != "json":
                    continue
                out.append(Case(endpoint, name, hostile))
    return out


CASES = cases()


# --- the stack -----------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def database_url(postgres_url: str) -> str:
    return await new_database(postgres_url, "hostile")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database_url: str, models_dir: Path) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("hostile-stack"),
        models_dir,
        database_url,
        extra_env={
            # One address makes every request, failed logins included.
            "EASEL_AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
            "EASEL_AUTH_LOGIN_MAX_FAILURES": "100000",
            **NO_REQUEST_RATE_LIMITS,
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


@dataclass
class World:
    base: str
    port: int
    user: User
    image_id: str = ""
    job_id: str = ""
    basic: str = ""
    browser: aiohttp.ClientSession | None = None
    anonymous: aiohttp.ClientSession | None = None
    csrf: str = ""
    seen: dict[str, int] = field(default_factory=dict)

    def fill(self, text: str) -> str:
        png_b64 = base64.b64encode(png_bytes(64, 64)).decode()
        return (
            text.replace("{image}", self.image_id).replace("{job}", self.job_id).replace("{png_b64}", png_b64)
        )


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=180)
    ) as session:
        yield session


async def csrf_of(browser: aiohttp.ClientSession, url: str) -> str:
    async with browser.get(url) as resp:
        html = await resp.text()
    found = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(
        r'<meta name="csrf-token" content="([^"]+)">', html
    )
    assert found is not None, html[:500]
    return found.group(1)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(stack: Stack, http: aiohttp.ClientSession) -> AsyncIterator[World]:
    base = stack.gateway_url
    user = await register(http, base, "hostile")
    w = World(base, stack.ports.http, user)
    job = await submit(http, user, "a quiet harbour", seed=11)
    done = await wait_job(http, user, job["id"], timeout=180)
    assert done["status"] == "completed", done
    w.job_id, w.image_id = job["id"], done["images"][0]["id"]
    w.basic = "Basic " + base64.b64encode(f"{user.username}:{PASSWORD}".encode()).decode()
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as anonymous,
    ):
        w.anonymous = anonymous
        token = await csrf_of(browser, f"{base}/login")
        form = {"username": user.username, "password": PASSWORD, "csrf_token": token, "next": "/"}
        async with browser.post(f"{base}/login", data=form, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
        w.browser = browser
        w.csrf = await csrf_of(browser, f"{base}/")
        yield w


# --- sending one case ----------------------------------------------------------------------------


def _json_body(base: dict[str, Any], name: str, hostile: Hostile) -> bytes:
    marker = f"__hostile_{uuid.uuid4().hex}__"
    data = {**base, name: marker}
    text = json.dumps(data)  # ensure_ascii: a lone surrogate goes out as \\udXXX, as the attack did
    value = hostile.raw_json if hostile.raw_json is not None else json.dumps(hostile.value)
    return text.replace(f'"{marker}"', value).encode()


def _urlencoded(pairs: list[tuple[str, str]]) -> bytes:
    return "&".join(f"{quote_from_bytes(utf8(k))}={quote_from_bytes(utf8(v))}" for k, v in pairs).encode()


def _multipart(pairs: list[tuple[str, str]], files: tuple[str, ...]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in pairs:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + utf8(value)
            + b"\r\n"
        )
    for name in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="i.png"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + png_bytes(64, 64)
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def send(http: aiohttp.ClientSession, world: World, case: Case) -> tuple[int, str, bytes]:
    e, name, hostile = case.endpoint, case.field, case.hostile
    url = world.base + world.fill(e.path)
    headers: dict[str, str] = {"Accept": "application/json"} if e.face != "web" else {}
    session = http
    base = {k: world.fill(v) if isinstance(v, str) else v for k, v in e.base.items()}
    if e.who == "bearer":
        headers["Authorization"] = f"Bearer {world.user.token}"
    elif e.who == "basic":
        headers["Authorization"] = world.basic
    elif e.who == "cookie":
        assert world.browser is not None
        session = world.browser
        headers["X-CSRF-Token"] = world.csrf
        base.setdefault("csrf_token", world.csrf)
    elif e.who == "presession":  # signed out, with the login form's own token
        assert world.anonymous is not None
        session = world.anonymous
        base.setdefault("csrf_token", await csrf_of(world.anonymous, f"{world.base}/login"))
    data: bytes | None = None
    text_value = hostile.value if isinstance(hostile.value, str) else str(hostile.value)
    if e.body == "json":
        data = _json_body(base, name, hostile)
        headers["Content-Type"] = "application/json"
    elif e.body == "form":
        pairs = [(k, str(v)) for k, v in base.items() if k != name] + [(name, text_value)]
        data = _urlencoded(pairs)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif e.body == "multipart":
        pairs = [(k, str(v)) for k, v in base.items() if k != name] + [(name, text_value)]
        data, headers["Content-Type"] = _multipart(pairs, e.files)
    else:
        pairs = [(k, str(v)) for k, v in base.items() if k != name] + [(name, text_value)]
        url = f"{url}?{_urlencoded(pairs).decode()}"
    async with session.request(
        e.method, yarl.URL(url, encoded=True), data=data, headers=headers, allow_redirects=False
    ) as resp:
        if resp.content_type == "text/event-stream":
            return resp.status, resp.content_type, b""  # an accepted event stream: not read to its end
        return resp.status, resp.content_type, await resp.read()


def error_code(face: str, body: Any) -> tuple[str | None, str | None, str | None]:
    """(code, message, field) from any face's error shape."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        return err.get("code"), err.get("message"), err.get("field") or err.get("param")
    if isinstance(body, dict) and isinstance(body.get("detail"), list) and body["detail"]:
        item = body["detail"][0]
        loc = item.get("loc") or [None]
        return item.get("type"), item.get("msg"), loc[-1]
    if isinstance(body, dict) and isinstance(body.get("detail"), str):  # A1111's HTTPException
        return str(body.get("error")), body["detail"], None
    return None, None, None


def strict(case: Case) -> bool:
    """NUL anywhere, and a lone surrogate in JSON (`\\ud800`) or a query string (its bytes), must be
    400 invalid_field. In a form body those bytes are not UTF-8, which the form parser reads as U+FFFD
    (urlencoded) or refuses whole (multipart): any 4xx or an accepted U+FFFD is fine there."""
    if not case.hostile.strict:
        return False
    value = case.hostile.value
    return "\x00" in value or case.endpoint.body in ("json", "query")


def judge(case: Case, status: int, content_type: str, raw: bytes) -> list[str]:
    """What is wrong with the answer to `case` (empty: nothing)."""
    problems: list[str] = []
    text = raw.decode("utf-8", "replace")
    if status >= 500:
        problems.append(f"{status}: {text[:300]}")
    leaked = [leak for leak in LEAKS if leak in text]
    if leaked:
        problems.append(f"shows {leaked}: {text[:300]}")
    if status < 400 or status >= 500:
        if strict(case) and status < 400:
            problems.append(f"accepted: {status} {text[:200]}")
        return problems
    if case.endpoint.face == "web" and content_type == "text/html":
        if strict(case) and status != 400:
            problems.append(f"web page answered {status}, not 400")
        return problems
    try:
        body = json.loads(raw)
    except ValueError:
        return [*problems, f"{status} without a JSON error: {text[:200]}"]
    code, message, field_name = error_code(case.endpoint.face, body)
    if not code or not message:
        problems.append(f"{status} error without code and message: {text[:300]}")
    if strict(case) and status != 401:  # a credential check may come first
        expected = 422 if case.endpoint.face == "a1111" and case.endpoint.body == "json" else 400
        if (status, code) != (expected, "invalid_field"):
            problems.append(
                f"NUL/surrogate answered {status} {code}, not {expected} invalid_field: {text[:300]}"
            )
        elif field_name is None:
            problems.append(f"invalid_field does not name the field: {text[:300]}")
    return problems


# --- the corpus ----------------------------------------------------------------------------------


async def test_hostile_corpus_has_no_5xx(world: World, http: aiohttp.ClientSession) -> None:
    failures: dict[str, list[str]] = {}
    statuses: dict[int, int] = {}
    for case in CASES:
        try:
            status, content_type, raw = await send(http, world, case)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures[case.id] = [f"connection: {exc!r}"]
            continue
        statuses[status] = statuses.get(status, 0) + 1
        problems = judge(case, status, content_type, raw)
        if problems:
            failures[case.id] = problems
    print(f"\n{len(CASES)} hostile cases, answers by status: {dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())
    assert not any(s >= 500 for s in statuses)
    assert statuses.get(400, 0) > 0


async def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(60):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


HEADER_VALUES = (
    (b"nul", b"a\x00b"),
    (b"control", b"a\x01b"),
    (b"newline", b"a\rb"),
    (b"not_utf8", b"a\xff\xfeb"),
    (b"surrogate_bytes", b"a\xed\xa0\x80b"),
    (b"digits", HUGE.encode()),
)


async def test_hostile_headers_have_no_5xx(world: World) -> None:
    failures: list[str] = []
    for path in HEADER_PATHS:
        auth = world.basic if path.startswith("/sdapi") else f"Bearer {world.user.token}"
        for header in HEADERS:
            for label, value in HEADER_VALUES:
                request = (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
                    + f"Authorization: {auth}\r\n".encode()
                    + header.encode()
                    + b": "
                    + value
                    + b"\r\n\r\n"
                )
                status, body = await raw_request(world.port, request)
                text = body.decode("utf-8", "replace")
                if status >= 500 or any(leak in text for leak in LEAKS):
                    failures.append(f"{path} {header} {label.decode()}: {status} {text[:200]}")
                if label in (b"not_utf8", b"surrogate_bytes") and status != 400:
                    failures.append(f"{path} {header} {label.decode()}: {status}, not 400: {text[:200]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer ess_\xc3\xa9t\xc3\xa9",
        b"Bearer \xff\xfe",
        b"Basic " + base64.b64encode(b"owner\x00:pw"),
        b"Basic " + base64.b64encode(b"\x00:pw"),
        b"Basic " + base64.b64encode(b"own\xffer:pw"),
        b"Basic " + base64.b64encode("\u00e9t\u00e9\x00:pw".encode()),
        b"Basic " + base64.b64encode("\u00e9t\u00e9:pw".encode()),  # no such user: auth's own 401
    ],
)
async def test_credentials_that_cannot_be_real_are_401_on_every_face(
    world: World, authorization: bytes
) -> None:
    for method, path in (
        ("GET", "/api/v1/jobs"),
        ("POST", "/api/v1/generations"),
        ("GET", "/v1/models"),
        ("POST", "/v1/images/generations"),
        ("GET", "/sdapi/v1/progress"),
        ("POST", "/sdapi/v1/txt2img"),
    ):
        body = b'{"prompt": "a cat"}'
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Authorization: "
            + authorization
            + b"\r\n\r\n"
            + body
        )
        status, raw = await raw_request(world.port, request)
        assert status == 401, (path, status, raw[:300])
        code, message, _ = error_code("", json.loads(raw))
        assert code and message, raw


# --- finding 6: the sign-in `next` over the real stack -------------------------------------------


@pytest.mark.parametrize(
    "next_path", ["/\t/evil.example", "/\n/evil.example", "/x\r\nX-Evil: 1", "//evil.example"]
)
async def test_web_login_with_a_hostile_next_stays_on_site(world: World, next_path: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        token = await csrf_of(browser, f"{world.base}/login")
        form = {"username": world.user.username, "password": PASSWORD, "csrf_token": token, "next": next_path}
        async with browser.post(f"{world.base}/login", data=form, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
            assert resp.headers["Location"] == "/"
            assert "X-Evil" not in resp.headers
        async with browser.get(f"{world.base}/gallery", allow_redirects=False) as resp:
            assert resp.status == 200  # the session the login made works: the connection was not dropped


# --- finding 7: absolute URLs do not follow the Host header ---------------------------------------


async def test_share_links_and_image_urls_ignore_the_host_header(
    world: World, http: aiohttp.ClientSession
) -> None:
    hostile = {
        **world.user.bearer,
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
    }
    async with http.post(f"{world.base}/api/v1/images/{world.image_id}/share", headers=hostile) as resp:
        assert resp.status == 200, await body_of(resp)
        link = await resp.json()
    async with http.get(f"{world.base}/api/v1/images/{world.image_id}", headers=hostile) as resp:
        image = await resp.json()
    for url in (link["url"], image["url"]):
        assert url.startswith(world.base + "/"), url
        assert "evil.example" not in url
    async with http.delete(
        f"{world.base}/api/v1/images/{world.image_id}/share", headers=world.user.bearer
    ) as resp:
        assert resp.status in (200, 204)


# --- /metrics is not on the public port -----------------------------------------------------------


async def test_metrics_only_on_the_metrics_port(
    world: World, stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{world.base}/metrics") as resp:
        assert resp.status == 404
    async with http.get(stack.metrics_url("gateway")) as resp:
        assert resp.status == 200
        assert "easel_http_requests_total" in await resp.text()
