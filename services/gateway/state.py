"""The gateway's state: one object under one `AppKey`, made by `create_app`, no module globals.

Nothing here is durable (the gateway keeps no state of its own): settings, the typed backend (its
channels open and close with the app), the page templates, the request rate buckets, the requests
in flight and the stopping flag.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import jinja2

    from .backend import Backend
    from .ratelimit import TokenBuckets
    from .settings import GatewaySettings


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


__all__ = ["STATE", "GatewayState", "InFlight", "state_of"]
