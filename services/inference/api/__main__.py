"""`python -m services.inference.api`: the job API (settings in services/inference/api/settings.py)."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack
from pathlib import Path

from easel.gallery.v1 import gallery_pb2_grpc
from easel.inference.v1 import inference_pb2_grpc
from services.common.config import load_settings
from services.common.db import database
from services.common.grpc_client import channel
from services.common.grpc_server import GrpcServer
from services.common.messaging import connect, ensure_streams
from services.common.process import run, setup_process
from services.inference.messages import cancel_bucket

from .dispatch import Dispatcher
from .events import AbandonedJobs, EventApplier
from .queue import QueueMetrics
from .service import InferenceService
from .settings import InferenceApiSettings
from .store import JobStore
from .validation import ModelCatalog

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


async def main() -> None:
    settings = load_settings(InferenceApiSettings)
    setup_process("inference-api", settings)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            database(
                settings.database_url, "inference", MIGRATIONS, settings.db_pool_min, settings.db_pool_max
            )
        )
        nc = await connect(settings.nats_url, "inference-api")
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        await ensure_streams(js)
        cancelled = await cancel_bucket(js)
        gallery_channel = channel(settings.gallery_target, "gallery", settings.rpc_timeout_s)
        stack.push_async_callback(gallery_channel.close)
        store = JobStore(
            pool,
            settings.jobs_in_flight_limit,
            settings.jobs_per_day_limit,
            settings.jobs_in_flight_cost_limit,
        )
        dispatcher = Dispatcher(pool, js, settings.dispatch_window, settings.dispatch_interval_s)
        catalog = ModelCatalog(settings.models_dir, settings.default_model, settings.models_refresh_s)
        await catalog.models()
        service = InferenceService(
            settings,
            store,
            catalog,
            nc,
            js,
            cancelled,
            gallery_pb2_grpc.GalleryStub(gallery_channel),
            dispatcher,
        )
        applier = EventApplier(js, store, dispatcher.kick)
        applying = asyncio.create_task(applier.run(await applier.bind()))
        abandoned = AbandonedJobs(nc, js)
        await abandoned.start()
        queue_metrics = asyncio.create_task(
            QueueMetrics(js, catalog, settings.queue_metrics_interval_s, pool).run(), name="queue-metrics"
        )
        dispatching = asyncio.create_task(dispatcher.run(), name="dispatch-tick")

        server = GrpcServer("inference-api", settings)
        server.add(
            inference_pb2_grpc.add_InferenceServicer_to_server, service, "easel.inference.v1.Inference"
        )
        server.watch_dependency("database", lambda: pool.fetchval("SELECT 1"))
        server.watch_dependency("nats", lambda: nc.flush(timeout=1))
        await server.start()

        async def stopping() -> None:
            service.stop_watches()
            applier.stop()
            await abandoned.stop()

        try:
            await server.serve_until_stopped(stopping)
        finally:
            applier.stop()
            dispatching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatching
            await dispatcher.close()
            queue_metrics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await queue_metrics
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(applying, timeout=5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), timeout=10)


if __name__ == "__main__":
    run(main())
