"""The server-streaming wrapper keeps OpenTelemetry's context straight when a stream closes early.

A client that goes away leaves the handler's async generator unfinished; Python then closes it from
another task (the event loop's async-generator finaliser, or gRPC's own clean-up). A context attached
in one task and detached in another makes OpenTelemetry log "Failed to detach context" with a
traceback at ERROR: the inference api did so whenever a WatchJob stream closed (issue 18).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.grpc_server import _Interceptor


class _Context:
    """The few ServicerContext methods the wrapper may call."""

    def code(self) -> None:
        return None


async def _handler(request: Any, context: Any) -> AsyncIterator[str]:
    for i in range(100):
        yield str(i)
        await asyncio.sleep(0)


async def test_a_stream_closed_from_another_task_detaches_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    wrapper = _Interceptor("test")._stream(_handler, "/easel.test.v1.Test/Watch", "Watch", {})
    stream = wrapper(object(), _Context())  # type: ignore[arg-type]
    first = await stream.__anext__()
    assert first == "0"

    async def other_task() -> None:
        await stream.__anext__()
        # Closed early, from a task that did not open it: what the finaliser does.
        await stream.aclose()

    with caplog.at_level(logging.ERROR):
        await asyncio.create_task(other_task())
        await asyncio.sleep(0)
    failed = [r for r in caplog.records if "detach" in r.getMessage().lower()]
    assert not failed, [r.getMessage() for r in failed]


async def test_a_stream_that_runs_to_its_end_detaches_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    wrapper = _Interceptor("test")._stream(_handler, "/easel.test.v1.Test/Watch", "Watch", {})
    with caplog.at_level(logging.ERROR):
        items = [item async for item in wrapper(object(), _Context())]  # type: ignore[arg-type]
    assert items == [str(i) for i in range(100)]
    assert not [r for r in caplog.records if "detach" in r.getMessage().lower()]
