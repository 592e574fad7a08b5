"""The shapes of the AUTOMATIC1111-compatible API, as pydantic models: its OpenAPI document is
generated from them (see documents), and the request models name the fields a request may carry
(what `parameters` echoes back; anything else is ignored, as A1111's pydantic models drop it).

Field names, types and defaults are A1111's (modules/api/models.py); the descriptions say where the
studio differs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    """Unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")


class Txt2ImgRequest(_Open):
    prompt: str = Field(default="", max_length=100_000)
    negative_prompt: str = Field(default="", max_length=100_000)
    styles: list[str] | None = Field(default=None, description="Accepted and ignored.")
    seed: int = Field(default=-1, ge=-1, le=2**63 - 1, description="-1: a random seed.")
    subseed: int = Field(default=-1, description="Accepted and ignored.")
    subseed_strength: float = Field(default=0, description="Accepted and ignored.")
    seed_resize_from_h: int = Field(default=-1, description="Accepted and ignored.")
    seed_resize_from_w: int = Field(default=-1, description="Accepted and ignored.")
    sampler_name: str | None = Field(
        default=None,
        max_length=100,
        description='A name from /sdapi/v1/samplers; may carry the schedule ("DPM++ 2M Karras").',
    )
    sampler_index: str | None = Field(default=None, max_length=100, description="Older name of sampler_name.")
    scheduler: str | None = Field(
        default=None, max_length=100, description="karras, or anything else for the sampler's default."
    )
    batch_size: int = Field(default=1, ge=1, le=64)
    n_iter: int = Field(default=1, ge=1, le=64, description="batch_size x n_iter images in one job.")
    steps: int | None = Field(default=None, ge=1, description="Absent: the model's default.")
    cfg_scale: float | None = Field(default=None, description="Absent: the model's default.")
    width: int | None = Field(default=None, ge=1, description="Absent: the model's default.")
    height: int | None = Field(default=None, ge=1, description="Absent: the model's default.")
    restore_faces: bool | None = Field(default=None, description="Accepted and ignored.")
    tiling: bool | None = Field(default=None, description="Accepted and ignored.")
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = Field(default=None, description="Accepted and ignored.")
    denoising_strength: float | None = Field(default=None, ge=0, le=1)
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        default=None,
        description="sd_model_checkpoint (a title or model_name from /sdapi/v1/sd-models) picks the model; "
        "other keys are ignored.",
    )
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    enable_hr: bool = Field(default=False, description="true is refused: hires. fix is not available here.")
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = Field(default=None, description="Scripts are not available here.")
    script_args: list[Any] = Field(default_factory=list, description="Accepted and ignored.")
    send_images: bool = Field(default=True, description="false: the answer's images are empty.")
    save_images: bool = Field(default=False, description="Ignored: images are always kept in the gallery.")
    alwayson_scripts: dict[str, Any] = Field(
        default_factory=dict, description="Must be empty: extensions are not available here."
    )
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(
        min_length=1, max_length=1, description="One image, base64 (plain or as a data URL)."
    )
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = Field(
        default=None, description="base64; white (or opaque, for an RGBA mask) marks what to repaint."
    )
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = Field(default=0, ge=0, le=1)
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


TXT2IMG_FIELDS = frozenset(Txt2ImgRequest.model_fields)
IMG2IMG_FIELDS = frozenset(Img2ImgRequest.model_fields)


class ImageResponse(BaseModel):
    images: list[str] = Field(description="base64 images, in the caller's samples_format (PNG by default).")
    parameters: dict[str, Any] = Field(description="The request's A1111 fields.")
    info: str = Field(
        description="A JSON object as a string: seed, all_seeds, infotexts, ... (A1111's keys)."
    )


class ProgressState(_Open):
    skipped: bool
    interrupted: bool
    stopping_generation: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float = Field(ge=0, le=1)
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class Options(_Open):
    """The caller's options (A1111 keeps one set per server; here each user has their own)."""

    sd_model_checkpoint: str | None = None
    sd_vae: str | None = None
    CLIP_stop_at_last_layers: int | None = None
    samples_format: str | None = None
    jpeg_quality: int | None = None


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SDModuleItem(BaseModel):
    model_name: str
    filename: str


class LoraItem(_Open):
    name: str
    alias: str | None = None
    path: str | None = None
    metadata: dict[str, Any] | None = None


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, Any]
    skipped: dict[str, Any]


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class ExtensionItem(BaseModel):
    name: str
    remote: str
    branch: str
    commit_hash: str
    version: str
    commit_date: int
    enabled: bool


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class PNGInfoRequest(_Open):
    image: str = Field(description="The image, base64 (plain or as a data URL).")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="The A1111 parameters text written in the image ('' if none).")
    items: dict[str, Any] = Field(description="The image's other text items.")
    parameters: dict[str, Any] = Field(description="info parsed: Prompt, Negative prompt, Steps, Seed, ...")


class HTTPError(BaseModel):
    error: str
    detail: str
    body: str
    errors: str


class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationError(BaseModel):
    detail: list[ValidationItem]


class EmptyObject(BaseModel):
    """{}"""

    model_config = ConfigDict(extra="forbid")


class ScriptInfoItem(_Open):
    name: str | None = None


class Flags(_Open):
    api: bool
