"""The OpenAPI 3.1 document at /api/v1/openapi.json, generated from the route registry and the models.

Nothing here describes an endpoint by hand: paths, parameters and statuses come from the registry
entries (registry.py, declared next to each handler in api/), and every schema from the pydantic
request models and the answer TypedDicts (models.py). What is left is the document's frame: its
title, tags, security schemes and the usual sentence for each error status.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from . import models
from .registry import REST, Operation

VERSION = "1.0.0"
REF = "#/components/schemas/{model}"

ERROR_TEXT = {
    400: "Malformed JSON, a wrong type or a bad value; `field` names the culprit.",
    401: "No valid credential: log in or send a Bearer token.",
    403: "Not allowed: the credential lacks the scope (`insufficient_scope`), or the CSRF token is missing "
    "on a cookie-authenticated request (`csrf_failed`).",
    404: "No such thing, or not yours.",
    409: "It conflicts with the current state.",
    413: "The body is too large.",
    415: "The body is not JSON (send Content-Type: application/json).",
    429: "Too many requests; wait for Retry-After seconds.",
    503: "A backend service is not available; try again in a moment.",
}
SECURITY: dict[str, list[dict[str, list[str]]] | None] = {
    "required": None,  # the document's default: bearer or cookie
    "optional": [{}, {"bearer": []}, {"cookie": []}],
    "none": [],
}
# Schemas referred to by hand-written content (multipart forms, pages with JSON alternatives).
EXTRA_SCHEMAS: tuple[Any, ...] = (
    models.Error,
    models.NotReady,
    models.EditForm,
    models.EditRequest,
    models.Image,
)

FRAME: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Easel API",
        "version": VERSION,
        "description": (
            "The public HTTP API of Easel, a self-hosted AI art studio. JSON in and out. Authenticate with "
            "`Authorization: Bearer <session token or API key>`, or with the `easel_session` cookie; "
            "requests that change something with the cookie must carry the page's CSRF token in "
            '`X-CSRF-Token`. Every error answers `{"error": {"code", "message", "field"?}}`. Limits a '
            "backend enforces carry `x-enforced-by` and the `x-error-code` it answers with."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}, {"cookie": []}],
    "tags": [
        {"name": "auth", "description": "Accounts and sessions"},
        {"name": "keys", "description": "API keys"},
        {"name": "jobs", "description": "Generation jobs and models"},
        {"name": "images", "description": "Galleries, files and sharing"},
        {"name": "operations", "description": "Health and readiness"},
        {"name": "meta", "description": "This document"},
    ],
}
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A session token (ess_...) from login or an API key (esk_...).",
    },
    "cookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "easel_session",
        "description": "Set by login. Unsafe methods also need the X-CSRF-Token header.",
    },
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def schemas(operations: list[Operation]) -> dict[str, Any]:
    """Every model and answer type the operations name, under components/schemas."""
    types: dict[str, Any] = {}
    for t in (*EXTRA_SCHEMAS, *(op.body for op in operations), *(op.answer for op in operations)):
        if t is not None:
            types[t.__name__] = t
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = []
    for name, t in types.items():
        mode: JsonSchemaMode = (
            "validation" if isinstance(t, type) and issubclass(t, BaseModel) else "serialization"
        )
        inputs.append((name, mode, TypeAdapter(t)))
    _, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF)
    return dict(definitions.get("$defs", {}))


def _responses(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    summary = (op.handler.__doc__ or "OK").strip().split("\n")[0]
    if op.answer is not None:
        answer: dict[str, Any] = {"description": summary, "content": _json(ref(op.answer.__name__))}
        if op.headers:
            answer["headers"] = {
                name: {"schema": {"type": "string"}, "description": text} for name, text in op.headers.items()
            }
        out[str(op.status)] = answer
    elif op.status == 204:
        out["204"] = {"description": "Done; no body."}
    out.update(copy.deepcopy(dict(op.responses)))
    for status in op.errors:
        text = op.notes.get(status, ERROR_TEXT[status])
        out[str(status)] = {"description": text, "content": _json(ref("Error"))}
    return out


def operation(op: Operation, shared: bool = False) -> dict[str, Any]:
    """One path item's operation; `shared`: its handler serves other operations too."""
    name = f"{op.handler.__name__}_{op.method.lower()}" if shared else op.handler.__name__
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "operationId": name}
    if op.description:
        out["description"] = op.description
    security = SECURITY[op.auth]
    if security is not None:
        out["security"] = security
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "schema": p.schema(),
                "description": p.description,
            }
            for p in op.params
        ]
    if op.body_doc is not None:
        out["requestBody"] = copy.deepcopy(dict(op.body_doc))
    elif op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": _json(ref(op.body.__name__))}
    out["responses"] = _responses(op)
    return out


@functools.cache
def _document() -> str:
    from . import api  # noqa: F401 - registers every operation

    paths: dict[str, dict[str, Any]] = {}
    handlers = [op.handler for op in REST.operations]
    for op in REST.operations:
        paths.setdefault(op.path, {})[op.method.lower()] = operation(op, handlers.count(op.handler) > 1)
    doc = {
        **FRAME,
        "paths": paths,
        "components": {"schemas": schemas(REST.operations), "securitySchemes": SECURITY_SCHEMES},
    }
    return json.dumps(doc)


def document() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(_document())
    return result


def document_bytes() -> bytes:
    return _document().encode()
