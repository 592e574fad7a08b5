"""The gateway's state: one object under one `AppKey`, made by `create_app`, no module globals.

Nothing here is durable (the gateway keeps no state of its own): settings, the typed backend (its
channels open and close with the app), the page templates, the request rate buckets, the requests
in flight and the stopping flag.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from aiohttp import web

from services.common.errors import EaselError

if TYPE_CHECKING:
    import jinja2

    from .backend import Backend
    from .ratelimit import TokenBuckets
    from .settings import GatewaySettings


class StreamSlots:
    """Open event streams per user in this process. Each stream holds a gRPC watch and a connection
    for as long as its job runs, so one user opening thousands would starve everyone else; past
    `limit` the next one is a 429 with a stable code (EventSource clients stop on it)."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def count(self, user_id: str) -> int:
        return self._open.get(user_id, 0)

    @contextlib.contextmanager
    def hold(self, user_id: str, limit: int) -> Iterator[None]:
        if self.count(user_id) >= limit:
            raise EaselError(
                "too_many_streams",
                f"You have {limit} event streams open already; close one (or poll /api/v1/jobs/<id>) "
                "and try again.",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                retry_after=5,
            )
        self._open[user_id] = self.count(user_id) + 1
        try:
            yield
        finally:
            left = self.count(user_id) - 1
            if left > 0:
                self._open[user_id] = left
            else:
                self._open.pop(user_id, None)


class InFlight:
    """The requests being handled now. A stopping gateway waits for them before closing connections:
    aiohttp's own shutdown stops reading from every connection at once, so a request whose body was
    still arriving (an upload) would hang until the shutdown timeout and then be cut off."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


@dataclass
class GatewayState:
    settings: GatewaySettings
    pages: jinja2.Environment
    user_buckets: TokenBuckets
    client_buckets: TokenBuckets
    # Set when the gateway starts stopping: open event streams and synchronous waits end.
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: InFlight = field(default_factory=InFlight)
    # Open event streams per user (EASEL_SSE_MAX_STREAMS_PER_USER).
    stream_slots: StreamSlots = field(default_factory=StreamSlots)
    _backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the backend opens with the app; it is not running")
        return self._backend

    @backend.setter
    def backend(self, backend: Backend | None) -> None:
        self._backend = backend


STATE = web.AppKey("gateway_state", GatewayState)


def state_of(request: web.Request) -> GatewayState:
    return request.app[STATE]


__all__ = ["STATE", "GatewayState", "InFlight", "StreamSlots", "state_of"]
