"""`python -m services.gateway`: settings, logging and tracing, then serve until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from services.common.config import SettingsError, load_settings
from services.common.process import run, setup_process

from .app import create_app
from .middleware import drain
from .server import make_runner
from .settings import GatewaySettings

log = logging.getLogger("services.gateway")


async def main() -> None:
    settings = load_settings(GatewaySettings)
    setup_process("gateway", settings)  # logging, tracing, and /metrics on its own (loopback) port
    runner = make_runner(create_app(settings), settings)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SettingsError(
            "EASEL_HTTP_PORT", f"cannot listen on {settings.http_host}:{settings.http_port} ({exc})"
        ) from None
    log.info("http listening", extra={"http_host": settings.http_host, "http_port": settings.http_port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing in-flight requests")
    await drain(runner, settings.shutdown_grace_s)
    await runner.cleanup()
    log.info("stopped")


if __name__ == "__main__":
    run(main())
