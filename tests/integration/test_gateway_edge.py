"""The gateway's edge, app-level (small in-process fake backends; the hostile corpus over the whole real
stack is tests/reliability/test_hostile.py): text checked once for every face, credentials that cannot
be real, huge numbers, the sign-in `next`, absolute URLs that never come from the Host header, event
streams bounded per user, half-sent requests cut off, /metrics off the public port."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from easel.auth.v1 import auth_pb2_grpc
from easel.inference.v1 import inference_pb2_grpc
from services.gateway.app import create_app
from services.gateway.server import make_runner
from services.gateway.settings import GatewaySettings
from services.gateway.urls import base_url, safe_next
from services.local.infra import free_port
from tests.integration.test_gateway_app import SESSION, FakeAuth, FakeInference, settings_for

pytestmark = pytest.mark.timeout(60)

Client = TestClient[web.Request, web.Application]
BEARER = {"Authorization": f"Bearer {SESSION}"}
JSON = {"Content-Type": "application/json"}
MAX_STREAMS = 3


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw() -> AsyncIterator[Client]:
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServicer_to_server(FakeAuth(), server)  # type: ignore[abstract]
    inference_pb2_grpc.add_InferenceServicer_to_server(FakeInference(), server)  # type: ignore[abstract]
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        settings = settings_for(f"127.0.0.1:{port}").model_copy(
            update={"sse_keepalive_s": 0.2, "sse_max_streams_per_user": MAX_STREAMS}
        )
        async with TestClient(TestServer(create_app(settings))) as client:
            yield client
    finally:
        await server.stop(0)


async def error_of(resp: Any) -> dict[str, Any]:
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    error: dict[str, Any] = body["error"]
    assert error["code"] and error["message"], body
    return error


# --- finding 3: text checked once, at the edge --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        (
            "/api/v1/auth/register",
            b'{"username": "a\\u0000b", "email": "a@b.c", "password": "x"}',
            "username",
        ),
        ("/api/v1/auth/register", b'{"username": "ab", "email": "a\\ud800@b.c", "password": "x"}', "email"),
        ("/api/v1/auth/login", b'{"username": "ada", "password": "pass\\u0000word"}', "password"),
        ("/api/v1/generations", b'{"prompt": "a cat\\u0000"}', "prompt"),
        ("/api/v1/generations", b'{"prompt": "a cat", "tags": ["x", "\\udfff"]}', "tags[1]"),
        ("/api/v1/generations", b'{"prompt": "a cat", "a\\u0000": 1}', "a\ufffd"),
        ("/v1/images/generations", b'{"prompt": "\\ud800 a cat"}', "prompt"),
        ("/sdapi/v1/txt2img", b'{"prompt": "a cat", "negative_prompt": "\\u0000"}', None),
    ],
)
async def test_nul_and_lone_surrogates_in_json_are_400_invalid_field(
    gw: Client, path: str, raw: bytes, field: str | None
) -> None:
    resp = await gw.post(path, data=raw, headers={**JSON, **BEARER})
    assert resp.status in (400, 422), await resp.text()
    body = await resp.json()
    if path.startswith("/sdapi/"):  # FastAPI's validation shape, as AUTOMATIC1111 answers
        assert body["detail"][0]["type"] == "invalid_field"
        assert body["detail"][0]["loc"][-1] == "negative_prompt"
        return
    error = body["error"]
    assert resp.status == 400
    assert (error["code"], error.get("field", error.get("param"))) == ("invalid_field", field)
    assert "NUL" in error["message"] or "surrogate" in error["message"]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/community?cursor=%00", "cursor"),
        ("/api/v1/images?limit=1&q%00=1", "q\ufffd"),
        ("/api/v1/jobs/a%00b", "path"),
        ("/sdapi/v1/progress?skip_current_image=%00", "skip_current_image"),
        ("/v1/models?x=%00", "x"),
        ("/search?q=%00", "q"),
    ],
)
async def test_nul_in_query_or_path_is_400_invalid_field(gw: Client, path: str, field: str) -> None:
    resp = await gw.get(path, headers={**BEARER, "Accept": "application/json"})
    error = await error_of(resp)
    assert resp.status == 400
    assert (error["code"], error["field"]) == ("invalid_field", field)


async def raw(gw: Client, request: bytes) -> tuple[int, dict[str, Any]]:
    """Sends bytes as they are (clients encode header values as UTF-8); the status and JSON error."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body)["error"]


async def test_broken_utf8_in_a_header_or_cookie_is_400(gw: Client) -> None:
    # aiohttp keeps bytes that are not UTF-8 as surrogate escapes; they must never reach a gRPC call.
    for name, value in (
        (b"Idempotency-Key", b"k\xff"),
        (b"Cookie", b"easel_session=" + SESSION.encode() + b"\xfe"),
    ):
        request = (
            b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: application/json\r\n"
            + b"Authorization: Bearer "
            + SESSION.encode()
            + b"\r\n"
            + name
            + b": "
            + value
            + b"\r\n\r\n"
        )
        status, error = await raw(gw, request)
        assert (status, error["code"], error["field"]) == (400, "invalid_field", name.decode())
    status, error = await raw(
        gw,
        b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe\r\n\r\n",
    )
    assert (status, error["code"]) == (401, "bad_authorization")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer ess_\u00e9t\u00e9",
        "Basic " + base64.b64encode(b"ada\x00:right").decode(),
        "Basic " + base64.b64encode(b"ad\xffa:right").decode(),
        "Basic " + base64.b64encode("\u00e9\u0000:x".encode()).decode(),
    ],
)
@pytest.mark.parametrize("path", ["/api/v1/jobs", "/v1/models", "/sdapi/v1/progress", "/gallery"])
async def test_credentials_that_cannot_be_real_are_401(gw: Client, authorization: str, path: str) -> None:
    resp = await gw.get(path, headers={"Authorization": authorization, "Accept": "application/json"})
    error = await error_of(resp)
    assert resp.status == 401, error
    assert error["code"] == "bad_authorization"


@pytest.mark.parametrize("path", ["/api/v1/generations", "/v1/images/generations", "/sdapi/v1/txt2img"])
async def test_huge_numbers_are_400_without_python_internals(gw: Client, path: str) -> None:
    raw = b'{"prompt": "a cat", "seed": ' + b"9" * 5000 + b"}"
    resp = await gw.post(path, data=raw, headers={**JSON, **BEARER})
    text = await resp.text()
    assert resp.status in (400, 422), text
    assert "sys." not in text and "set_int_max_str_digits" not in text and "4300" not in text
    assert "seed" in text


# --- finding 6: the sign-in `next` ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/gallery?x=1", "/gallery?x=1"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
        ("/\r\nSet-Cookie: x=1", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("/a\\b", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/\u2028/evil.example", "/"),
        ("/\u200b/evil.example", "/"),
        ("/search?q=red fox", "/search?q=red%20fox"),
        ("", "/"),
    ],
)
def test_safe_next_keeps_only_same_site_paths(given: str, expected: str) -> None:
    assert safe_next(given) == expected


@pytest.mark.parametrize("next_path", ["/\t/evil.example", "/x\r\n/evil.example", "/\n"])
async def test_login_with_a_hostile_next_lands_home_and_keeps_the_session(gw: Client, next_path: str) -> None:
    gw.session.cookie_jar.clear()  # signed out: a signed-in /login redirects instead of showing the form
    page = await gw.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
    assert token is not None
    form = {"username": "ada", "password": "right", "csrf_token": token.group(1), "next": next_path}
    resp = await gw.post("/login", data=form, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "/"
    assert resp.cookies["easel_session"].value == SESSION


# --- finding 7: absolute URLs never come from the Host header ------------------------------------------


def test_absolute_urls_come_from_settings_not_the_host_header() -> None:
    def url(settings: GatewaySettings, headers: dict[str, str]) -> str:
        request = make_mocked_request("GET", "/", headers=headers, app=create_app(settings))
        return base_url(request)

    hostile = {"Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    assert url(GatewaySettings(), hostile) == "http://127.0.0.1:8080"
    assert url(GatewaySettings(http_host="0.0.0.0", http_port=9000), hostile) == "http://127.0.0.1:9000"  # nosec B104
    assert url(GatewaySettings(http_host="::1", http_port=9000), hostile) == "http://[::1]:9000"
    assert url(GatewaySettings(public_url="https://art.example.org/"), hostile) == "https://art.example.org"


# --- finding 10: event streams per user, half-sent requests, /metrics ---------------------------------


async def test_event_streams_per_user_are_bounded(gw: Client) -> None:
    async def open_stream() -> Any:
        resp = await gw.get("/api/v1/jobs/slow/events", headers=BEARER)
        assert resp.status == 200, await resp.text()
        assert (await resp.content.readline()).startswith(b"retry:")
        return resp

    streams = [await open_stream() for _ in range(MAX_STREAMS)]
    refused = await gw.get("/api/v1/jobs/slow/events", headers=BEARER)
    error = await error_of(refused)
    assert (refused.status, error["code"]) == (429, "too_many_streams")
    assert refused.headers["Retry-After"]
    streams.pop().close()  # the client goes away: its slot comes back
    async with asyncio.timeout(10):
        while True:
            again = await gw.get("/api/v1/jobs/slow/events", headers=BEARER)
            if again.status == 200:
                break
            again.release()
            await asyncio.sleep(0.1)
    again.close()
    for resp in streams:
        resp.close()


async def test_half_sent_request_headers_time_out() -> None:
    settings = GatewaySettings(
        http_idle_timeout_s=1.0, auth_target="127.0.0.1:1", gallery_target="127.0.0.1:1"
    )
    runner = make_runner(create_app(settings), settings)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        for half in (b"GET /healthz HT", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b""):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(half)
            await writer.drain()
            start = asyncio.get_running_loop().time()
            async with asyncio.timeout(5):  # never closed before the fix (aiohttp's default: an hour)
                data = await reader.read()
            assert data == b""
            assert asyncio.get_running_loop().time() - start < 3
            writer.close()
        # A whole request still gets its answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("depth", [900, 990, 5000])
async def test_deeply_nested_json_with_bad_text_is_400(gw: Client, depth: int) -> None:
    # Parsed up to the parser's own depth limit; the text check must not overflow where it did not.
    raw = b'{"prompt": "a cat", "x": ' + b'{"a":' * depth + b'"\\u0000"' + b"}" * depth + b"}"
    resp = await gw.post("/api/v1/generations", data=raw, headers={**JSON, **BEARER})
    error = await error_of(resp)
    assert resp.status == 400 and error["code"] in ("invalid_field", "invalid_json"), error
    assert len(error.get("field", "")) <= 203
