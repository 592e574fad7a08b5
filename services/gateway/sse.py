"""Server-sent events: a thin writer over a streamed response."""

from __future__ import annotations

import contextlib
import functools
import json
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from aiohttp import web

from services.common.errors import EaselError

from .principal import principal_of
from .urls import settings_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EventStream:
    """Writes `text/event-stream` frames. Prepared lazily so that an error found before the first
    event can still answer with a normal JSON error."""

    def __init__(self, request: web.Request, retry_ms: int = 2000) -> None:
        self.request = request
        self.retry_ms = retry_ms
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx: pass each event on at once
            },
        )

    @property
    def prepared(self) -> bool:
        return self.response.prepared

    async def _ensure_prepared(self) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)
            await self.response.write(f"retry: {self.retry_ms}\n\n".encode())

    async def send(self, data: Any, event: str | None = None, event_id: str | None = None) -> None:
        await self._ensure_prepared()
        lines = []
        if event_id is not None:
            lines.append(f"id: {event_id}")
        if event:
            lines.append(f"event: {event}")
        payload = json.dumps(data, separators=(",", ":"))
        lines.extend(f"data: {part}" for part in payload.splitlines() or [""])
        await self.response.write(("\n".join(lines) + "\n\n").encode())

    async def comment(self, text: str = "keep-alive") -> None:
        await self._ensure_prepared()
        await self.response.write(f": {text}\n\n".encode())

    async def close(self) -> web.StreamResponse:
        if self.response.prepared:
            await self.response.write_eof()
        return self.response


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


# One StreamSlots per application (kept beside it: an app's state is frozen once it serves).
_SLOTS: weakref.WeakKeyDictionary[web.Application, StreamSlots] = weakref.WeakKeyDictionary()


def slots_of(app: web.Application) -> StreamSlots:
    slots = _SLOTS.get(app)
    if slots is None:
        slots = _SLOTS[app] = StreamSlots()
    return slots


def limited_stream(handler: Handler) -> Handler:
    """Marks an event-stream handler: it runs only while its caller holds one of their stream slots
    (EASEL_SSE_MAX_STREAMS_PER_USER). Anonymous callers are limited by the request rate limits."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        if principal is None:
            return await handler(request)
        with slots_of(request.app).hold(principal.user_id, settings_of(request).sse_max_streams_per_user):
            return await handler(request)

    return wrapped
