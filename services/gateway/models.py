"""The REST API's contract: every request body as a pydantic model, every answer as a TypedDict.

Each field's type, limits and description are declared here once; the handlers read bodies through
these models, `serialize` builds answers of these types (mypy checks the shapes), and the OpenAPI
document at /api/v1/openapi.json is generated from them. Limits come from services.common.limits,
which gallery, inference and auth check too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import AfterValidator, BeforeValidator, Field
from typing_extensions import TypedDict

from services.common import limits

from .fields import INT32_MAX, INT64_MAX, Contract, NotBlank, Whole, owned, refuse

# --- field types ----------------------------------------------------------------------------------

Text = Annotated[str, NotBlank]
Visibility = Literal["private", "unlisted", "public"]
EditKind = Literal["img2img", "inpaint", "upscale", "variation"]
JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
Timestamp = Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]
Url = Annotated[str, Field(json_schema_extra={"format": "uri"})]


def _prompt(description: str, required: bool = False) -> Any:
    return Field(
        ... if required else None,
        description=description,
        json_schema_extra=owned("inference", "invalid_prompt", maxLength=limits.PROMPT_MAX_CHARS),
    )


def _tags(tags: list[str] | None) -> list[str] | None:
    # Gallery's own codes and sentences: the answer is the same whichever of the two catches it.
    if tags is None:
        return None
    for tag in tags:
        if len(tag) > limits.TAG_MAX_CHARS:
            raise refuse(
                "tag_too_long",
                f"Tags may be at most {limits.TAG_MAX_CHARS} characters; shorten {tag[:20]!r}.",
            )
    if len(tags) > limits.TAGS_MAX:
        raise refuse("too_many_tags", f"An image may have at most {limits.TAGS_MAX} tags; remove some.")
    return tags


def _base64(value: object) -> object:
    if value is not None and not isinstance(value, str):
        raise refuse("invalid_field", "'{field}' must be a base64 string.")
    return value


def _scopes(scopes: list[str] | None) -> list[str] | None:
    if scopes is not None and (
        len(scopes) > limits.KEY_SCOPES_MAX or any(len(s) > SCOPE_MAX_CHARS for s in scopes)
    ):
        raise refuse(
            "invalid_field",
            f"'scopes' must be at most {limits.KEY_SCOPES_MAX} strings of at most {SCOPE_MAX_CHARS} "
            "characters.",
        )
    return scopes


SCOPE_MAX_CHARS = 50
Base64 = Annotated[str | None, BeforeValidator(_base64)]


def _edit_kind(kind: str) -> str:
    if kind not in limits.EDIT_KINDS:
        raise refuse("invalid_kind", f"'kind' must be one of {', '.join(limits.EDIT_KINDS)}; got {kind!r}.")
    return kind


EditKindName = Annotated[
    str, NotBlank, AfterValidator(_edit_kind), Field(json_schema_extra={"enum": list(limits.EDIT_KINDS)})
]

Tags = Annotated[
    list[str] | None,
    AfterValidator(_tags),
    Field(
        description="Replaces the image's tags (lower-cased, duplicates dropped).",
        json_schema_extra={
            "maxItems": limits.TAGS_MAX,
            "items": {"type": "string", "maxLength": limits.TAG_MAX_CHARS, "x-error-code": "tag_too_long"},
            "x-error-code": "too_many_tags",
        },
    ),
]


# --- requests -------------------------------------------------------------------------------------


class RegisterRequest(Contract):
    username: Text = Field(
        description="Letters, digits, '_', '-' or '.', starting with a letter or digit.",
        json_schema_extra=owned(
            "auth",
            "invalid_username",
            minLength=limits.USERNAME_MIN_CHARS,
            maxLength=limits.USERNAME_MAX_CHARS,
        ),
    )
    email: Text = Field(json_schema_extra=owned("auth", "invalid_email", maxLength=limits.EMAIL_MAX_CHARS))
    password: Text = Field(
        description="Checked by the password rules (length, not too common, not the username).",
        json_schema_extra=owned("auth", "password_too_long", maxLength=limits.PASSWORD_MAX_CHARS),
    )


class LoginRequest(Contract):
    username: str | None = Field(
        None, max_length=limits.LOGIN_NAME_MAX_CHARS, description="Username or email address."
    )
    email: str | None = Field(
        None, max_length=limits.LOGIN_NAME_MAX_CHARS, description="Accepted in place of username."
    )
    password: Text = Field(max_length=limits.LOGIN_PASSWORD_MAX_CHARS)


class PasswordChange(Contract):
    current_password: Text = Field(max_length=limits.LOGIN_PASSWORD_MAX_CHARS)
    new_password: Text = Field(
        description="Checked by the password rules.",
        json_schema_extra=owned("auth", "password_too_long", maxLength=limits.PASSWORD_MAX_CHARS),
    )


class CreateApiKeyRequest(Contract):
    name: Text = Field(
        description="Printable characters, such as 'laptop script'.",
        json_schema_extra=owned("auth", "invalid_key_name", maxLength=limits.KEY_NAME_MAX_CHARS),
    )
    ttl_seconds: Annotated[int | None, Whole] = Field(
        None,
        ge=0,
        le=limits.KEY_TTL_MAX_S,
        description=f"0 or absent: the default lifetime; otherwise from {limits.KEY_TTL_MIN_S} seconds on.",
    )
    scopes: Annotated[list[str] | None, AfterValidator(_scopes)] = Field(
        None,
        description="generate, images:read, images:write, account; absent: all but account.",
        json_schema_extra={
            "maxItems": limits.KEY_SCOPES_MAX,
            "items": {"type": "string", "maxLength": SCOPE_MAX_CHARS},
        },
    )


class GenerationRequest(Contract):
    prompt: Text = _prompt("What the image shows.", required=True)
    negative_prompt: str | None = _prompt("What it should not show.")
    model: str | None = Field(
        None,
        max_length=limits.MODEL_NAME_MAX_CHARS,
        description="A name from GET /api/v1/models; absent: the default model.",
    )
    width: Annotated[int | None, Whole] = Field(
        None,
        ge=1,
        le=INT32_MAX,
        description="A multiple of 8 within the model's min_size..max_size; absent: its default.",
        json_schema_extra={"format": "int32"},
    )
    height: Annotated[int | None, Whole] = Field(
        None, ge=1, le=INT32_MAX, description="As width.", json_schema_extra={"format": "int32"}
    )
    steps: Annotated[int | None, Whole] = Field(
        None,
        ge=1,
        le=INT32_MAX,
        description="At most the model's max_steps; absent: the model default.",
        json_schema_extra={"format": "int32"},
    )
    guidance: float | None = Field(
        None,
        allow_inf_nan=False,
        description="How closely to follow the prompt; absent: the model default.",
        json_schema_extra=owned("inference", "invalid_guidance", minimum=0, maximum=limits.GUIDANCE_MAX),
    )
    sampler: str | None = Field(
        None, max_length=limits.SAMPLER_NAME_MAX_CHARS, description="One of the model's samplers."
    )
    seed: Annotated[int | None, Whole] = Field(
        None,
        ge=limits.SEED_RANDOM,
        le=INT64_MAX,
        description="Absent, null or -1: random. Image i of n uses seed + i.",
        json_schema_extra={"format": "int64", **owned("inference", "invalid_seed", maximum=limits.SEED_MAX)},
    )
    n: Annotated[int | None, Whole] = Field(
        None,
        ge=1,
        le=INT32_MAX,
        description="Number of images (default 1).",
        json_schema_extra={
            "format": "int32",
            **owned("inference", "too_many_images", maximum=limits.IMAGES_PER_JOB_MAX),
        },
    )


class EditRequest(GenerationRequest):
    """Exactly one of image or image_id; inpaint also needs exactly one of mask or mask_id."""

    kind: EditKindName = Field(description="What to do with the image.")
    prompt: str | None = _prompt(  # type: ignore[assignment]
        "Required for img2img and inpaint. For upscale and variation it defaults to the source "
        "image's prompt (or a neutral one for uploads)."
    )
    image: Base64 = Field(
        None,
        description="The image to edit as base64 (or a data: URL); or send image_id.",
        json_schema_extra={"contentEncoding": "base64"},
    )
    image_id: str | None = Field(
        None, max_length=limits.IMAGE_ID_MAX_CHARS, description="An image in your gallery (or a public one)."
    )
    mask: Base64 = Field(
        None,
        description="inpaint only: white where the image is repainted, black where it stays.",
        json_schema_extra={"contentEncoding": "base64"},
    )
    mask_id: str | None = Field(
        None,
        max_length=limits.IMAGE_ID_MAX_CHARS,
        description="inpaint only: a mask already in your gallery.",
    )
    strength: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="How much of the image is redrawn (default 0.75; upscale caps it at 0.35, "
        "variation at 0.6). Above 0: 0 itself is refused by inference.",
        json_schema_extra=owned("inference", "invalid_strength", exclusiveMinimum=0),
    )


class EditForm(Contract):
    """The fields of EditRequest as form fields; image and mask as files (PNG, JPEG or WebP)."""

    kind: EditKind
    image: bytes | None = Field(None, json_schema_extra={"contentMediaType": "application/octet-stream"})
    mask: bytes | None = Field(None, json_schema_extra={"contentMediaType": "application/octet-stream"})


class ImageUpdate(Contract):
    """Only the fields present change."""

    visibility: Visibility | None = None
    title: str | None = Field(None, max_length=limits.TITLE_MAX_CHARS)
    tags: Tags = None


class ReportRequest(Contract):
    reason: str | None = Field(
        None, max_length=limits.REASON_MAX_CHARS, description="What is wrong with the image."
    )


class HideRequest(Contract):
    hidden: bool = Field(description="true hides it from everyone but its owner.")


# --- answers --------------------------------------------------------------------------------------


class ErrorBody(TypedDict):
    code: Annotated[str, Field(description="Stable, machine-readable code.")]
    message: Annotated[str, Field(description="A sentence that says what to do.")]
    field: NotRequired[Annotated[str, Field(description="The request field the error is about.")]]


class Error(TypedDict):
    error: ErrorBody


class User(TypedDict):
    id: str
    username: str
    email: str
    role: str
    created_at: Timestamp


class RegisterResponse(TypedDict):
    user: User


class LoginResponse(TypedDict):
    token: Annotated[str, Field(description="Session token (starts with ess_); send it as a Bearer token.")]
    expires_at: Timestamp
    user: User


class Credential(TypedDict):
    kind: Literal["session", "api_key"]
    id: str
    scopes: list[str]


class Me(TypedDict):
    user: User
    credential: Credential


class ApiKey(TypedDict):
    id: str
    name: str
    prefix: Annotated[str, Field(description="The key's first characters, to recognise it.")]
    scopes: Annotated[list[str], Field(description="What the key may do (the scopes it was made with).")]
    created_at: Timestamp
    expires_at: Timestamp
    last_used_at: Timestamp


class ApiKeyCreated(ApiKey):
    key: Annotated[str, Field(description="The secret (starts with esk_); shown only once.")]


class ApiKeyList(TypedDict):
    items: list[ApiKey]


class JobImage(TypedDict):
    id: str
    index: int
    url: Url
    thumb_url: Url


class Progress(TypedDict):
    step: int
    steps: int


class JobError(TypedDict):
    code: str
    message: str


class Job(TypedDict):
    id: str
    status: JobStatus
    kind: str
    model: str
    position: NotRequired[Annotated[int, Field(ge=1, description="Place in the queue; only while queued.")]]
    progress: Progress
    images: list[JobImage]
    error: NotRequired[JobError]
    params: Annotated[dict[str, Any], Field(description="Normalised parameters; seed always filled.")]
    cached: bool
    created_at: Timestamp
    started_at: Timestamp
    finished_at: Timestamp


class JobEnvelope(TypedDict):
    job: Job


class JobPage(TypedDict):
    items: list[Job]
    next_cursor: str | None


class Owner(TypedDict):
    id: str
    username: str


class Image(TypedDict):
    id: str
    owner: Owner
    visibility: str
    width: int
    height: int
    title: str
    tags: list[str]
    params: Annotated[dict[str, Any], Field(description="Generation parameters: prompt, seed, steps, ...")]
    kind: str
    job_id: str | None
    content_type: str
    size_bytes: int
    url: Url
    thumb_url: Url
    created_at: Timestamp
    likes: int
    liked: Annotated[bool, Field(description="Whether the caller likes it.")]


class HiddenImage(Image):
    hidden: bool


class ImagePage(TypedDict):
    items: list[Image]
    next_cursor: str | None


class ShareLink(TypedDict):
    url: Url
    token: str
    image_id: str
    created_at: Timestamp


class Reported(TypedDict):
    status: Literal["reported"]


class Model(TypedDict):
    name: str
    family: str
    kinds: list[str]
    default: Annotated[bool, Field(description="Used when a request names no model.")]
    default_width: int
    default_height: int
    default_steps: int
    default_guidance: float
    default_sampler: str
    min_size: int
    max_size: int
    samplers: list[str]
    max_steps: Annotated[int, Field(description="The most denoising steps a request may ask for.")]
    size_multiple: Annotated[int, Field(description="Width and height must be multiples of this.")]
    sha256: Annotated[
        str | None,
        Field(description="A single-file checkpoint's sha256 (A1111's short hash is its first ten digits)."),
    ]


class ModelList(TypedDict):
    items: list[Model]


class Health(TypedDict):
    status: Literal["ok"]


class Ready(TypedDict):
    status: Literal["ready"]
    services: Annotated[dict[str, str], Field(description="Health status of auth, gallery and inference.")]


class NotReady(Error):
    services: dict[str, str]
