"""Server-sent events: a thin writer over a streamed response."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

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
