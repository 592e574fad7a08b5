"""The shapes of the OpenAI-compatible Images API, as pydantic models: its OpenAPI document is
generated from them (see documents). Field names and meanings are OpenAI's; the descriptions say
where the studio differs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SIZE_PATTERN = r"^(auto|\d{1,5}[xX]\d{1,5})$"


class _Open(BaseModel):
    """Fields that only tune OpenAI's models are accepted and ignored."""

    model_config = ConfigDict(extra="allow")


class _Common(_Open):
    model: str | None = Field(
        default=None,
        max_length=200,
        description="dall-e-*, gpt-image-* and chatgpt-image-* mean the studio's default model; "
        "any other name must be installed (GET /v1/models).",
    )
    n: int | None = Field(default=None, ge=1, description="Images to make.")
    size: str | None = Field(
        default=None,
        pattern=SIZE_PATTERN,
        description='"WIDTHxHEIGHT" within the model\'s limits, or "auto".',
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        default=None,
        description="Default: url for dall-e-* model names, b64_json otherwise. A url needs no API key "
        "and expires after EASEL_SIGNED_URL_TTL_S seconds.",
    )
    output_format: Literal["png", "jpeg", "webp"] | None = Field(default=None, description="Default png.")
    output_compression: int | None = Field(
        default=None, ge=0, le=100, description="Quality for jpeg and webp."
    )
    seed: int | None = Field(default=None, ge=-1, le=2**63 - 1, description="Studio extra: the seed.")
    negative_prompt: str | None = Field(default=None, max_length=100_000, description="Studio extra.")
    steps: int | None = Field(default=None, ge=1, description="Studio extra: denoising steps.")
    guidance: float | None = Field(default=None, description="Studio extra: guidance scale.")
    sampler: str | None = Field(default=None, max_length=100, description="Studio extra: sampler name.")
    quality: str | None = Field(default=None, description="Accepted and ignored.")
    background: str | None = Field(default=None, description="Accepted and ignored.")
    moderation: str | None = Field(default=None, description="Accepted and ignored.")
    style: str | None = Field(default=None, description="Accepted and ignored.")
    user: str | None = Field(default=None, description="Accepted and ignored.")


class GenerateRequest(_Common):
    prompt: str = Field(max_length=100_000)
    stream: bool | None = Field(default=None, description="true is refused: streaming is not supported.")


class EditRequest(_Common):
    """multipart/form-data."""

    image: bytes = Field(
        json_schema_extra={"format": "binary"},
        description="The image to edit. Several may be sent as image[] fields; the first is edited.",
    )
    mask: bytes | None = Field(
        default=None,
        json_schema_extra={"format": "binary"},
        description="PNG whose fully transparent pixels mark the area to edit; same size as the image.",
    )
    prompt: str = Field(max_length=100_000)
    strength: float | None = Field(default=None, ge=0, le=1, description="Studio extra: how much to change.")


class VariationRequest(_Common):
    """multipart/form-data."""

    image: bytes = Field(json_schema_extra={"format": "binary"})
    prompt: str | None = Field(default=None, max_length=100_000, description="Studio extra.")
    strength: float | None = Field(default=None, ge=0, le=1, description="Studio extra.")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: Literal["png", "jpeg", "webp"]


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody
