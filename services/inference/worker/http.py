"""The worker's only listener on EASEL_METRICS_PORT: /metrics; /healthz (the process answers: the
startup probe); /livez (and its generation is not stalled: the liveness probe, see liveness.py);
/readyz (models loaded, consumers bound, NATS connected: the readiness probe)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.config import SettingsError

log = logging.getLogger(__name__)


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], bool],
        refresh: Callable[[], None],
        live: Callable[[], bool] = lambda: True,
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._refresh = refresh
        self._live = live
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise SettingsError(
                "EASEL_METRICS_PORT", f"cannot listen on {self.host}:{self.port} ({exc}); choose a free port"
            ) from None
        addresses = self._runner.addresses
        bound = int(addresses[0][1]) if addresses else self.port
        log.info("status server listening", extra={"metrics_port": bound})
        return bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            self._refresh()
        except Exception:  # a failing gauge update must not hide the other metrics
            log.exception("refreshing metrics failed")
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _livez(self, request: web.Request) -> web.Response:
        if self._live():
            return web.json_response({"status": "live"})
        return web.json_response({"status": "stalled"}, status=503)

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)
