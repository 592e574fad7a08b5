"""`python -m services.inference.worker`: a GPU (or CPU) worker (settings in worker/settings.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import tempfile
from pathlib import Path

from easel.gallery.v1 import gallery_pb2_grpc
from services.common.config import SettingsError, load_settings
from services.common.errors import EaselError
from services.common.grpc_client import channel
from services.common.logs import setup_logging
from services.common.messaging import connect, ensure_streams
from services.common.process import run
from services.common.telemetry import setup_tracing
from services.inference.messages import cancel_bucket
from services.inference.models import ModelManifest, ModelsDirError, discover_models

from .claims import claims_bucket
from .http import StatusServer
from .metrics import LOADED_MODELS, MEMORY, READY, STALLED
from .runner import Worker
from .settings import WorkerSettings

log = logging.getLogger("services.inference.worker")


def served_models(settings: WorkerSettings) -> dict[str, ModelManifest]:
    try:
        installed = discover_models(settings.models_dir)
    except ModelsDirError as exc:
        raise SettingsError("EASEL_MODELS_DIR", str(exc)) from None
    wanted = settings.served()
    if not wanted:
        return installed
    missing = [m for m in wanted if m not in installed]
    if missing:
        raise SettingsError(
            "EASEL_WORKER_MODELS",
            f"{', '.join(missing)} not installed in {settings.models_dir}; installed: {', '.join(installed)}",
        )
    return {m: installed[m] for m in wanted}


async def watch_models(worker: Worker, settings: WorkerSettings) -> None:
    """Models installed while the worker runs are served without a restart (and, where the volume is
    writable, `.safetensors` files dropped into `checkpoints/` are imported first, as A1111 does).

    A worker told which models to serve (EASEL_WORKER_MODELS) keeps to them. A model removed from the
    volume stays bound until the restart; the job api stops accepting its jobs at once."""
    from services.inference.singlefile import sync_checkpoints

    refusals: dict[str, float] = {}
    models_dir = settings.models_dir
    while not worker.stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.stopping.wait(), timeout=settings.worker_models_refresh_s)
        if worker.stopping.is_set():
            return
        try:
            if settings.worker_import_checkpoints and os.access(models_dir, os.W_OK):
                await asyncio.to_thread(sync_checkpoints, models_dir, refusals)
            installed = await asyncio.to_thread(discover_models, models_dir)
        except (ModelsDirError, OSError) as exc:
            log.warning("reading the model volume failed: %s", exc)
            continue
        if settings.served():
            continue
        for name, manifest in sorted(installed.items()):
            if name not in worker.models:
                try:
                    await worker.add_model(manifest)
                except Exception:  # a model that cannot be bound now is tried again next round
                    log.exception("serving the new model %s failed", name)


def writable_cache_dir(settings: WorkerSettings) -> Path | None:
    """The compile cache folder, or None (torch's default under /tmp) where it cannot be written:
    a read-only model volume costs a slower restart, not the worker."""
    folder = settings.compile_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        log.warning(
            "compile cache %s is not writable (%s); compiled kernels go to /tmp and a restart compiles "
            "again. Set EASEL_WORKER_COMPILE_CACHE_DIR to a writable folder on the model volume.",
            folder,
            exc.strerror or type(exc).__name__,
        )
        return None
    return folder


async def main() -> None:
    settings = load_settings(WorkerSettings)
    setup_logging("inference-worker", settings.log_level)
    setup_tracing("inference-worker")
    models = served_models(settings)

    # Imported only now: torch is heavy, and a worker without models should say so at once.
    from services.inference.accel import Accel, parse_buckets, parse_sizes
    from services.inference.engine import Engine
    from services.inference.pipelines import resolve_device

    holder: dict[str, Worker] = {}

    def ready() -> bool:
        worker = holder.get("worker")
        return worker is not None and worker.ready and worker.nc.is_connected

    stalled = [False]  # logged once per stall, not at every probe

    def live() -> bool:
        worker = holder.get("worker")
        if worker is None or worker.stall.live():
            stalled[0] = False
            return True
        if not stalled[0]:
            stalled[0] = True
            log.warning(
                "the generation has not advanced for %.1fs (EASEL_WORKER_STALL_S=%s): reporting not live",
                worker.stall.stalled_for(),
                settings.worker_stall_s,
            )
        return False

    def refresh() -> None:
        worker = holder.get("worker")
        if worker is None:
            return
        STALLED.set(worker.stall.stalled_for())
        stats = worker.engine.memory_stats()
        for key, value in stats.items():
            if key == "loaded_models":
                LOADED_MODELS.set(value)
            else:
                MEMORY.labels(key).set(value)

    status = StatusServer(settings.metrics_host, settings.metrics_port, ready, refresh, live)
    await status.start()
    try:
        accel = Accel.resolve(
            resolve_device(settings.worker_device),
            compile=settings.worker_compile,
            channels_last=settings.worker_channels_last,
            fuse_qkv=settings.worker_fuse_qkv,
            compile_vae=settings.worker_compile_vae,
            buckets=parse_buckets(settings.worker_compile_buckets),
            sizes=parse_sizes(settings.worker_compile_sizes),
        )
        if accel.compiled:
            accel = dataclasses.replace(accel, cache_dir=writable_cache_dir(settings))
        engine = Engine(
            models,
            settings.worker_device,
            settings.worker_dtype,
            settings.worker_memory_budget_bytes,
            accel=accel,
        )
        nc = await connect(settings.nats_url, "inference-worker")
        js = nc.jetstream()
        await ensure_streams(js)
        gallery_channel = channel(settings.gallery_target, "gallery", settings.rpc_timeout_s)
        worker = Worker(
            settings,
            engine,
            models,
            nc,
            js,
            await cancel_bucket(js),
            gallery_pb2_grpc.GalleryStub(gallery_channel),
            await claims_bucket(js),
        )
        holder["worker"] = worker

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)

        if settings.worker_preload:
            try:
                await worker.preload()
            except EaselError as exc:
                raise SettingsError("EASEL_WORKER_MODELS", exc.message) from None
        await worker.bind()
        if not worker.stopping.is_set():
            worker.ready = True
            READY.set(1)
        log.info("worker ready", extra={"models": list(models), "worker": worker.name})

        running = asyncio.create_task(worker.run())
        watcher = (
            asyncio.create_task(watch_models(worker, settings))
            if settings.worker_models_refresh_s > 0
            else None
        )
        stopping = asyncio.create_task(worker.stopping.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        READY.set(0)
        if running.done():
            running.result()  # a crashed loop ends the process with its error
        log.info("stopping: finishing the batch in hand")
        try:
            await asyncio.wait_for(asyncio.shield(running), timeout=settings.shutdown_grace_s)
        except TimeoutError:
            log.warning("grace period over: returning the unfinished batch to the queue")
            worker.abort()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(running, timeout=10)
        stopping.cancel()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await worker.unbind()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), timeout=10)
        await gallery_channel.close()
        worker.generation.close()
        log.info("stopped")
    finally:
        await status.stop()


if __name__ == "__main__":
    run(main())
