"""OpenAPI documents of the two compatible faces, generated from their pydantic models.

`/v1/openapi.json` describes the OpenAI-compatible Images API and `/sdapi/v1/openapi.json` the
AUTOMATIC1111-compatible API. Each operation below names its request and answer models; the JSON
Schemas come from pydantic, so a field's limits are written once, in the model.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import a1111_schemas as a1111
from . import openai_schemas as oai

Kind = Literal["json", "multipart"]
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Answer:
    """One documented status: a model (or a list of them), JSON null, or raw image bytes."""

    description: str
    model: type[BaseModel] | None = None
    many: bool = False
    null: bool = False
    image: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    ok: Answer
    body: type[BaseModel] | None = None
    body_kind: Kind = "json"
    secured: bool = True
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    query_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: tuple[int, ...] = (401, 403, 404, 409, 413, 422, 429, 500, 503)


class StudioErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class StudioError(BaseModel):
    """The studio's own error shape, which the gateway's request rate limit answers in."""

    error: StudioErrorBody


def _schema_of(answer: Answer) -> dict[str, Any]:
    if answer.null:
        return {"type": "null"}
    if answer.model is None:
        raise ValueError(f"{answer.description!r}: an answer names a model, null or image")
    ref = {"$ref": _REF.format(model=answer.model.__name__)}
    return {"type": "array", "items": ref} if answer.many else ref


def _document(
    title: str,
    description: str,
    operations: list[Operation],
    error_for: dict[int, type[BaseModel]],
    security_schemes: dict[str, Any],
) -> dict[str, Any]:
    models: set[type[BaseModel]] = {*error_for.values(), StudioError}
    for op in operations:
        if op.body is not None:
            models.add(op.body)
        if op.ok.model is not None:
            models.add(op.ok.model)
    _, top = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=_REF
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "operationId": op.method + "_" + re.sub(r"[^A-Za-z0-9]+", "_", op.path).strip("_"),
            "summary": op.summary,
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": schema}
            for name, schema in op.path_params.items()
        ] + [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in op.query_params.items()
        ]
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            media = "application/json" if op.body_kind == "json" else "multipart/form-data"
            entry["requestBody"] = {
                "required": True,
                "content": {media: {"schema": {"$ref": _REF.format(model=op.body.__name__)}}},
            }
        responses: dict[str, Any] = {}
        if op.ok.image:
            binary = {"schema": {"type": "string", "format": "binary"}}
            responses["200"] = {
                "description": op.ok.description,
                "content": {"image/png": binary, "image/jpeg": binary, "image/webp": binary},
            }
        else:
            responses["200"] = {
                "description": op.ok.description,
                "content": {"application/json": {"schema": _schema_of(op.ok)}},
            }
        for status in op.errors:
            model = error_for.get(status, error_for[0])
            schema: dict[str, Any] = {"$ref": _REF.format(model=model.__name__)}
            description = "An error, in the original API's shape."
            if status == 429:
                # The gateway's request rate limit answers before the face does, in the studio's shape.
                schema = {"anyOf": [schema, {"$ref": _REF.format(model=StudioError.__name__)}]}
                description = "Too many requests: in the original API's shape, or the studio's (rate limit)."
            responses[str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": schema}},
            }
        entry["responses"] = responses
        if not op.secured:
            entry["security"] = []
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1", "description": description},
        "paths": paths,
        "security": [{name: []} for name in security_schemes],
        "components": {"schemas": schemas, "securitySchemes": security_schemes},
    }


# --- OpenAI --------------------------------------------------------------------------------------

_OPENAI_ERRORS = (400, 401, 403, 404, 413, 415, 429, 500, 503)
_OPENAI_OPERATIONS = [
    Operation(
        "post",
        "/v1/images/generations",
        "Make images from a prompt (synchronous: answers when the job is done).",
        Answer("The images.", oai.ImagesResponse),
        body=oai.GenerateRequest,
        errors=_OPENAI_ERRORS,
    ),
    Operation(
        "post",
        "/v1/images/edits",
        "Edit an image (img2img, or inpainting with a mask).",
        Answer("The images.", oai.ImagesResponse),
        body=oai.EditRequest,
        body_kind="multipart",
        errors=_OPENAI_ERRORS,
    ),
    Operation(
        "post",
        "/v1/images/variations",
        "Variations of an image.",
        Answer("The images.", oai.ImagesResponse),
        body=oai.VariationRequest,
        body_kind="multipart",
        errors=_OPENAI_ERRORS,
    ),
    Operation(
        "get",
        "/v1/models",
        "The installed models.",
        Answer("The models.", oai.ModelList),
        errors=(401, 403, 429, 500, 503),
    ),
    Operation(
        "get",
        "/v1/models/{model}",
        "One installed model.",
        Answer("The model.", oai.Model),
        path_params={"model": {"type": "string", "maxLength": 200}},
        errors=(401, 403, 404, 429, 500, 503),
    ),
    Operation(
        "get",
        "/v1/images/files/{name}",
        "An image behind a signed URL from response_format=url (no API key; expires).",
        Answer("The image.", image=True),
        secured=False,
        path_params={"name": {"type": "string", "maxLength": 80}},
        query_params={
            "owner": {"type": "string", "maxLength": 64},
            "expires": {"type": "string", "maxLength": 20},
            "quality": {"type": "string", "maxLength": 4},
            "sig": {"type": "string", "maxLength": 64},
        },
        errors=(400, 403, 404, 429, 500, 503),
    ),
]


@functools.cache
def openai_document() -> dict[str, Any]:
    return _document(
        "Easel: OpenAI-compatible Images API",
        "OpenAI's Images API over the studio (see services/gateway/compat/openai.py for where it differs). "
        "Authenticate with 'Authorization: Bearer <Easel API key>'.",
        _OPENAI_OPERATIONS,
        {0: oai.ErrorResponse},
        {"bearer": {"type": "http", "scheme": "bearer"}},
    )


# --- AUTOMATIC1111 -------------------------------------------------------------------------------


def _get(path: str, summary: str, model: type[BaseModel], many: bool = True) -> Operation:
    return Operation(
        "get", path, summary, Answer("The list.", model, many=many), errors=(401, 403, 429, 500, 503)
    )


_A1111_OPERATIONS = [
    Operation(
        "post",
        "/sdapi/v1/txt2img",
        "Text to image (synchronous).",
        Answer("The images.", a1111.ImageResponse),
        body=a1111.Txt2ImgRequest,
    ),
    Operation(
        "post",
        "/sdapi/v1/img2img",
        "Image to image, or inpainting with a mask (synchronous).",
        Answer("The images.", a1111.ImageResponse),
        body=a1111.Img2ImgRequest,
    ),
    Operation(
        "get",
        "/sdapi/v1/progress",
        "The caller's current job.",
        Answer("Its progress.", a1111.ProgressResponse),
        query_params={"skip_current_image": {"type": "boolean"}},
        errors=(401, 403, 422, 429, 500, 503),
    ),
    Operation(
        "post",
        "/sdapi/v1/interrupt",
        "Cancels the caller's current job.",
        Answer("Done.", a1111.EmptyObject),
        errors=(401, 403, 429, 500, 503),
    ),
    Operation(
        "get",
        "/sdapi/v1/options",
        "The caller's options.",
        Answer("The options.", a1111.Options),
        errors=(401, 403, 429, 500, 503),
    ),
    Operation(
        "post",
        "/sdapi/v1/options",
        "Saves the caller's options (unknown keys are ignored).",
        Answer("Saved (JSON null).", null=True),
        body=a1111.Options,
    ),
    Operation(
        "post",
        "/sdapi/v1/png-info",
        "The generation parameters written in an image (no credentials needed).",
        Answer("What the image says.", a1111.PNGInfoResponse),
        body=a1111.PNGInfoRequest,
        secured=False,
        errors=(401, 403, 413, 422, 429, 500, 503),
    ),
    _get("/sdapi/v1/sd-models", "The installed models.", a1111.SDModelItem),
    _get("/sdapi/v1/samplers", "The samplers.", a1111.SamplerItem),
    _get("/sdapi/v1/schedulers", "The schedules.", a1111.SchedulerItem),
    _get("/sdapi/v1/upscalers", "The upscalers.", a1111.UpscalerItem),
    _get(
        "/sdapi/v1/latent-upscale-modes",
        "Latent upscale modes (empty: no hires. fix).",
        a1111.LatentUpscalerModeItem,
    ),
    _get("/sdapi/v1/sd-vae", "VAEs (empty: each model has its own).", a1111.SDVaeItem),
    _get("/sdapi/v1/sd-modules", "Forge modules (empty).", a1111.SDModuleItem),
    _get("/sdapi/v1/loras", "LoRAs (empty).", a1111.LoraItem),
    _get("/sdapi/v1/hypernetworks", "Hypernetworks (empty).", a1111.HypernetworkItem),
    _get("/sdapi/v1/face-restorers", "Face restorers (empty).", a1111.FaceRestorerItem),
    _get("/sdapi/v1/realesrgan-models", "RealESRGAN models (empty).", a1111.RealesrganItem),
    _get("/sdapi/v1/prompt-styles", "Prompt styles (empty).", a1111.PromptStyleItem),
    _get("/sdapi/v1/script-info", "Scripts (empty).", a1111.ScriptInfoItem),
    _get("/sdapi/v1/extensions", "Extensions (empty).", a1111.ExtensionItem),
    _get(
        "/sdapi/v1/embeddings", "Textual-inversion embeddings (none).", a1111.EmbeddingsResponse, many=False
    ),
    _get("/sdapi/v1/scripts", "Scripts (none).", a1111.ScriptsList, many=False),
    _get("/sdapi/v1/cmd-flags", "Command-line flags.", a1111.Flags, many=False),
    _get(
        "/sdapi/v1/memory",
        "Memory use (reported by the workers, not here).",
        a1111.MemoryResponse,
        many=False,
    ),
    Operation(
        "post",
        "/sdapi/v1/refresh-checkpoints",
        "Nothing to do: models are picked up by themselves.",
        Answer("Done (JSON null).", null=True),
        errors=(401, 403, 429, 500, 503),
    ),
]


@functools.cache
def a1111_document() -> dict[str, Any]:
    return _document(
        "Easel: AUTOMATIC1111-compatible API",
        "AUTOMATIC1111's web UI API over the studio (see services/gateway/compat/a1111.py for where it "
        "differs). Authenticate with HTTP Basic (username and password, or username and an Easel API key) "
        "or 'Authorization: Bearer <Easel API key>'.",
        _A1111_OPERATIONS,
        {0: a1111.HTTPError, 422: a1111.ValidationError},
        {"basic": {"type": "http", "scheme": "basic"}, "bearer": {"type": "http", "scheme": "bearer"}},
    )
