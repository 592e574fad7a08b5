"""The one place that assembles a gRPC server: health, reflection, interceptors, graceful stop.

A service's `__main__` builds its servicer, hands it to `GrpcServer.add`, and awaits
`serve_until_stopped()`. SIGTERM/SIGINT turn health to NOT_SERVING, stop accepting new calls,
give in-flight calls `shutdown_grace_s`, then return so the caller closes its resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .config import GrpcServiceSettings
from .errors import EaselError
from .metrics import GRPC_SERVER_LATENCY, GRPC_SERVER_REQUESTS
from .telemetry import extract

log = logging.getLogger(__name__)
tracer = trace.get_tracer("easel.grpc.server")

# Failures of a dependency (the database down or restarting, a connection cut), not of the request:
# answered UNAVAILABLE, so callers say "try again" (HTTP 503) instead of reporting a bug (500).
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
DEPENDENCY_MESSAGE = "A service this one depends on is not reachable right now; try again in a moment."


def _status_for(exc: Exception) -> grpc.StatusCode:
    """The status a failed call answers with: the user error's own, UNAVAILABLE while a dependency
    is down, INTERNAL for anything else."""
    if isinstance(exc, EaselError):
        return exc.status
    if _dependency_down(exc):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


async def _close(items: AsyncIterator[Any]) -> None:
    """Closes a handler's async generator (a no-op for other iterators)."""
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


def _dependency_down(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.InterfaceError):
        # Only a closed connection or pool; other interface errors are bugs and stay 500.
        text = str(exc).lower()
        return "closed" in text or "closing" in text or "connection" in text
    return isinstance(exc, DEPENDENCY_ERRORS)


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Errors, metrics and tracing for every unary and server-streaming method."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(("/grpc.health", "/grpc.reflection")):
            return handler
        carrier = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        short = method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, short, carrier),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, short, carrier),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(
        self, fn: Callable[..., Any], method: str, short: str, carrier: dict[str, str]
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            with tracer.start_as_current_span(
                method.lstrip("/"), context=extract(carrier), kind=SpanKind.SERVER
            ) as span:
                try:
                    return await fn(request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    code = context.code() or grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    code = _status_for(exc)
                    await self._abort(context, span, method, exc, code)
                finally:
                    self._observe(short, code, start)

        return wrapper

    def _stream(
        self, fn: Callable[..., AsyncIterator[Any]], method: str, short: str, carrier: dict[str, str]
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            # The span is current only while the handler runs, one step at a time: a context attached
            # across a `yield` would be detached wherever the stream is closed, which for a client that
            # went away is another task ("Failed to detach context" at ERROR on every early close).
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            span = tracer.start_span(method.lstrip("/"), context=extract(carrier), kind=SpanKind.SERVER)
            span_context = trace.set_span_in_context(span)
            items = fn(request, context).__aiter__()
            try:
                while True:
                    token = otel_context.attach(span_context)
                    try:
                        item = await items.__anext__()
                    except StopAsyncIteration:
                        break
                    except (asyncio.CancelledError, grpc.aio.AbortError):
                        code = context.code() or grpc.StatusCode.CANCELLED
                        raise
                    except Exception as exc:
                        code = _status_for(exc)
                        await self._abort(context, span, method, exc, code)
                    finally:
                        otel_context.detach(token)
                    yield item
            except GeneratorExit:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                # Closes the handler (its own clean-up, e.g. unsubscribing) inside the span as well.
                token = otel_context.attach(span_context)
                try:
                    await _close(items)
                finally:
                    otel_context.detach(token)
                    span.end()
                    self._observe(short, code, start)

        return wrapper

    async def _abort(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        span: Span,
        method: str,
        exc: Exception,
        code: grpc.StatusCode,
    ) -> None:
        """Ends the call with the answer `exc` deserves (`code`, from `_status_for`); always raises."""
        if isinstance(exc, EaselError):
            span.set_attribute("easel.error_code", exc.code)
            await context.abort(exc.status, exc.message, exc.trailing_metadata())
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR))
        if code == grpc.StatusCode.UNAVAILABLE:
            await self._unavailable(context, method, exc)
        log.exception("unhandled error in %s", method)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            "Something went wrong on our side; try again, and report it if it persists.",
            (("easel-error-code", "internal"),),
        )

    @staticmethod
    async def _unavailable(
        context: grpc.aio.ServicerContext[Any, Any], method: str, exc: BaseException
    ) -> None:
        """Aborts the call with UNAVAILABLE: raises, so the lines after a call to it never run."""
        log.warning("dependency unavailable in %s: %s: %s", method, type(exc).__name__, exc)
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, DEPENDENCY_MESSAGE, (("easel-error-code", "dependency_unavailable"),)
        )

    def _observe(self, method: str, code: grpc.StatusCode, start: float) -> None:
        GRPC_SERVER_REQUESTS.labels(self.service, method, code.name).inc()
        GRPC_SERVER_LATENCY.labels(self.service, method).observe(time.perf_counter() - start)


class GrpcServer:
    def __init__(self, service: str, settings: GrpcServiceSettings) -> None:
        self.service = service
        self.settings = settings
        self.server = grpc.aio.server(
            interceptors=[_Interceptor(service)],
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names: list[str] = []
        self.port = 0
        self._stop = asyncio.Event()
        self._checks: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        register(servicer, self.server)
        self._names.append(full_name)

    async def start(self) -> int:
        reflection.enable_server_reflection(
            [
                *self._names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise SystemExit(f"easel: cannot listen on {address}; set EASEL_GRPC_PORT to a free port")
        await self.server.start()
        await self.set_serving(True)
        log.info("grpc listening", extra={"grpc_port": self.port, "services": self._names})
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._names]:
            await self.health.set(name, status)

    def request_stop(self) -> None:
        self._stop.set()

    def watch_dependency(self, name: str, check: Callable[[], Awaitable[object]]) -> None:
        """Health turns NOT_SERVING while `check` fails (the database down, say) and SERVING again once
        it passes, so readiness probes and the gateway's /readyz see it. Checked every second."""
        self._checks.append((name, check))

    async def _watch_dependencies(self, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        serving = True
        while not self._stop.is_set():
            down = []
            for name, check in self._checks:
                try:
                    await asyncio.wait_for(check(), timeout_s)
                except Exception as exc:  # any failure of the check means "not ready"
                    down.append(f"{name} ({type(exc).__name__})")
            if bool(down) == serving and not self._stop.is_set():
                serving = not down
                await self.set_serving(serving)
                if down:
                    log.warning("not serving: %s unavailable", ", ".join(down))
                else:
                    log.info("serving again: dependencies reachable")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval_s)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def serve_until_stopped(self, on_stopping: Callable[[], Awaitable[None]] | None = None) -> None:
        if not self.port:
            await self.start()
        self.install_signal_handlers()
        watch = asyncio.create_task(self._watch_dependencies()) if self._checks else None
        await self._stop.wait()
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        log.info("stopping: health NOT_SERVING, finishing in-flight calls")
        await self.set_serving(False)
        if on_stopping is not None:
            await on_stopping()
        await self.server.stop(self.settings.shutdown_grace_s)
        log.info("stopped")
