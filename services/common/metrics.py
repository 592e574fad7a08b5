"""Prometheus metrics shared by every process, with one naming and label convention.

Names start with `easel_`; labels never carry unbounded values (no user, job or image ids).

The process's own name goes in a `component` label (gateway, auth, gallery, inference-api,
inference-worker), never `service`, `job`, `instance`, `pod` or `namespace`: Prometheus sets those
on every scraped series itself (a ServiceMonitor's `service` is the Kubernetes Service), and a clash
would rename ours to `exported_service`.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

GRPC_SERVER_REQUESTS = Counter(
    "easel_grpc_server_requests",
    "gRPC requests handled, by serving component, method and status code.",
    ["component", "method", "code"],
)
GRPC_SERVER_LATENCY = Histogram(
    "easel_grpc_server_latency_seconds",
    "gRPC handling time (for server streams: until the stream ends), by serving component and method.",
    ["component", "method"],
    buckets=LATENCY_BUCKETS,
)
GRPC_CLIENT_REQUESTS = Counter(
    "easel_grpc_client_requests",
    "gRPC calls made, by target service, method and status code.",
    ["target", "method", "code"],
)
GRPC_CLIENT_LATENCY = Histogram(
    "easel_grpc_client_latency_seconds",
    "gRPC call time seen by the caller.",
    ["target", "method"],
    buckets=LATENCY_BUCKETS,
)


def start_metrics_server(host: str, port: int) -> int:
    """Serves /metrics; returns the bound port (0 asks for a free one)."""
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_port)
    log.info("metrics listening", extra={"metrics_port": bound})
    return bound
