"""A minimal OTLP/gRPC trace receiver for the benchmarks' `--trace` mode.

The services export spans when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (services/common/telemetry.py);
pointing it here collects every span in this process, so a bench can show where a job's time goes
(a timeline of span names relative to the start of each trace). Exporting costs the services CPU:
figures taken with it on are for finding the slow part, not for the results table.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class SpanRec:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, sink: Receiver) -> None:
        self.sink = sink

    def Export(self, request: Any, context: Any) -> Any:
        spans: list[SpanRec] = []
        for rs in request.resource_spans:
            service = ""
            for attr in rs.resource.attributes:
                if attr.key == "service.name":
                    service = attr.value.string_value
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(
                        SpanRec(
                            service=service.removeprefix("easel-"),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        self.sink.add(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class Receiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[SpanRec] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def start(self) -> Receiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(1)

    def env(self) -> dict[str, str]:
        """Environment that makes a service export here, quickly."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }

    def add(self, spans: list[SpanRec]) -> None:
        with self._lock:
            self._spans.extend(spans)

    def spans(self) -> list[SpanRec]:
        with self._lock:
            return list(self._spans)

    def by_trace(self) -> dict[str, list[SpanRec]]:
        out: dict[str, list[SpanRec]] = defaultdict(list)
        for s in self.spans():
            out[s.trace_id].append(s)
        return dict(out)


def timeline(traces: list[list[SpanRec]]) -> list[tuple[str, int, float, float, float]]:
    """Per (service, span name): how many traces had it, and the median start, end and duration in
    seconds, start and end counted from the start of the trace's earliest span. Sorted by start."""
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    ends: dict[tuple[str, str], list[float]] = defaultdict(list)
    durs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for spans in traces:
        if not spans:
            continue
        t0 = min(s.start_ns for s in spans)
        first: dict[tuple[str, str], SpanRec] = {}
        for s in sorted(spans, key=lambda s: s.start_ns):
            first.setdefault((s.service, s.name), s)
        for key, s in first.items():
            starts[key].append((s.start_ns - t0) / 1e9)
            ends[key].append((s.end_ns - t0) / 1e9)
            durs[key].append(s.duration_s)

    def med(v: list[float]) -> float:
        o = sorted(v)
        return o[len(o) // 2]

    rows = [(f"{k[0]}: {k[1]}", len(starts[k]), med(starts[k]), med(ends[k]), med(durs[k])) for k in starts]
    return sorted(rows, key=lambda r: r[2])
