"""Settings of the inference worker, all from `EASEL_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from services.common.config import DEFAULT_NATS_URL, CommonSettings
from services.inference.accel import DEFAULT_BUCKETS, parse_buckets, parse_sizes


class WorkerSettings(CommonSettings):
    metrics_port: int = Field(default=9104, ge=0, le=65535)
    nats_url: str = DEFAULT_NATS_URL
    models_dir: Path = Path("./models")
    # Comma-separated model names this worker serves; empty: every installed model.
    worker_models: str = ""
    # Load the served models at start (ready only after); otherwise on their first job.
    worker_preload: bool = True
    # Jobs fetched at once; compatible ones among them run as one pipeline call.
    worker_batch_max: int = Field(default=4, ge=1, le=32)
    worker_device: str = "auto"
    worker_dtype: str = "auto"
    worker_memory_budget_bytes: int | None = Field(default=None, ge=0)
    # A job not acknowledged (nor kept alive with in_progress) within this time goes to another worker.
    worker_ack_wait_s: float = Field(default=45.0, ge=1.0, le=3600.0)
    # Deliveries of one job before it is failed for good.
    worker_max_deliver: int = Field(default=5, ge=1, le=100)
    # Shortest time between two progress events of one job.
    worker_progress_interval_s: float = Field(default=0.25, ge=0.0)
    # How long a finished generation's hand-off (images to the gallery, the completed event) is tried
    # again, with backoff and the message kept alive, before the job goes back to the queue.
    worker_handoff_s: float = Field(default=120.0, ge=0.0, le=3600.0)
    # A generation that has not finished a denoising step for this long makes the worker not live
    # (/livez answers 503, and Kubernetes restarts it). Model loading and idle time do not count.
    worker_stall_s: float = Field(default=300.0, gt=0.0)
    # How often the model volume is read for models installed while running (0: never), and whether
    # `.safetensors` files dropped into <models>/checkpoints/ are imported then (where the volume is
    # writable: locally; in a cluster the volume is read-only and a job imports).
    worker_models_refresh_s: float = Field(default=5.0, ge=0.0)
    worker_import_checkpoints: bool = True

    # The GPU recipe (see accel.py). auto: reduce-overhead (CUDA graphs), channels-last and fused QKV
    # on CUDA; eager on a CPU.
    worker_compile: Literal[
        "auto", "none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "auto"
    worker_channels_last: bool | None = None
    worker_fuse_qkv: bool | None = None
    # Compile the VAE decoder too (off until the GPU bench shows it pays; see bench/README.md).
    worker_compile_vae: bool = False
    # Batch sizes the compiled UNet serves; a batch is padded up to the next one.
    worker_compile_buckets: str = ",".join(map(str, DEFAULT_BUCKETS))
    # Sizes compiled besides each model's default, e.g. "768x512,512x768"; others run uncompiled.
    worker_compile_sizes: str = ""
    # Inductor's caches; empty: <models_dir>/.compile-cache, so a restarted worker starts warm.
    worker_compile_cache_dir: Path | None = None

    @field_validator("worker_compile_buckets")
    @classmethod
    def _buckets(cls, value: str) -> str:
        parse_buckets(value)
        return value

    @field_validator("worker_compile_sizes")
    @classmethod
    def _sizes(cls, value: str) -> str:
        parse_sizes(value)
        return value

    def compile_cache_dir(self) -> Path:
        return self.worker_compile_cache_dir or self.models_dir / ".compile-cache"

    def served(self) -> list[str]:
        return [m.strip() for m in self.worker_models.split(",") if m.strip()]
