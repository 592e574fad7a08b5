"""Start-up shared by every process: logging, tracing, the metrics endpoint, asyncio.run."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from .config import CommonSettings, SettingsError
from .logs import setup_logging
from .metrics import start_metrics_server
from .telemetry import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)


def setup_process(service: str, settings: CommonSettings) -> int:
    """Logging, tracing and /metrics; returns the metrics port."""
    setup_logging(service, settings.log_level)
    setup_tracing(service)
    try:
        return start_metrics_server(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        raise SettingsError(
            "EASEL_METRICS_PORT", f"cannot listen on {settings.metrics_port} ({exc}); choose a free port"
        ) from None


def run(main: Coroutine[Any, Any, None]) -> None:
    """Runs `main`; a `SettingsError` ends the process with its one line, never a traceback."""
    try:
        asyncio.run(main)
    except SettingsError as exc:
        print(exc.line, file=sys.stderr)
        log.error(exc.line)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
    finally:
        shutdown_tracing()
