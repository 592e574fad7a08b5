"""gRPC client channels: a deadline on every unary call, trace context and metrics on every call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from grpc.aio import ClientCallDetails
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .errors import EaselError, from_rpc_error
from .metrics import GRPC_CLIENT_LATENCY, GRPC_CLIENT_REQUESTS
from .telemetry import inject

tracer = trace.get_tracer("easel.grpc.client")


def _with_context(details: ClientCallDetails, timeout: float | None) -> ClientCallDetails:
    metadata = list(details.metadata or ())
    for key, value in inject({}).items():
        metadata.append((key, value))
    return ClientCallDetails(
        method=details.method,
        timeout=details.timeout if details.timeout is not None else timeout,
        metadata=grpc.aio.Metadata(*metadata),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


def _method_name(details: ClientCallDetails) -> str:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    return str(method)


class _UnaryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, target_name: str, timeout: float) -> None:
        self.target_name = target_name
        self.timeout = timeout

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: ClientCallDetails, request: Any
    ) -> Any:
        method = _method_name(details)
        short = method.rsplit("/", 1)[-1]
        start = time.perf_counter()
        with tracer.start_as_current_span(
            method.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.method": short, "easel.target": self.target_name},
        ) as span:
            call = await continuation(_with_context(details, self.timeout), request)
            code = await call.code()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
        GRPC_CLIENT_REQUESTS.labels(self.target_name, short, code.name).inc()
        GRPC_CLIENT_LATENCY.labels(self.target_name, short).observe(time.perf_counter() - start)
        return call


class _StreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Streams get no default deadline: a watch lasts as long as its job."""

    def __init__(self, target_name: str) -> None:
        self.target_name = target_name

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: ClientCallDetails, request: Any
    ) -> Any:
        short = _method_name(details).rsplit("/", 1)[-1]
        GRPC_CLIENT_REQUESTS.labels(self.target_name, short, "STARTED").inc()
        return await continuation(_with_context(details, None), request)


def channel(target: str, name: str, timeout: float) -> grpc.aio.Channel:
    """A channel to `target` (host:port) whose unary calls time out after `timeout` seconds."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=[_UnaryInterceptor(name, timeout), _StreamInterceptor(name)],
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            # gRPC's default backoff grows to 120 s: after a callee restarts, every call would fail
            # fast with UNAVAILABLE for up to two minutes. Capped, a restarted service is found again
            # within a few seconds.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ],
    )


@contextmanager
def user_errors(service: str) -> Iterator[None]:
    """Turns a failed call into the `EaselError` the callee meant (or `<service>_unavailable`)."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, service) from None


async def stream_user_errors(service: str, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for item in stream:
            yield item
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, service) from None


__all__ = ["EaselError", "channel", "stream_user_errors", "user_errors"]
