"""The app factory: settings, gRPC clients, middlewares, and every route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import prometheus_client
from aiohttp import web

from . import (
    api_auth,
    api_edits,
    api_images,
    api_jobs,
    openapi,
    ratelimit,
    web_account,
)
from . import web as web_ui
from .api_jobs import SHUTTING_DOWN
from .clients import CLIENTS, clients_ctx
from .compat import a1111 as compat_a1111
from .compat import openai as compat_openai
from .middleware import MIDDLEWARES, on_response_prepare
from .principal import no_auth
from .render import ENV, STATIC_DIR, make_env
from .settings import GatewaySettings
from .urls import SETTINGS

routes = web.RouteTableDef()


@routes.get("/healthz")
@no_auth
async def healthz(request: web.Request) -> web.Response:
    """The process is alive and answering."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
@no_auth
async def readyz(request: web.Request) -> web.Response:
    """Ready only when auth, gallery and inference all report SERVING on the standard health check."""
    statuses = await request.app[CLIENTS].health(request.app[SETTINGS].ready_timeout_s)
    down = [name for name, status in statuses.items() if status != "SERVING"]
    if down:
        verb = "is" if len(down) == 1 else "are"
        message = f"Not ready: {', '.join(down)} {verb} not serving; start or check those services."
        return web.json_response(
            {"error": {"code": "not_ready", "message": message}, "services": statuses}, status=503
        )
    return web.json_response({"status": "ready", "services": statuses})


@routes.get("/metrics")
@no_auth
async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(prometheus_client.generate_latest)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = prometheus_client.CONTENT_TYPE_LATEST
    return resp


@routes.get("/api/v1/openapi.json")
@no_auth
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def _shutdown_signal(app: web.Application) -> AsyncIterator[None]:
    app[SHUTTING_DOWN] = asyncio.Event()
    yield


async def _on_shutdown(app: web.Application) -> None:
    # Open event streams end now, so stopping does not wait for their jobs.
    app[SHUTTING_DOWN].set()


def create_app(settings: GatewaySettings) -> web.Application:
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[ENV] = make_env()
    ratelimit.install(app)
    app.cleanup_ctx.append(clients_ctx(settings))
    app.cleanup_ctx.append(_shutdown_signal)
    app.on_shutdown.append(_on_shutdown)
    app.on_response_prepare.append(on_response_prepare)
    app.add_routes(routes)
    app.add_routes(api_auth.routes)
    app.add_routes(api_jobs.routes)
    app.add_routes(api_images.routes)
    app.add_routes(api_edits.routes)
    app.add_routes(compat_openai.routes)
    app.add_routes(compat_a1111.routes)
    app.add_routes(web_ui.routes)
    app.add_routes(web_account.routes)
    app.router.add_static("/static", STATIC_DIR, name="static", append_version=True)
    return app
