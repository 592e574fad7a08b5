"""Prometheus metrics of the job API (model and kind labels come from the installed manifests only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

JOBS_SUBMITTED = Counter(
    "easel_inference_jobs_submitted",
    "Jobs accepted by SubmitJob (idempotent retries not counted), by model and kind.",
    ["model", "kind"],
)
JOBS_FINISHED = Counter(
    "easel_inference_jobs_finished",
    "Jobs that reached a final state, by model and status.",
    ["model", "status"],
)
CACHE_HITS = Counter(
    "easel_inference_cache_hits",
    "Jobs answered from the result cache without GPU work, by model.",
    ["model"],
)
EVENTS_APPLIED = Counter(
    "easel_inference_events_applied",
    "Worker events read by the api, by type and whether they changed the job (applied) or were stale.",
    ["type", "result"],
)
WATCH_STREAMS = Gauge("easel_inference_watch_streams", "WatchJob streams open on this replica.")

# Read from JetStream by a periodic task (queue.py): every api replica reports the same figures, so
# dashboards and alerts take the max over replicas.
QUEUE_DEPTH = Gauge(
    "easel_inference_queue_depth",
    "Jobs in the work queue of a model: not yet delivered to a worker plus delivered and not yet acked.",
    ["model"],
)
CONSUMER_PENDING = Gauge(
    "easel_inference_consumer_pending",
    "Jobs not yet delivered to any worker of a model (the consumer lag KEDA scales on).",
    ["model"],
)
CONSUMER_ACK_PENDING = Gauge(
    "easel_inference_consumer_ack_pending",
    "Jobs delivered to a worker of a model and not yet acknowledged (running or about to).",
    ["model"],
)
JOBS_DISPATCHED = Counter(
    "easel_inference_jobs_dispatched",
    "Jobs sent from the api's fair queue to a model's work subject, by model.",
    ["model"],
)
JOBS_HELD = Gauge(
    "easel_inference_jobs_held",
    "Jobs waiting in the api's fair queue (Postgres), not yet sent to the workers, by model.",
    ["model"],
)
