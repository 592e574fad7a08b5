"""`python -m services.gallery`: the gallery gRPC service (settings in services/gallery/settings.py)."""

from __future__ import annotations

import asyncio
import contextlib

from easel.gallery.v1 import gallery_pb2_grpc
from services.common.config import load_settings
from services.common.grpc_server import GrpcServer
from services.common.process import run, setup_process

from .app import open_gallery
from .settings import GallerySettings


async def main() -> None:
    settings = load_settings(GallerySettings)
    setup_process("gallery", settings)
    async with open_gallery(settings) as service:
        server = GrpcServer("gallery", settings)
        server.add(gallery_pb2_grpc.add_GalleryServicer_to_server, service, "easel.gallery.v1.Gallery")
        server.watch_dependency("database", lambda: service.pool.fetchval("SELECT 1"))
        await server.start()
        stats = asyncio.create_task(service.run_stats())
        try:
            await server.serve_until_stopped()
        finally:
            stats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stats


if __name__ == "__main__":
    run(main())
