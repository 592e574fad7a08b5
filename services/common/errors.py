"""Errors a user can hit: a stable code, a sentence that says what to do, and the status to send.

On gRPC the code and field travel as trailing metadata (`easel-error-code`, `easel-error-field`)
next to the status; `from_rpc_error` turns them back into an `EaselError` on the client side, so the
gateway can answer with the same code over HTTP.
"""

from __future__ import annotations

import grpc

CODE_KEY = "easel-error-code"
FIELD_KEY = "easel-error-field"
RETRY_AFTER_KEY = "easel-retry-after"

_HTTP_BY_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.CANCELLED: 499,
}


class EaselError(Exception):
    """An error meant for the user. `message` must say what to do about it."""

    def __init__(
        self,
        code: str,
        message: str,
        status: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
        field: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.field = field
        self.retry_after = retry_after

    @property
    def http_status(self) -> int:
        return _HTTP_BY_GRPC.get(self.status, 500)

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return {"error": body}

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        md: list[tuple[str, str]] = [(CODE_KEY, self.code)]
        if self.field:
            md.append((FIELD_KEY, self.field))
        if self.retry_after is not None:
            md.append((RETRY_AFTER_KEY, str(self.retry_after)))
        return tuple(md)

    def __repr__(self) -> str:
        return f"EaselError({self.code!r}, {self.message!r}, {self.status.name})"


def invalid(code: str, message: str, field: str | None = None) -> EaselError:
    return EaselError(code, message, grpc.StatusCode.INVALID_ARGUMENT, field)


def not_found(code: str, message: str) -> EaselError:
    return EaselError(code, message, grpc.StatusCode.NOT_FOUND)


def unauthenticated(code: str, message: str) -> EaselError:
    return EaselError(code, message, grpc.StatusCode.UNAUTHENTICATED)


def forbidden(code: str, message: str) -> EaselError:
    return EaselError(code, message, grpc.StatusCode.PERMISSION_DENIED)


def conflict(code: str, message: str, field: str | None = None) -> EaselError:
    return EaselError(code, message, grpc.StatusCode.ALREADY_EXISTS, field)


def too_many(code: str, message: str, retry_after: int) -> EaselError:
    return EaselError(code, message, grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=retry_after)


def unavailable(code: str, message: str) -> EaselError:
    return EaselError(code, message, grpc.StatusCode.UNAVAILABLE)


def from_rpc_error(exc: grpc.aio.AioRpcError, service: str) -> EaselError:
    """The user-facing error behind a failed call; transport failures become `<service>_unavailable`."""
    md = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
    status = exc.code()
    if CODE_KEY in md:
        retry = md.get(RETRY_AFTER_KEY)
        return EaselError(
            md[CODE_KEY],
            exc.details() or "",
            status,
            md.get(FIELD_KEY),
            int(retry) if retry else None,
        )
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return EaselError(
            f"{service}_timeout",
            f"The {service} service took too long to answer; try again in a moment.",
            status,
        )
    return EaselError(
        f"{service}_unavailable",
        f"The {service} service is not available right now; try again in a moment.",
        grpc.StatusCode.UNAVAILABLE,
    )
