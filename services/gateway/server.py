"""The gateway's listeners: the public HTTP site and, apart from it, the metrics endpoint.

`/metrics` is not served on the public port (it tells outsiders the routes, traffic and error rates);
it listens on EASEL_METRICS_HOST:EASEL_METRICS_PORT (loopback by default) like every other process.
"""

from __future__ import annotations

from aiohttp import web

from .settings import GatewaySettings


def make_runner(app: web.Application, settings: GatewaySettings) -> web.AppRunner:
    """The runner for the public site. `keepalive_timeout` is aiohttp's only clock on a connection
    that has not sent a whole request (it starts when the connection opens and again after each
    answer, and never cuts a request being handled), so it is also the half-sent-headers timeout."""
    return web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_s,
        keepalive_timeout=settings.http_idle_timeout_s,
    )
