"""Prometheus metrics of a worker (labels: installed model names, kinds and fixed words only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

QUEUE_WAIT = Histogram(
    "easel_inference_queue_wait_seconds",
    "Time from submit to a worker starting the job, by model and kind.",
    ["model", "kind"],
    buckets=RUN_BUCKETS,
)
RUN_TIME = Histogram(
    "easel_inference_run_seconds",
    "Time one pipeline call (a batch of compatible jobs) took, by model and kind.",
    ["model", "kind"],
    buckets=RUN_BUCKETS,
)
BATCH_SIZE = Histogram(
    "easel_inference_batch_size",
    "Jobs run together in one pipeline call, by model.",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)
IMAGES_GENERATED = Counter(
    "easel_inference_images_generated", "Images generated and stored, by model and kind.", ["model", "kind"]
)
MODEL_LOAD_TIME = Histogram(
    "easel_inference_model_load_seconds",
    "Time to load a model into memory, by model.",
    ["model"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
JOBS_PROCESSED = Counter(
    "easel_inference_worker_jobs",
    "Job deliveries handled by this worker, by model and outcome (completed, failed, cancelled, "
    "retried; finished: the job was already finished, acked without work; superseded: a later "
    "delivery took the job over, dropped without storing).",
    ["model", "outcome"],
)
HANDOFF_RETRIES = Counter(
    "easel_inference_worker_handoff_retries",
    "Hand-offs of finished images (to the gallery, or the completed event) tried again with the "
    "images in hand.",
)
STALLED = Gauge(
    "easel_inference_worker_stalled_seconds",
    "Seconds since the running generation last finished a denoising step (0 when none runs).",
)
JOBS_RUNNING = Gauge("easel_inference_worker_jobs_in_hand", "Jobs this worker holds right now.")
MEMORY = Gauge(
    "easel_inference_memory_bytes",
    "Engine memory figures (rss, loaded weights, budget; gpu_* on a GPU), by stat.",
    ["stat"],
)
LOADED_MODELS = Gauge("easel_inference_loaded_models", "Models loaded in this worker.")
READY = Gauge("easel_inference_worker_ready", "1 when the worker has its models loaded and consumers bound.")
