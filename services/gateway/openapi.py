"""The OpenAPI 3.1 document served at /api/v1/openapi.json, written by hand to match the handlers.

Keep it in step with api_*.py and serialize.py: tests check that every route the app serves under
/api/v1 is described here and the other way round.
"""

from __future__ import annotations

import copy
from typing import Any

VERSION = "1.0.0"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    out.update(extra)
    return out


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = nullable({"type": "string", "format": "date-time"})
URL: Schema = {"type": "string", "format": "uri"}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "code": {
                        "type": "string",
                        "description": "Stable, machine-readable code.",
                        "examples": ["unauthenticated", "invalid_field", "not_found"],
                    },
                    "message": {"type": "string", "description": "A sentence that says what to do."},
                    "field": {"type": "string", "description": "The request field the error is about."},
                },
                ["code", "message"],
            )
        },
        ["error"],
    ),
    "User": obj(
        {"id": STR, "username": STR, "email": STR, "role": {"enum": ["user", "admin"]}, "created_at": TIME},
        ["id", "username"],
    ),
    "RegisterRequest": obj(
        {
            "username": {"type": "string", "minLength": 1},
            "email": {"type": "string", "minLength": 1},
            "password": {"type": "string", "minLength": 1},
        },
        ["username", "email", "password"],
    ),
    "RegisterResponse": obj({"user": ref("User")}, ["user"]),
    "LoginRequest": obj(
        {
            "username": {"type": "string", "description": "Username or email address."},
            "email": {"type": "string", "description": "Accepted in place of username."},
            "password": {"type": "string", "minLength": 1},
        },
        ["password"],
    ),
    "LoginResponse": obj(
        {
            "token": {
                "type": "string",
                "description": "Session token (starts with ess_); send it as a Bearer token.",
            },
            "expires_at": TIME,
            "user": ref("User"),
        },
        ["token", "expires_at", "user"],
    ),
    "Me": obj(
        {
            "user": ref("User"),
            "credential": obj(
                {
                    "kind": {"enum": ["session", "api_key"]},
                    "id": STR,
                    "scopes": {"type": "array", "items": STR},
                },
                ["kind", "id", "scopes"],
            ),
        },
        ["user", "credential"],
    ),
    "ApiKey": obj(
        {
            "id": STR,
            "name": STR,
            "prefix": {"type": "string", "description": "The key's first characters, to recognise it."},
            "created_at": TIME,
            "expires_at": TIME,
            "last_used_at": TIME,
        },
        ["id", "name", "prefix"],
    ),
    "ApiKeyCreated": {
        "allOf": [
            ref("ApiKey"),
            obj(
                {"key": {"type": "string", "description": "The secret (starts with esk_); shown only once."}},
                ["key"],
            ),
        ]
    },
    "CreateApiKeyRequest": obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "ttl_seconds": {
                "type": "integer",
                "minimum": 0,
                "description": "0 or absent: the default lifetime.",
            },
            "scopes": {"type": "array", "items": STR, "maxItems": 20},
        },
        ["name"],
    ),
    "ApiKeyList": obj({"items": {"type": "array", "items": ref("ApiKey")}}, ["items"]),
    "GenerationRequest": obj(
        {
            "prompt": {"type": "string", "minLength": 1},
            "negative_prompt": {"type": "string"},
            "model": {
                "type": "string",
                "description": "A name from GET /api/v1/models; absent: the default model.",
            },
            "width": {
                "type": "integer",
                "minimum": 1,
                "description": "A multiple of 8 within the model's min_size..max_size; absent: its default.",
            },
            "height": {"type": "integer", "minimum": 1, "description": "As width."},
            "steps": {"type": "integer", "minimum": 1, "description": "Absent: the model default."},
            "guidance": {"type": "number", "minimum": 0, "maximum": 30},
            "sampler": {"type": "string", "description": "One of the model's samplers."},
            "seed": nullable(
                {
                    "type": "integer",
                    "minimum": -1,
                    "maximum": 2**32 - 1,
                    "description": "Absent, null or -1: random. Image i of n uses seed + i.",
                }
            ),
            "n": {
                "type": "integer",
                "minimum": 1,
                "maximum": 8,
                "description": "Number of images (default 1).",
            },
        },
        ["prompt"],
    ),
    "EditRequest": obj(
        {
            "kind": {"enum": ["img2img", "inpaint", "upscale", "variation"]},
            "image": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "The image to edit as base64 (or a data: URL); or send image_id.",
            },
            "image_id": {"type": "string", "description": "An image in your gallery (or a public one)."},
            "mask": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "inpaint only: white where the image is repainted, black where it stays.",
            },
            "mask_id": {"type": "string", "description": "inpaint only: a mask already in your gallery."},
            "prompt": {
                "type": "string",
                "description": "Required for img2img and inpaint. For upscale and variation it defaults "
                "to the source image's prompt (or a neutral one for uploads).",
            },
            "strength": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": 1,
                "description": "How much of the image is redrawn (default 0.75; upscale caps it at "
                "0.35, variation at 0.6).",
            },
            "negative_prompt": {"type": "string"},
            "model": {"type": "string"},
            "width": {
                "type": "integer",
                "minimum": 1,
                "description": "Absent: the image's size (upscale: twice it), within the model's limits.",
            },
            "height": {"type": "integer", "minimum": 1},
            "steps": {"type": "integer", "minimum": 1},
            "guidance": {"type": "number", "minimum": 0, "maximum": 30},
            "sampler": STR,
            "seed": nullable({"type": "integer", "minimum": -1, "maximum": 2**32 - 1}),
            "n": {"type": "integer", "minimum": 1, "maximum": 8},
        },
        ["kind"],
        description="Exactly one of image or image_id; inpaint also needs exactly one of mask or mask_id.",
    ),
    "EditForm": obj(
        {
            "kind": {"enum": ["img2img", "inpaint", "upscale", "variation"]},
            "image": {"type": "string", "contentMediaType": "application/octet-stream"},
            "mask": {"type": "string", "contentMediaType": "application/octet-stream"},
        },
        ["kind"],
        description="The fields of EditRequest as form fields; image and mask as files (PNG, JPEG or WebP).",
    ),
    "JobImage": obj({"id": STR, "index": INT, "url": URL, "thumb_url": URL}, ["id", "url"]),
    "Job": obj(
        {
            "id": STR,
            "status": {"enum": ["queued", "running", "completed", "failed", "cancelled"]},
            "kind": {"enum": ["txt2img", "img2img", "inpaint", "upscale", "variation"]},
            "model": STR,
            "position": {
                "type": "integer",
                "minimum": 1,
                "description": "Place in the queue; only while queued.",
            },
            "progress": obj({"step": INT, "steps": INT}, ["step", "steps"]),
            "images": {"type": "array", "items": ref("JobImage")},
            "error": obj({"code": STR, "message": STR}, ["code", "message"]),
            "params": {"type": "object", "description": "Normalised parameters; seed always filled."},
            "cached": BOOL,
            "created_at": TIME,
            "started_at": TIME,
            "finished_at": TIME,
        },
        ["id", "status", "progress", "images"],
    ),
    "JobEnvelope": obj({"job": ref("Job")}, ["job"]),
    "JobPage": obj(
        {"items": {"type": "array", "items": ref("Job")}, "next_cursor": nullable(STR)},
        ["items", "next_cursor"],
    ),
    "Image": obj(
        {
            "id": STR,
            "owner": obj({"id": STR, "username": STR}, ["id", "username"]),
            "visibility": {"enum": ["private", "unlisted", "public"]},
            "width": INT,
            "height": INT,
            "title": STR,
            "tags": {"type": "array", "items": STR},
            "params": {"type": "object", "description": "Generation parameters: prompt, seed, steps, ..."},
            "kind": {"enum": ["generated", "upload"]},
            "job_id": nullable(STR),
            "content_type": STR,
            "size_bytes": INT,
            "url": URL,
            "thumb_url": URL,
            "created_at": TIME,
            "likes": INT,
            "liked": {"type": "boolean", "description": "Whether the caller likes it."},
        },
        [
            "id",
            "owner",
            "visibility",
            "width",
            "height",
            "title",
            "tags",
            "params",
            "url",
            "thumb_url",
            "created_at",
            "likes",
        ],
    ),
    "ImagePage": obj(
        {"items": {"type": "array", "items": ref("Image")}, "next_cursor": nullable(STR)},
        ["items", "next_cursor"],
    ),
    "ImageUpdate": obj(
        {
            "visibility": {"enum": ["private", "unlisted", "public"]},
            "title": {"type": "string", "maxLength": 200},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 50}, "maxItems": 30},
        },
        description="Only the fields present change.",
    ),
    "ShareLink": obj({"url": URL, "token": STR, "image_id": STR, "created_at": TIME}, ["url", "token"]),
    "ReportRequest": obj(
        {"reason": {"type": "string", "maxLength": 1000, "description": "What is wrong with the image."}}
    ),
    "Reported": obj({"status": {"const": "reported"}}, ["status"]),
    "HideRequest": obj(
        {"hidden": {"type": "boolean", "description": "true hides it from everyone but its owner."}},
        ["hidden"],
    ),
    "HiddenImage": {"allOf": [ref("Image"), obj({"hidden": BOOL}, ["hidden"])]},
    "PasswordChange": obj(
        {
            "current_password": {"type": "string", "minLength": 1},
            "new_password": {
                "type": "string",
                "minLength": 1,
                "description": "Checked by the password rules.",
            },
        },
        ["current_password", "new_password"],
    ),
    "Model": obj(
        {
            "name": STR,
            "family": {"enum": ["sd1", "sd2", "sdxl", "sd-turbo", "sdxl-turbo"]},
            "kinds": {"type": "array", "items": STR},
            "default": {"type": "boolean", "description": "Used when a request names no model."},
            "default_width": INT,
            "default_height": INT,
            "default_steps": INT,
            "default_guidance": {"type": "number"},
            "default_sampler": STR,
            "min_size": INT,
            "max_size": INT,
            "samplers": {"type": "array", "items": STR},
        },
        ["name", "family", "kinds", "default"],
    ),
    "ModelList": obj({"items": {"type": "array", "items": ref("Model")}}, ["items"]),
    "Health": obj({"status": {"const": "ok"}}, ["status"]),
    "Ready": obj(
        {
            "status": {"const": "ready"},
            "services": {
                "type": "object",
                "additionalProperties": STR,
                "description": "Health status of auth, gallery and inference.",
            },
        },
        ["status", "services"],
    ),
    "NotReady": {
        "allOf": [
            ref("Error"),
            obj({"services": {"type": "object", "additionalProperties": STR}}, ["services"]),
        ]
    },
}


def error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def json_body(schema: str, description: str = "") -> Schema:
    out: Schema = {"required": True, "content": {"application/json": {"schema": ref(schema)}}}
    if description:
        out["description"] = description
    return out


def ok(schema: str, description: str = "OK", headers: Schema | None = None) -> Schema:
    out: Schema = {"description": description, "content": {"application/json": {"schema": ref(schema)}}}
    if headers:
        out["headers"] = headers
    return out


NO_CONTENT: Schema = {"description": "Done; no body."}
BAD = error("Malformed JSON, a wrong type or a bad value; `field` names the culprit.")
UNAUTH = error("No valid credential: log in or send a Bearer token.")
FORBIDDEN = error(
    "Not allowed: the credential lacks the scope (`insufficient_scope`), or the CSRF token is missing "
    "on a cookie-authenticated request (`csrf_failed`)."
)
NOT_FOUND = error("No such thing, or not yours.")
LINK_GONE: Schema = {
    "description": "No such share link, or it was revoked: an HTML page for browsers, the Error as JSON "
    "when the Accept header asks for application/json.",
    "content": {"text/html": {"schema": STR}, "application/json": {"schema": ref("Error")}},
}
UNSUPPORTED = error("The body is not JSON (send Content-Type: application/json).")
UNAVAILABLE = error("A backend service is not available; try again in a moment.")
TOO_MANY = error("Too many requests; wait for Retry-After seconds.")

PUBLIC: list[dict[str, list[str]]] = [{}, {"bearer": []}, {"cookie": []}]
NONE: list[dict[str, list[str]]] = []


def param(name: str, where: str, schema: Schema, description: str, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }


ID = {
    "image_id": param("image_id", "path", STR, "Image id."),
    "job_id": param("job_id", "path", STR, "Job id."),
    "key_id": param("key_id", "path", STR, "API key id."),
    "token": param("token", "path", STR, "Share token."),
}
LIMIT = param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}, "Page size.")
CURSOR = param("cursor", "query", STR, "`next_cursor` from the previous page.")
SIZE = param("size", "query", {"enum": ["original", "thumb"], "default": "original"}, "Which rendition.")
IF_NONE_MATCH = param("If-None-Match", "header", STR, "An ETag from an earlier answer: 304 if unchanged.")
PNG = {
    "description": "The image bytes: the original as PNG, the thumbnail (size=thumb) as WebP.",
    "headers": {
        "ETag": {"schema": STR, "description": "The image's content hash."},
        "Cache-Control": {"schema": STR, "description": "private, max-age=31536000, immutable"},
    },
    "content": {
        "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
        "image/webp": {"schema": {"type": "string", "contentMediaType": "image/webp"}},
    },
}
NOT_MODIFIED = {"description": "The copy named by If-None-Match is current."}


def op(
    summary: str,
    tag: str,
    responses: dict[str, Schema],
    *,
    security: list[dict[str, list[str]]] | None = None,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    description: str = "",
) -> Schema:
    out: Schema = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        out["description"] = description
    if security is not None:
        out["security"] = security
    if parameters:
        out["parameters"] = parameters
    if body:
        out["requestBody"] = body
    return out


PATHS: dict[str, dict[str, Schema]] = {
    "/healthz": {"get": op("The process is alive", "operations", {"200": ok("Health")}, security=NONE)},
    "/readyz": {
        "get": op(
            "Ready to serve: auth, gallery and inference all report SERVING",
            "operations",
            {
                "200": ok("Ready"),
                "503": {
                    "description": "Some backend is not serving; the message names it.",
                    "content": {"application/json": {"schema": ref("NotReady")}},
                },
            },
            security=NONE,
        )
    },
    "/api/v1/openapi.json": {
        "get": op(
            "This document",
            "meta",
            {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
            security=NONE,
        )
    },
    "/api/v1/auth/register": {
        "post": op(
            "Create an account",
            "auth",
            {
                "201": ok("RegisterResponse", "Created"),
                "400": BAD,
                "409": error("The username or email is taken (`username_taken`, `email_taken`)."),
                "415": UNSUPPORTED,
                "429": TOO_MANY,
                "503": UNAVAILABLE,
            },
            security=NONE,
            body=json_body("RegisterRequest"),
        )
    },
    "/api/v1/auth/login": {
        "post": op(
            "Log in with a username or email and a password",
            "auth",
            {
                "200": ok(
                    "LoginResponse",
                    "Logged in; the session cookie `easel_session` is set too.",
                    {"Set-Cookie": {"schema": STR, "description": "easel_session; HttpOnly; SameSite=Lax"}},
                ),
                "400": BAD,
                "401": error("Wrong username or password (`invalid_credentials`)."),
                "415": UNSUPPORTED,
                "429": error("Too many failed attempts (`login_throttled`); wait for Retry-After seconds."),
                "503": UNAVAILABLE,
            },
            security=NONE,
            body=json_body("LoginRequest"),
        )
    },
    "/api/v1/auth/logout": {
        "post": op(
            "End the session (or token) this request used",
            "auth",
            {"204": NO_CONTENT, "401": UNAUTH, "403": FORBIDDEN, "503": UNAVAILABLE},
            description="The token is dead from the next request on; the session cookie is cleared.",
        )
    },
    "/api/v1/auth/me": {"get": op("Who am I", "auth", {"200": ok("Me"), "401": UNAUTH, "503": UNAVAILABLE})},
    "/api/v1/auth/password": {
        "post": op(
            "Change my password",
            "auth",
            {
                "204": NO_CONTENT,
                "400": error(
                    "A field is missing, the current password is wrong (`wrong_password`) or the new one "
                    "breaks the password rules; `field` names it."
                ),
                "401": UNAUTH,
                "403": FORBIDDEN,
                "409": error("Changed by another request at the same moment; try again."),
                "415": UNSUPPORTED,
                "429": TOO_MANY,
                "503": UNAVAILABLE,
            },
            body=json_body("PasswordChange"),
            description="Every other session of the account ends; the one making the change stays. "
            "API keys are left alone.",
        )
    },
    "/api/v1/keys": {
        "post": op(
            "Create an API key",
            "keys",
            {
                "201": ok("ApiKeyCreated", "Created; `key` is shown only this once."),
                "400": BAD,
                "401": UNAUTH,
                "403": error("The credential lacks the `account` scope (`insufficient_scope`), or CSRF."),
                "415": UNSUPPORTED,
                "503": UNAVAILABLE,
            },
            body=json_body("CreateApiKeyRequest"),
        ),
        "get": op("List my API keys", "keys", {"200": ok("ApiKeyList"), "401": UNAUTH, "503": UNAVAILABLE}),
    },
    "/api/v1/keys/{key_id}": {
        "delete": op(
            "Revoke an API key",
            "keys",
            {"204": NO_CONTENT, "401": UNAUTH, "403": FORBIDDEN, "404": NOT_FOUND, "503": UNAVAILABLE},
            parameters=[ID["key_id"]],
        )
    },
    "/api/v1/generations": {
        "post": op(
            "Turn a prompt into images (queues a txt2img job)",
            "jobs",
            {
                "202": ok(
                    "JobEnvelope",
                    "Accepted; follow the job at Location or its /events.",
                    {"Location": {"schema": STR, "description": "/api/v1/jobs/{id}"}},
                ),
                "400": BAD,
                "401": UNAUTH,
                "403": FORBIDDEN,
                "404": error("No such model (`model_not_found`); the message names the installed ones."),
                "415": UNSUPPORTED,
                "429": error("Quota or queue limit reached; wait for Retry-After seconds."),
                "503": UNAVAILABLE,
            },
            parameters=[
                param(
                    "Idempotency-Key",
                    "header",
                    {"type": "string", "maxLength": 200},
                    "Repeat a request safely: the same key answers with the same job.",
                )
            ],
            body=json_body("GenerationRequest"),
        )
    },
    "/api/v1/edits": {
        "post": op(
            "Edit an image: img2img, inpaint, upscale or variation (queues a job)",
            "jobs",
            {
                "202": ok(
                    "JobEnvelope",
                    "Accepted; follow the job at Location or its /events.",
                    {"Location": {"schema": STR, "description": "/api/v1/jobs/{id}"}},
                ),
                "400": error(
                    "A missing or wrong field (`missing_image`, `missing_mask`, `invalid_kind`, "
                    "`not_an_image`, `image_too_large`, ...); `field` names it."
                ),
                "401": UNAUTH,
                "403": FORBIDDEN,
                "404": error("No such model, or image_id / mask_id is not an image you can see."),
                "409": error("The Idempotency-Key was used before for a different request."),
                "413": error("The body is too large."),
                "415": error("Send multipart/form-data or JSON."),
                "429": error("Quota or queue limit reached; wait for Retry-After seconds."),
                "503": UNAVAILABLE,
            },
            parameters=[
                param(
                    "Idempotency-Key",
                    "header",
                    {"type": "string", "maxLength": 200},
                    "Repeat a request safely; only with image_id (and mask_id), not with uploaded bytes.",
                )
            ],
            body={
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": ref("EditForm")},
                    "application/json": {"schema": ref("EditRequest")},
                },
            },
        )
    },
    "/api/v1/jobs": {
        "get": op(
            "My jobs, newest first",
            "jobs",
            {"200": ok("JobPage"), "400": BAD, "401": UNAUTH, "503": UNAVAILABLE},
            parameters=[LIMIT, CURSOR],
        )
    },
    "/api/v1/jobs/{job_id}": {
        "get": op(
            "A job's state",
            "jobs",
            {"200": ok("Job"), "401": UNAUTH, "404": NOT_FOUND, "503": UNAVAILABLE},
            parameters=[ID["job_id"]],
        )
    },
    "/api/v1/jobs/{job_id}/events": {
        "get": op(
            "Follow a job as server-sent events until it ends",
            "jobs",
            {
                "200": {
                    "description": (
                        "text/event-stream. Each event: `id:` the event's sequence number, `event:` one of "
                        "queued, running, progress, completed, failed, cancelled, and `data:` the Job "
                        "as JSON. "
                        "The stream ends after the terminal event. Comment lines keep idle connections open. "
                        "An `error` event carries {code, message} if the stream fails for good; after a "
                        "passing outage the stream just ends and the client reconnects with Last-Event-ID."
                    ),
                    "content": {"text/event-stream": {"schema": STR}},
                },
                "204": {"description": "Nothing newer than Last-Event-ID and the job has ended."},
                "401": UNAUTH,
                "404": NOT_FOUND,
                "503": UNAVAILABLE,
            },
            parameters=[
                ID["job_id"],
                param("Last-Event-ID", "header", STR, "Skip events up to and including this id."),
            ],
        )
    },
    "/api/v1/jobs/{job_id}/cancel": {
        "post": op(
            "Cancel a queued or running job",
            "jobs",
            {
                "202": ok("JobEnvelope", "Cancellation requested."),
                "401": UNAUTH,
                "403": FORBIDDEN,
                "404": NOT_FOUND,
                "409": error("The job has already ended."),
                "503": UNAVAILABLE,
            },
            parameters=[ID["job_id"]],
        )
    },
    "/api/v1/models": {
        "get": op(
            "Installed models with their defaults",
            "jobs",
            {"200": ok("ModelList"), "401": UNAUTH, "503": UNAVAILABLE},
        )
    },
    "/api/v1/images": {
        "get": op(
            "My images, newest first",
            "images",
            {"200": ok("ImagePage"), "400": BAD, "401": UNAUTH, "503": UNAVAILABLE},
            parameters=[LIMIT, CURSOR],
        )
    },
    "/api/v1/images/{image_id}": {
        "get": op(
            "An image record",
            "images",
            {"200": ok("Image"), "401": UNAUTH, "404": NOT_FOUND, "503": UNAVAILABLE},
            security=PUBLIC,
            parameters=[ID["image_id"]],
            description="Public images need no credential; private ones only their owner sees.",
        ),
        "patch": op(
            "Change visibility, title or tags",
            "images",
            {
                "200": ok("Image"),
                "400": BAD,
                "401": UNAUTH,
                "403": FORBIDDEN,
                "404": NOT_FOUND,
                "415": UNSUPPORTED,
                "503": UNAVAILABLE,
            },
            parameters=[ID["image_id"]],
            body=json_body("ImageUpdate"),
        ),
        "delete": op(
            "Delete an image",
            "images",
            {"204": NO_CONTENT, "401": UNAUTH, "403": FORBIDDEN, "404": NOT_FOUND, "503": UNAVAILABLE},
            parameters=[ID["image_id"]],
        ),
    },
    "/api/v1/images/{image_id}/file": {
        "get": op(
            "The image file (PNG)",
            "images",
            {
                "200": PNG,
                "304": NOT_MODIFIED,
                "400": BAD,
                "401": UNAUTH,
                "404": NOT_FOUND,
                "503": UNAVAILABLE,
            },
            security=PUBLIC,
            parameters=[ID["image_id"], SIZE, IF_NONE_MATCH],
        )
    },
    "/api/v1/images/{image_id}/like": {
        "post": op(
            "Like an image",
            "images",
            {"200": ok("Image"), "401": UNAUTH, "403": FORBIDDEN, "404": NOT_FOUND, "503": UNAVAILABLE},
            parameters=[ID["image_id"]],
        ),
        "delete": op(
            "Take a like back",
            "images",
            {"200": ok("Image"), "401": UNAUTH, "403": FORBIDDEN, "404": NOT_FOUND, "503": UNAVAILABLE},
            parameters=[ID["image_id"]],
        ),
    },
    "/api/v1/images/{image_id}/share": {
        "post": op(
            "Make a share link (opens without an account)",
            "images",
            {
                "200": ok("ShareLink"),
                "401": UNAUTH,
                "403": FORBIDDEN,
                "404": NOT_FOUND,
                "409": error("A moderator hid the image (`image_hidden`)."),
                "503": UNAVAILABLE,
            },
            parameters=[ID["image_id"]],
        ),
        "delete": op(
            "Revoke share links",
            "images",
            {
                "204": NO_CONTENT,
                "400": BAD,
                "401": UNAUTH,
                "403": FORBIDDEN,
                "404": NOT_FOUND,
                "503": UNAVAILABLE,
            },
            parameters=[
                ID["image_id"],
                param("token", "query", STR, "Revoke only this link; absent: every link of the image."),
            ],
        ),
    },
    "/api/v1/images/{image_id}/report": {
        "post": op(
            "Report an image to the moderators",
            "images",
            {
                "202": ok("Reported", "Received; reporting again replaces the reason."),
                "400": BAD,
                "401": UNAUTH,
                "403": FORBIDDEN,
                "404": NOT_FOUND,
                "415": UNSUPPORTED,
                "503": UNAVAILABLE,
            },
            parameters=[ID["image_id"]],
            body={"required": False, "content": {"application/json": {"schema": ref("ReportRequest")}}},
        )
    },
    "/api/v1/images/{image_id}/hide": {
        "post": op(
            "Hide an image from everyone but its owner, or show it again (administrators)",
            "images",
            {
                "200": ok("HiddenImage"),
                "400": BAD,
                "401": UNAUTH,
                "403": error("Only administrators moderate images (`admin_required`), or CSRF."),
                "404": NOT_FOUND,
                "415": UNSUPPORTED,
                "503": UNAVAILABLE,
            },
            parameters=[ID["image_id"]],
            body=json_body("HideRequest"),
        )
    },
    "/api/v1/community": {
        "get": op(
            "Public images",
            "images",
            {"200": ok("ImagePage"), "400": BAD, "503": UNAVAILABLE},
            security=PUBLIC,
            parameters=[
                LIMIT,
                CURSOR,
                param(
                    "order", "query", {"enum": ["newest", "most_liked"], "default": "newest"}, "Sort order."
                ),
            ],
        )
    },
    "/api/v1/search": {
        "get": op(
            "Search public images (and my own) by prompt, title and tags",
            "images",
            {"200": ok("ImagePage"), "400": BAD, "401": UNAUTH, "503": UNAVAILABLE},
            security=PUBLIC,
            parameters=[
                param(
                    "q", "query", {"type": "string", "minLength": 1, "maxLength": 200}, "Words to find.", True
                ),
                LIMIT,
                CURSOR,
                param(
                    "mine",
                    "query",
                    {"type": "boolean", "default": False},
                    "Only my images (needs a credential).",
                ),
            ],
        )
    },
    "/s/{token}": {
        "get": op(
            "Open a share link",
            "images",
            {
                "200": {
                    "description": "An HTML page, or the Image (urls point at /s/{token}/file) when "
                    "the Accept header asks for application/json.",
                    "content": {"text/html": {"schema": STR}, "application/json": {"schema": ref("Image")}},
                },
                "404": LINK_GONE,
                "503": UNAVAILABLE,
            },
            security=PUBLIC,
            parameters=[ID["token"]],
        )
    },
    "/s/{token}/file": {
        "get": op(
            "The shared image file",
            "images",
            {"200": PNG, "304": NOT_MODIFIED, "404": LINK_GONE, "503": UNAVAILABLE},
            security=NONE,
            parameters=[ID["token"], SIZE, IF_NONE_MATCH],
        )
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Easel API",
        "version": VERSION,
        "description": (
            "The public HTTP API of Easel, a self-hosted AI art studio. JSON in and out. Authenticate with "
            "`Authorization: Bearer <session token or API key>`, or with the `easel_session` cookie; "
            "requests "
            "that change something with the cookie must carry the page's CSRF token in `X-CSRF-Token`. Every "
            'error answers `{"error": {"code", "message", "field"?}}`.'
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}, {"cookie": []}],
    "tags": [
        {"name": "auth", "description": "Accounts and sessions"},
        {"name": "keys", "description": "API keys"},
        {"name": "jobs", "description": "Generation jobs and models"},
        {"name": "images", "description": "Galleries, files and sharing"},
        {"name": "operations", "description": "Health and metrics"},
        {"name": "meta", "description": "This document"},
    ],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
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
        },
    },
}


def document() -> dict[str, Any]:
    return copy.deepcopy(DOCUMENT)
