"""Middlewares, outermost first: request ids, metrics and tracing, errors, the principal, CSRF.

Plus `on_response_prepare` hooks that put the security headers and the request id on every response
(streamed ones included) and clear a dead session cookie.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from urllib.parse import quote

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from services.common.errors import EaselError
from services.common.logs import request_id_var
from services.common.metrics import LATENCY_BUCKETS
from services.common.telemetry import extract

from . import csrf, ratelimit
from .principal import (
    CLEAR_SESSION_COOKIE,
    PRINCIPAL,
    SESSION_COOKIE,
    Principal,
    auth_need,
    check_scope,
    require_principal,
    scope_of,
)
from .render import render
from .state import STATE
from .textcheck import text_middleware
from .urls import cookie_secure, is_secure, wants_json

log = logging.getLogger(__name__)
tracer = trace.get_tracer("easel.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_REQUESTS = Counter(
    "easel_http_requests",
    "HTTP requests answered by the gateway, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "easel_http_request_latency_seconds",
    "Time to answer an HTTP request (for event streams: until the stream ends), by method and route.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)

REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/static"})
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def route_template(request: web.Request) -> str:
    """The matched route's template (never the raw path: ids would blow up the label set)."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return "unmatched"
    resource = match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


# --- request ids -------------------------------------------------------------------------------


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id", "")
    rid = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    token = request_id_var.set(rid)
    try:
        return await handler(request)
    finally:
        request_id_var.reset(token)


# --- metrics and tracing -----------------------------------------------------------------------


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_template(request)
    method = request.method if request.method in _KNOWN_METHODS else "OTHER"
    start = time.perf_counter()
    status = 500
    with tracer.start_as_current_span(
        f"{method} {route}", context=extract(request.headers), kind=SpanKind.SERVER
    ) as span:
        span.set_attribute("http.request.method", method)
        span.set_attribute("http.route", route)
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            elapsed = time.perf_counter() - start
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(elapsed)
            if route not in _QUIET_ROUTES:
                log.info(
                    "request",
                    extra={
                        "method": method,
                        "route": route,
                        "path": request.path,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 1),
                    },
                )


# --- errors ------------------------------------------------------------------------------------

_HTTP_CODES = {
    400: ("bad_request", "The request could not be read; check its syntax."),
    401: ("unauthenticated", "Log in, or send an API key as 'Authorization: Bearer <key>'."),
    403: ("forbidden", "You are not allowed to do this."),
    404: ("not_found", "There is nothing at this address; check the path against /api/v1/openapi.json."),
    405: ("method_not_allowed", "This address does not accept that method; see /api/v1/openapi.json."),
    413: ("body_too_large", "The request body is too large; send a smaller one."),
    415: ("unsupported_media_type", "Send the body as JSON with 'Content-Type: application/json'."),
}


def json_error(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return web.json_response({"error": body}, status=status, headers=headers)


def easel_error_response(request: web.Request, exc: EaselError) -> web.Response:
    status = exc.http_status
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    if status == 401 and not wants_json(request):
        location = f"/login?next={quote(request.path_qs, safe='')}"
        return web.Response(status=303, headers={"Location": location})
    if status >= 500:
        log.warning("backend error", extra={"code": exc.code, "status": status})
    if wants_json(request):
        return json_error(status, exc.code, exc.message, exc.field, headers)
    resp = render(request, "error.html", status=status, status_code=status, message=exc.message)
    if headers:
        resp.headers.update(headers)
    return resp


def http_exception_response(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
    headers = {}
    if exc.status == 405 and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    if wants_json(request):
        return json_error(exc.status, code, message, headers=headers)
    resp = render(request, "error.html", status=exc.status, status_code=exc.status, message=message)
    resp.headers.update(headers)
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EaselError as exc:
        return easel_error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_exception_response(request, exc)
    except HttpProcessingError:
        # A body that cannot be parsed (broken multipart, bad part headers), wherever it is first read:
        # the CSRF check, a form page or an API handler. The client's fault, never a 500.
        message = "The request body could not be read; send well-formed JSON or multipart form data."
        if wants_json(request):
            return json_error(400, "malformed_body", message)
        return render(request, "error.html", status=400, status_code=400, message=message)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error", extra={"path": request.path, "method": request.method})
        message = "Something went wrong on our side; try again, and report it if it keeps happening."
        if wants_json(request):
            return json_error(500, "internal", message)
        return render(request, "error.html", status=500, status_code=500, message=message)


# --- the principal -----------------------------------------------------------------------------


def credential(request: web.Request) -> tuple[str | None, bool]:
    """The token the caller sent and whether it came from the session cookie."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise EaselError(
                "bad_authorization",
                "Send the credential as 'Authorization: Bearer <session token or API key>'.",
                grpc.StatusCode.UNAUTHENTICATED,
            )
        return token.strip(), False
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, True) if cookie else (None, False)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match_info = request.match_info
    if match_info.http_exception is not None or isinstance(match_info.route.resource, web.StaticResource):
        return await handler(request)
    need = auth_need(match_info.handler)
    if need == "none":
        return await handler(request)
    token, via_cookie = credential(request)
    if token:
        try:
            found = await request.app[STATE].backend.authenticate(token)
        except EaselError as exc:
            if exc.status != grpc.StatusCode.UNAUTHENTICATED:
                raise
            if not via_cookie:
                raise
            request[CLEAR_SESSION_COOKIE] = True  # a dead cookie: browse on anonymously
        else:
            request[PRINCIPAL] = Principal(
                user_id=found.user_id,
                username=found.username,
                role=found.role,
                credential_kind=found.credential_kind,
                credential_id=found.credential_id,
                token=token,
                via_cookie=via_cookie,
                scopes=tuple(found.scopes),
            )
    if need == "required":
        require_principal(request)
    principal = request.get(PRINCIPAL)
    if principal is not None:
        check_scope(principal, scope_of(match_info.handler))
    return await handler(request)


@web.middleware
async def ratelimit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ratelimit.check(request)  # after auth: a signed-in caller is limited per user, others per address
    return await handler(request)


# --- CSRF --------------------------------------------------------------------------------------


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    principal = request.get(PRINCIPAL)
    if request.method in csrf.UNSAFE_METHODS and principal is not None and principal.via_cookie:
        expected = csrf.token_for_session(principal.token)
        if not csrf.matches(expected, await csrf.submitted_token(request)):
            raise csrf.refused()
    return await handler(request)


# --- response headers --------------------------------------------------------------------------


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if is_secure(request):
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")  # answers are per caller
    rid = request.get(REQUEST_ID)
    if rid:
        response.headers["X-Request-Id"] = rid
    if request.get(CLEAR_SESSION_COOKIE):
        # Cookies set through response.cookies are already serialised when this hook runs.
        prefix = f"{SESSION_COOKIE}="
        if not any(v.startswith(prefix) for v in response.headers.getall("Set-Cookie", [])):
            jar: SimpleCookie = SimpleCookie()
            jar[SESSION_COOKIE] = ""
            morsel = jar[SESSION_COOKIE]
            morsel["path"] = "/"
            morsel["max-age"] = 0
            morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
            morsel["samesite"] = "Lax"
            morsel["httponly"] = True
            if cookie_secure(request):
                morsel["secure"] = True
            response.headers.add("Set-Cookie", morsel.OutputString())


# --- graceful stop -----------------------------------------------------------------------------


@web.middleware
async def in_flight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    in_flight = request.app[STATE].in_flight
    in_flight.enter()
    try:
        return await handler(request)
    finally:
        in_flight.leave()


async def drain(runner: web.AppRunner, grace: float) -> None:
    """The first half of a graceful stop: no new connections, event streams told to end (their
    clients reconnect elsewhere with Last-Event-ID), and at most `grace` seconds for the requests in
    flight to finish. `runner.cleanup()` then closes what is left."""
    for site in list(runner.sites):
        await site.stop()
    state = runner.app[STATE]
    state.shutting_down.set()
    try:
        await asyncio.wait_for(state.in_flight.wait_idle(), grace)
    except TimeoutError:
        log.warning("grace period over with %d requests still in flight", state.in_flight.count)


MIDDLEWARES = [
    in_flight_middleware,
    request_id_middleware,
    metrics_middleware,
    error_middleware,
    text_middleware,
    auth_middleware,
    ratelimit_middleware,
    csrf_middleware,
]
