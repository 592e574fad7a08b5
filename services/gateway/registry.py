"""The route registry: one entry per REST operation, binding method and path to the request model,
the answer type, the errors it documents and the handler.

The aiohttp router is fed from it and the OpenAPI document is generated from it (openapi.py), so
the two cannot drift apart. The wrapper around each handler is the one path every operation takes:
read and validate the body into its model, call the handler, answer its TypedDict as JSON with the
documented status. Handlers take a `Call` and return the answer (or a response of their own for
files and event streams); backend errors are already Easel errors (backend.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic_core import to_json

from easel.common.v1 import common_pb2
from services.common.errors import EaselError, invalid

from .backend import Backend
from .bodies import read_model
from .fields import INT64_MAX
from .principal import AuthNeed, Principal, actor_of, require_principal
from .state import GatewayState, state_of

B = TypeVar("B")
Where = Literal["path", "query", "header"]
Handler = Callable[["Call[Any]"], Awaitable[Any]]
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter, declared once: `schema` documents it, `read` checks it
    (a wrong query value is a 400 `invalid_query` naming it)."""

    name: str
    where: Where
    description: str
    type: Literal["string", "integer", "boolean"] = "string"
    required: bool = False
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    choices: tuple[str, ...] = ()
    min_length: int | None = None
    # The code a value past `maximum` / `max_length` is refused with, when not invalid_query.
    code: str | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"enum": list(self.choices)} if self.choices else {"type": self.type}
        for key, value in (
            ("default", self.default),
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
            ("x-error-code", self.code),
        ):
            if value is not None:
                out[key] = value
        return out

    def read(self, request: web.Request) -> Any:
        source = (
            request.match_info
            if self.where == "path"
            else request.headers
            if self.where == "header"
            else request.query
        )
        raw = source.get(self.name)
        if raw is None or raw == "":
            return self.default
        if self.type == "integer":
            return self._integer(raw)
        if self.type == "boolean":
            return self._boolean(raw)
        if self.choices and raw not in self.choices:
            raise self._wrong(f"one of {', '.join(self.choices)}")
        return raw

    def _wrong(self, what: str) -> EaselError:
        return invalid("invalid_query", f"'{self.name}' must be {what}.", field=self.name)

    def _integer(self, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise self._wrong("a whole number") from None
        low = self.minimum if self.minimum is not None else -INT64_MAX
        high = self.maximum if self.maximum is not None else INT64_MAX
        if not low <= value <= high:
            raise self._wrong(f"between {low} and {high}")
        return value

    def _boolean(self, raw: str) -> bool:
        word = raw.strip().lower()
        if word in ("", *FALSE_WORDS):
            return False
        if word in TRUE_WORDS:
            return True
        raise self._wrong("true or false")


@dataclass
class Call(Generic[B]):
    """One request as a handler sees it: the validated body, who calls, and the backend."""

    request: web.Request
    body: B
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> GatewayState:
        return state_of(self.request)

    @property
    def backend(self) -> Backend:
        return self.state.backend

    @property
    def principal(self) -> Principal:
        return require_principal(self.request)

    @property
    def actor(self) -> common_pb2.Actor:
        """The caller as gallery and inference know it; anonymous on public routes."""
        return actor_of(self.request)

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def query(self, name: str, default: str = "") -> str:
        return self.request.query.get(name, default)

    def param(self, param: Param) -> Any:
        return param.read(self.request)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    handler: Handler
    body: type[BaseModel] | None = None
    body_required: bool = True
    answer: Any = None
    status: int = 200
    errors: tuple[int, ...] = ()
    notes: Mapping[int, str] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    auth: AuthNeed = "required"
    scope: str | None = None
    description: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    # Documented as they are, for answers that are not JSON (files, event streams, pages).
    responses: Mapping[str, Any] = field(default_factory=dict)
    # A request body read by the handler itself (edits take multipart or JSON).
    body_doc: Mapping[str, Any] | None = None

    def endpoint(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The aiohttp handler: body in, answer out, marked for the auth middleware. Answers are
        written by pydantic's JSON writer (compact UTF-8, about four times json.dumps' speed)."""
        op = self

        async def endpoint(request: web.Request) -> web.StreamResponse:
            body: Any = None
            if op.body is not None:
                body = await read_model(request, op.body, op.body_required)
            call: Call[Any] = Call(request, body)
            result = await op.handler(call)
            if isinstance(result, web.StreamResponse):
                return result
            if result is None:
                return web.Response(status=op.status, headers=call.headers or None)
            return web.Response(
                body=to_json(result),
                status=op.status,
                headers=call.headers or None,
                content_type="application/json",
                charset="utf-8",
            )

        endpoint.easel_auth = op.auth  # type: ignore[attr-defined]
        endpoint.easel_scope = op.scope  # type: ignore[attr-defined]
        endpoint.__name__ = op.handler.__name__
        endpoint.__doc__ = op.handler.__doc__
        return endpoint


class Registry:
    """The operations of one face, in the order they were declared."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def op(self, method: str, path: str, summary: str, tag: str, **spec: Any) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            self.operations.append(Operation(method, path, summary, tag, handler, **spec))
            return handler

        return add

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(op.path, op.endpoint())
            if op.method == "GET"
            else web.route(op.method, op.path, op.endpoint())
            for op in self.operations
        ]


class Area:
    """The operations of one part of the API: their tag, and the scope and auth they share unless
    an operation says otherwise."""

    def __init__(
        self, registry: Registry, tag: str, scope: str | None = None, auth: AuthNeed = "required"
    ) -> None:
        self.registry, self.tag, self.scope, self.auth = registry, tag, scope, auth

    def op(
        self, method: str, path: str, summary: str, answer: Any = None, **spec: Any
    ) -> Callable[[Handler], Handler]:
        spec.setdefault("scope", self.scope)
        spec.setdefault("auth", self.auth)
        return self.registry.op(method, path, summary, self.tag, answer=answer, **spec)


REST = Registry()

__all__ = ["REST", "Area", "Call", "Operation", "Param", "Registry"]
