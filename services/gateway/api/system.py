"""Health, readiness and the OpenAPI document itself (metrics are served on their own port)."""

from __future__ import annotations

from aiohttp import web

from .. import models, openapi
from ..registry import REST, Area, Call

SYSTEM = Area(REST, "operations", auth="none")
META = Area(REST, "meta", auth="none")


@SYSTEM.op("GET", "/healthz", "The process is alive", models.Health)
async def healthz(call: Call[None]) -> models.Health:
    """The process is alive and answering."""
    return {"status": "ok"}


NOT_READY = {
    "503": {
        "description": "Some backend is not serving; the message names it.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NotReady"}}},
    }
}


@SYSTEM.op(
    "GET", "/readyz", "Ready to serve: auth, gallery and inference all report SERVING", models.Ready,
    responses=NOT_READY,
)  # fmt: skip
async def readyz(call: Call[None]) -> web.Response:
    """Ready only when auth, gallery and inference all report SERVING on the standard health check."""
    statuses = await call.backend.health(call.state.settings.ready_timeout_s)
    down = [name for name, status in statuses.items() if status != "SERVING"]
    if down:
        verb = "is" if len(down) == 1 else "are"
        message = f"Not ready: {', '.join(down)} {verb} not serving; start or check those services."
        not_ready: models.NotReady = {
            "error": {"code": "not_ready", "message": message},
            "services": statuses,
        }
        return web.json_response(not_ready, status=503)
    ready: models.Ready = {"status": "ready", "services": statuses}
    return web.json_response(ready)


DOCUMENT = {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}}


@META.op("GET", "/api/v1/openapi.json", "This document", responses=DOCUMENT)
async def openapi_json(call: Call[None]) -> web.Response:
    return web.Response(body=openapi.document_bytes(), content_type="application/json")
