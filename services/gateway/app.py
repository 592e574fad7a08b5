"""The app factory: the gateway's state, middlewares, and every route."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from . import api, web_account
from . import web as web_ui
from .api_jobs import SHUTTING_DOWN
from .backend import Backend
from .clients import CLIENTS, open_clients
from .compat import a1111 as compat_a1111
from .compat import openai as compat_openai
from .middleware import MIDDLEWARES, on_response_prepare
from .ratelimit import TokenBuckets
from .render import STATIC_DIR, make_env
from .settings import GatewaySettings
from .state import STATE, GatewayState
from .urls import SETTINGS


async def _backend(app: web.Application) -> AsyncIterator[None]:
    """The gRPC channels open with the app and close with it."""
    clients = open_clients(app[STATE].settings)
    app[STATE].backend = Backend(clients)
    app[CLIENTS] = clients  # legacy key, for what is not yet on the backend (compat_*, web_account)
    yield
    await clients.close()


async def _on_shutdown(app: web.Application) -> None:
    # Open event streams end now, so stopping does not wait for their jobs.
    app[STATE].shutting_down.set()


def create_app(settings: GatewaySettings) -> web.Application:
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_body_bytes)
    state = GatewayState(
        settings=settings,
        pages=make_env(),
        user_buckets=TokenBuckets(settings.rate_limit_user_per_s, settings.rate_limit_user_burst),
        client_buckets=TokenBuckets(settings.rate_limit_client_per_s, settings.rate_limit_client_burst),
    )
    app[STATE] = state
    # Legacy keys onto the same objects, for modules other changes are rewriting (compat_* read all
    # three, urls.settings_of reads SETTINGS): to be dropped once they read app[STATE].
    app[SETTINGS] = settings
    app[SHUTTING_DOWN] = state.shutting_down
    app.cleanup_ctx.append(_backend)
    app.on_shutdown.append(_on_shutdown)
    app.on_response_prepare.append(on_response_prepare)
    app.add_routes(api.REST.routes())
    app.add_routes(compat_openai.routes)
    app.add_routes(compat_a1111.routes)
    app.add_routes(web_ui.routes)
    app.add_routes(web_account.routes)
    app.router.add_static("/static", STATIC_DIR, name="static", append_version=True)
    return app
