"""Settings of the inference job API, all from `EASEL_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common.config import DEFAULT_NATS_URL, DatabaseSettings

from .store import DEFAULT_COST_LIMIT


class InferenceApiSettings(DatabaseSettings):
    grpc_port: int = Field(default=50053, ge=0, le=65535)
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    nats_url: str = DEFAULT_NATS_URL
    models_dir: Path = Path("./models")
    # Empty: `tiny-sd` when installed, else the first installed model by name.
    default_model: str = ""

    # Per-user limits. In flight = queued or running; the day is the UTC calendar day.
    jobs_in_flight_limit: int = Field(default=8, ge=1)
    jobs_per_day_limit: int = Field(default=1000, ge=1)
    # Pixel-steps (width x height x steps x images) one user may have queued or running at once; one
    # job larger than this still runs when it is the user's only one. Default: eight 1024x1024 single
    # images of 30 steps.
    jobs_in_flight_cost_limit: int = Field(default=DEFAULT_COST_LIMIT, ge=1)

    # Fair dispatch: jobs wait in Postgres and at most this many per model are sent to the workers and
    # not yet denoised (a job frees its place at its last denoising step). About what the workers
    # denoise at once (batch size x workers): then a newcomer's job waits for about one batch; larger
    # commits jobs ahead of it (and shows a backlog as consumer lag for autoscaling).
    dispatch_window: int = Field(default=4, ge=1, le=10_000)
    # How often every replica looks for held jobs (besides dispatching on submits and job events).
    dispatch_interval_s: float = Field(default=1.0, gt=0, le=60)
    # At most the engine's own limit (2000), which a worker enforces anyway.
    prompt_max_chars: int = Field(default=2000, ge=1, le=2000)

    # Identical requests with an explicit seed are answered from stored images (no GPU work).
    result_cache: bool = True

    # How often a WatchJob stream re-checks the queue position of a queued job.
    watch_position_interval_s: float = Field(default=1.0, gt=0)
    # How long the model list read from EASEL_MODELS_DIR is reused before it is read again.
    models_refresh_s: float = Field(default=5.0, ge=0)
    # How often queue depth and consumer lag are read from JetStream for /metrics.
    queue_metrics_interval_s: float = Field(default=5.0, gt=0)
