"""Settings of the inference worker, all from `EASEL_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.config import DEFAULT_NATS_URL, CommonSettings


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

    def served(self) -> list[str]:
        return [m.strip() for m in self.worker_models.split(",") if m.strip()]
