"""Gateway app-level tests: no real backends. Part one runs with every backend down; part two runs
against small in-process fake gRPC services, to check the gateway's own logic (principal, CSRF,
scopes, server-sent events, cookies) without the rest of the stack."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import prometheus_client
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from easel.auth.v1 import auth_pb2, auth_pb2_grpc
from easel.inference.v1 import inference_pb2, inference_pb2_grpc
from services.gateway import csrf, openapi
from services.gateway.app import create_app
from services.gateway.ratelimit import TokenBuckets
from services.gateway.settings import GatewaySettings
from services.gateway.state import STATE
from services.local.infra import free_port

pytestmark = pytest.mark.timeout(60)

Client = TestClient[web.Request, web.Application]
SECURITY_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options", "Referrer-Policy")


def settings_for(target: str) -> GatewaySettings:
    return GatewaySettings(
        auth_target=target,
        gallery_target=target,
        inference_target=target,
        ready_timeout_s=1.0,
        rpc_timeout_s=3.0,
        sse_keepalive_s=5.0,
    )


# --- part one: every backend down ---------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def down() -> AsyncIterator[Client]:
    app = create_app(settings_for(f"127.0.0.1:{free_port()}"))  # nothing listens there
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_healthz_answers_with_security_headers(down: Client) -> None:
    resp = await down.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    for name in SECURITY_HEADERS:
        assert name in resp.headers, name
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Request-Id"]


async def test_request_id_is_echoed(down: Client) -> None:
    resp = await down.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp = await down.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert resp.headers["X-Request-Id"] != "bad id\twith spaces"


async def test_readyz_names_the_backends_that_are_down(down: Client) -> None:
    resp = await down.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "not_ready"
    for name in ("auth", "gallery", "inference"):
        assert name in body["error"]["message"]
        assert body["services"][name] != "SERVING"


async def test_unknown_api_route_is_json_404(down: Client) -> None:
    resp = await down.get("/api/v1/no-such-thing")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await down.delete("/api/v1/models")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_unknown_page_is_html_404(down: Client) -> None:
    resp = await down.get("/no/such/page")
    assert resp.status == 404
    assert resp.content_type == "text/html"
    assert "Content-Security-Policy" in resp.headers


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "field"),
    [
        (b"{not json", "application/json", 400, "invalid_json", None),
        (b"[1, 2]", "application/json", 400, "invalid_body", None),
        (
            b'{"username": 5, "email": "a@b.c", "password": "x"}',
            "application/json",
            400,
            "invalid_field",
            "username",
        ),
        (b'{"email": "a@b.c", "password": "x"}', "application/json", 400, "missing_field", "username"),
        (b"", "application/json", 400, "missing_body", None),
        (b"username=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type", None),
        (b'{"username": "x"}', "text/plain", 415, "unsupported_media_type", None),
    ],
)
async def test_bad_bodies_are_400_with_a_code(
    down: Client,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
    field: str | None,
) -> None:
    resp = await down.post("/api/v1/auth/register", data=body, headers={"Content-Type": content_type})
    assert resp.status == status, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == code
    assert error.get("field") == field
    assert error["message"]


async def test_generation_types_are_checked_before_any_backend(
    down: Client,
) -> None:
    # Unauthenticated first: the credential is checked before the body.
    resp = await down.post("/api/v1/generations", json={"prompt": "x"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthenticated"


async def test_bad_authorization_header(down: Client) -> None:
    resp = await down.get("/api/v1/jobs", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "bad_authorization"


async def test_backend_down_is_503_json(down: Client) -> None:
    resp = await down.post("/api/v1/auth/login", json={"username": "ada", "password": "secret"})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "auth_unavailable"


async def test_pages_redirect_to_login_and_login_has_csrf(down: Client) -> None:
    resp = await down.get("/gallery", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/login?next=%2Fgallery"
    down.session.cookie_jar.clear()
    resp = await down.get("/login")
    assert resp.status == 200
    html = await resp.text()
    assert 'name="password"' in html
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    cookie = resp.cookies[csrf.PRESESSION_COOKIE]
    assert cookie.value == token.group(1)
    assert cookie["httponly"]
    assert "<script>" not in html  # no inline scripts (CSP)


async def test_login_form_without_csrf_token_is_refused(down: Client) -> None:
    resp = await down.post(
        "/login", data={"username": "ada", "password": "x", "csrf_token": "forged"}, allow_redirects=False
    )
    assert resp.status == 403
    assert "expired" in (await resp.text())


async def test_openapi_is_valid_and_covers_every_route(down: Client) -> None:
    resp = await down.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = json.loads(await resp.text())
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served = set()
    for route in down.app.router.routes():
        info = route.resource.canonical if route.resource else ""
        if route.method in ("HEAD", "*") or not info.startswith(("/api/", "/s/")):
            continue
        served.add((info, route.method))
    assert served <= documented, served - documented
    api_documented = {(p, m) for p, m in documented if p.startswith(("/api/", "/s/"))}
    assert api_documented <= served, api_documented - served
    for path in (
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/generations",
        "/api/v1/jobs/{job_id}/events",
        "/api/v1/images/{image_id}/file",
        "/api/v1/community",
        "/api/v1/models",
    ):
        assert path in doc["paths"]
    # Every $ref resolves.
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc))
    assert refs and all(name in doc["components"]["schemas"] for name in refs)
    assert openapi.document() == doc
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), ids


async def test_metrics_use_route_templates_and_are_not_on_the_public_port(down: Client) -> None:
    await down.get("/api/v1/jobs/some-job-id-123")
    resp = await down.get("/metrics")
    assert resp.status == 404  # served on EASEL_METRICS_PORT (loopback by default), not here
    text = prometheus_client.generate_latest().decode()
    assert 'easel_http_requests_total{method="GET",route="/api/v1/jobs/{job_id}",status="401"}' in text
    assert "some-job-id-123" not in text
    assert "easel_http_request_latency_seconds_bucket" in text


async def test_bad_setting_is_named() -> None:
    with pytest.raises(ValueError, match="public_url"):
        GatewaySettings(public_url="example.org")


# --- part two: fake backends --------------------------------------------------------------------

SESSION = "ess_good_session"
READONLY_KEY = "esk_readonly_key"
ALL_SCOPES = ["generate", "images:read", "images:write", "account"]


def _job(status: str, step: int = 0, images: int = 0) -> inference_pb2.Job:
    job = inference_pb2.Job(id="job1", owner_id="u1", kind="txt2img", model="tiny-sd", status=status)
    job.step, job.steps = step, 2
    job.params_json = json.dumps({"prompt": "a cat", "seed": 7})
    for i in range(images):
        job.images.add(id=f"img{i}", index=i)
    return job


async def _abort(context: Any, code: grpc.StatusCode, easel_code: str, message: str) -> None:
    await context.abort(code, message, (("easel-error-code", easel_code),))


class FakeAuth(auth_pb2_grpc.AuthServicer):
    def __init__(self) -> None:
        self.live = {SESSION, READONLY_KEY}

    async def Authenticate(self, request: auth_pb2.AuthenticateRequest, context: Any) -> auth_pb2.Principal:
        if request.token not in self.live:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "invalid_token", "Sign in again.")
        if request.token == READONLY_KEY:
            return auth_pb2.Principal(
                user_id="u1", username="ada", role="user", scopes=["images:read"], credential_kind="api_key"
            )
        return auth_pb2.Principal(
            user_id="u1", username="ada", role="user", scopes=ALL_SCOPES, credential_kind="session"
        )

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        if request.password != "right":
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "invalid_credentials", "Check them.")
        return auth_pb2.LoginResponse(token=SESSION, user=auth_pb2.User(id="u1", username="ada"))

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Any) -> auth_pb2.LogoutResponse:
        return auth_pb2.LogoutResponse()


class FakeInference(inference_pb2_grpc.InferenceServicer):
    async def GetJob(self, request: inference_pb2.GetJobRequest, context: Any) -> inference_pb2.Job:
        return _job("running", 1)

    async def CancelJob(self, request: inference_pb2.CancelJobRequest, context: Any) -> inference_pb2.Job:
        assert request.actor.user_id == "u1"
        return _job("cancelled")

    async def WatchJob(
        self, request: inference_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[inference_pb2.JobEvent]:
        if request.job_id == "slow":  # never ends by itself
            yield inference_pb2.JobEvent(type="queued", job=_job("queued"), seq=1)
            await asyncio.sleep(3600)
        if request.job_id != "job1":
            await _abort(context, grpc.StatusCode.NOT_FOUND, "job_not_found", "No such job.")
        yield inference_pb2.JobEvent(type="queued", job=_job("queued"), seq=1)
        yield inference_pb2.JobEvent(type="running", job=_job("running", 0), seq=2)
        yield inference_pb2.JobEvent(type="progress", job=_job("running", 1), seq=3)
        yield inference_pb2.JobEvent(type="completed", job=_job("completed", 2, images=1), seq=4)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def fakes() -> AsyncIterator[Client]:
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServicer_to_server(FakeAuth(), server)  # type: ignore[abstract]
    inference_pb2_grpc.add_InferenceServicer_to_server(FakeInference(), server)  # type: ignore[abstract]
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        settings = settings_for(f"127.0.0.1:{port}").model_copy(update={"sse_keepalive_s": 0.2})
        async with TestClient(TestServer(create_app(settings))) as client:
            yield client
    finally:
        await server.stop(0)


def _session_cookie(token: str = SESSION) -> dict[str, str]:
    return {"Cookie": f"easel_session={token}"}


async def test_readyz_ok_when_all_serving(fakes: Client) -> None:
    resp = await fakes.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["services"] == {
        "auth": "SERVING",
        "gallery": "SERVING",
        "inference": "SERVING",
    }


async def test_cookie_requests_need_the_csrf_token(fakes: Client) -> None:
    resp = await fakes.post("/api/v1/jobs/job1/cancel", headers=_session_cookie())
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "csrf_failed"
    resp = await fakes.post(
        "/api/v1/jobs/job1/cancel", headers={**_session_cookie(), "X-CSRF-Token": "wrong"}
    )
    assert resp.status == 403
    token = csrf.token_for_session(SESSION)
    resp = await fakes.post("/api/v1/jobs/job1/cancel", headers={**_session_cookie(), "X-CSRF-Token": token})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["job"]["status"] == "cancelled"
    # Bearer requests need no CSRF token: browsers never add that header by themselves.
    resp = await fakes.post("/api/v1/jobs/job1/cancel", headers={"Authorization": f"Bearer {SESSION}"})
    assert resp.status == 202
    # The page carries the token the API wants.
    resp = await fakes.get("/", headers=_session_cookie())
    assert resp.status == 200
    assert f'<meta name="csrf-token" content="{token}">' in await resp.text()


@pytest.mark.parametrize(
    "body",
    [
        b'--xyz\r\nContent-Disposition: form-data; name="csrf_token"\r\nBroken header\r\n\r\n'
        b"v\r\n--xyz--\r\n",
        b"--xyz\r\nno end of headers",
        b"",
    ],
)
async def test_malformed_form_with_a_cookie_is_a_client_error(fakes: Client, body: bytes) -> None:
    """The CSRF check reads the form first; a body it cannot parse is refused, never a 500."""
    resp = await fakes.post(
        "/api/v1/jobs/job1/cancel",
        data=body,
        headers={**_session_cookie(), "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert 400 <= resp.status < 500, await resp.text()
    assert (await resp.json())["error"]["code"] in ("malformed_body", "csrf_failed")


async def test_scopes_are_enforced(fakes: Client) -> None:
    resp = await fakes.get("/api/v1/jobs/job1", headers={"Authorization": f"Bearer {READONLY_KEY}"})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "insufficient_scope"
    resp = await fakes.get("/api/v1/jobs/job1", headers={"Authorization": f"Bearer {SESSION}"})
    assert resp.status == 200
    job = await resp.json()
    assert job["progress"] == {"step": 1, "steps": 2} and job["status"] == "running"


async def test_dead_bearer_is_401_and_dead_cookie_is_dropped(
    fakes: Client,
) -> None:
    resp = await fakes.get("/api/v1/jobs/job1", headers={"Authorization": "Bearer ess_dead"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_token"
    resp = await fakes.get("/login", headers=_session_cookie("ess_dead"))
    assert resp.status == 200
    assert resp.cookies["easel_session"].value == ""  # cleared


def _events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "data" in fields:
            events.append(fields)
    return events


async def test_job_events_stream_and_resume(fakes: Client) -> None:
    auth = {"Authorization": f"Bearer {SESSION}"}
    resp = await fakes.get("/api/v1/jobs/job1/events", headers=auth)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = _events(await resp.text())
    assert [e["id"] for e in events] == ["1", "2", "3", "4"]
    assert [e["event"] for e in events] == ["queued", "running", "progress", "completed"]
    last = json.loads(events[-1]["data"])
    assert last["status"] == "completed" and last["images"][0]["id"] == "img0"
    assert last["images"][0]["url"].endswith("/api/v1/images/img0/file")

    resp = await fakes.get("/api/v1/jobs/job1/events", headers={**auth, "Last-Event-ID": "2"})
    assert [e["id"] for e in _events(await resp.text())] == ["3", "4"]

    resp = await fakes.get("/api/v1/jobs/job1/events", headers={**auth, "Last-Event-ID": "4"})
    assert resp.status == 204  # nothing new and the job is over: EventSource stops reconnecting

    resp = await fakes.get("/api/v1/jobs/other/events", headers=auth)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "job_not_found"


async def test_web_login_sets_a_safe_cookie(fakes: Client) -> None:
    page = await fakes.get("/login?next=/gallery")
    token = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
    assert token is not None
    form = {"username": "ada", "password": "wrong", "csrf_token": token.group(1), "next": "/gallery"}
    resp = await fakes.post("/login", data=form, allow_redirects=False)
    assert resp.status == 401
    assert "Check them." in await resp.text()

    form["password"] = "right"
    resp = await fakes.post(
        "/login", data=form, allow_redirects=False, headers={"X-Forwarded-Proto": "https"}
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/gallery"
    cookie = resp.cookies["easel_session"]
    assert cookie.value == SESSION
    assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Lax"

    form["next"] = "//evil.example.org/"
    resp = await fakes.post("/login", data=form, allow_redirects=False)
    assert resp.headers["Location"] == "/"
    assert not resp.cookies["easel_session"]["secure"]  # plain http without a proxy saying otherwise


async def test_api_login_sets_cookie(fakes: Client) -> None:
    resp = await fakes.post("/api/v1/auth/login", json={"username": "ada", "password": "right"})
    assert resp.status == 200
    body = await resp.json()
    assert body["token"] == SESSION and body["user"]["username"] == "ada"
    assert resp.cookies["easel_session"].value == SESSION
    resp = await fakes.post("/api/v1/auth/login", json={"username": "ada", "password": "nope"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_credentials"


async def test_idle_stream_keeps_alive_and_ends_on_shutdown(fakes: Client) -> None:
    resp = await fakes.get("/api/v1/jobs/slow/events", headers={"Authorization": f"Bearer {SESSION}"})
    assert resp.status == 200
    seen: list[str] = []
    async with asyncio.timeout(10):
        while not any(line.startswith(":") for line in seen):
            seen.append((await resp.content.readline()).decode().strip())
        assert "id: 1" in seen
        fakes.app[STATE].shutting_down.set()  # what on_shutdown does when the gateway stops
        try:
            rest = await resp.content.read()  # the server ends the stream
        finally:
            fakes.app[STATE].shutting_down.clear()
    assert b"event: " not in rest


# --- rate limits --------------------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", now=0.0) == pytest.approx(0.5)  # one token comes every 0.5 s
    assert buckets.take("b", now=0.0) == 0.0  # another caller has a bucket of its own
    assert buckets.take("a", now=0.5) == 0.0


async def test_anonymous_and_signed_in_callers_are_rate_limited_with_retry_after(fakes: Client) -> None:
    settings = fakes.server.app[STATE].settings.model_copy(
        update={
            "rate_limit_client_per_s": 0.1,
            "rate_limit_client_burst": 3,
            "rate_limit_user_per_s": 0.1,
            "rate_limit_user_burst": 2,
        }
    )
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        statuses = [(await client.get("/api/v1/community")).status for _ in range(3)]
        assert 429 not in statuses
        resp = await client.get("/api/v1/community")
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["code"] == "rate_limited"
        # Probes are never limited.
        assert (await client.get("/healthz")).status == 200
        # A signed-in caller has a bucket of its own, per user.
        bearer = {"Authorization": f"Bearer {SESSION}"}
        assert (await client.get("/api/v1/jobs/job1", headers=bearer)).status == 200
        assert (await client.get("/api/v1/jobs/job1", headers=bearer)).status == 200
        resp = await client.get("/api/v1/jobs/job1", headers=bearer)
        assert resp.status == 429 and "Retry-After" in resp.headers
