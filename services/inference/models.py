"""Models on the volume: one diffusers folder per model plus an `easel-model.json` manifest.

This module reads and writes manifests only; it imports neither torch nor diffusers, so the job API
can list models without the weight of the generation stack.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.common import limits

from .schedulers import SAMPLERS

log = logging.getLogger(__name__)

MANIFEST_FILE = "easel-model.json"
KINDS = limits.JOB_KINDS
FAMILIES = ("sd1", "sd2", "sdxl", "sd-turbo", "sdxl-turbo", "sd3", "flux")
# Families whose denoiser is a transformer trained with flow matching: they take a T5 encoder's long
# prompts and only the flow-matching samplers.
FLOW_FAMILIES = ("sd3", "flux")
# What a flow-matching model can sample with: Euler on its own (shifted) sigma schedule, or Karras's.
FLOW_SAMPLERS = ("euler", "euler_karras")
# Names become NATS subject tokens, so no dots, wildcards or spaces.
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
DEFAULT_MODELS_DIR = Path("./models")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# Defaults per family: size, steps, guidance, sampler, min and max size, max steps.
FAMILY_DEFAULTS: dict[str, tuple[int, int, float, str, int, int, int]] = {
    "sd1": (512, 30, 7.5, "dpmpp_2m_karras", 256, 1024, 150),
    "sd2": (512, 30, 7.5, "dpmpp_2m_karras", 256, 1024, 150),
    "sdxl": (1024, 30, 5.0, "dpmpp_2m_karras", 512, 2048, 150),
    # Distilled for 1-4 steps without classifier-free guidance; both were trained at 512.
    "sd-turbo": (512, 1, 0.0, "euler_a", 256, 1024, 10),
    "sdxl-turbo": (512, 1, 0.0, "euler_a", 256, 1024, 10),
    # SD 3.5 Large and Medium: 28-40 steps at CFG 3.5-4.5 (Large Turbo: 4 steps without CFG).
    "sd3": (1024, 28, 4.0, "euler", 256, 2048, 150),
    # Flux.1-dev: 28 steps at distilled guidance 3.5 (schnell: 4 steps, guidance unused).
    "flux": (1024, 28, 3.5, "euler", 256, 2048, 150),
}


class ModelsDirError(Exception):
    """The models folder is unusable; the message is one line that says what to do."""


class ManifestError(ValueError):
    """One manifest is broken; the message names the field."""


@dataclass(frozen=True)
class ModelManifest:
    name: str
    family: str
    kinds: tuple[str, ...]
    default_width: int
    default_height: int
    default_steps: int
    default_guidance: float
    default_sampler: str
    min_size: int
    max_size: int
    max_steps: int
    inpainting: bool
    path: Path
    source: str
    # A single-file checkpoint (services.inference.singlefile): the file inside the folder, its sha256
    # and which config it was matched to. None for a diffusers folder.
    checkpoint: str | None = None
    sha256: str | None = None
    config: str | None = None
    # Optional fields (absent in older manifests). Samplers the model works with; empty means every
    # sampler in schedulers.py (the UNet families).
    samplers: tuple[str, ...] = ()
    # Width and height must be multiples of this (16 for the transformer families: 8x VAE, 2x2 patches).
    size_multiple: int = 8
    # Prompt tokens the T5 encoder reads (sd3, flux); 0 where the family has no T5 encoder.
    max_sequence_length: int = 0
    # sd3 only: whether the T5 encoder is loaded (without it SD 3.5 runs on its two CLIP encoders,
    # in far less memory, with shorter prompts understood less well).
    t5: bool = True

    @property
    def is_sdxl(self) -> bool:
        return self.family in ("sdxl", "sdxl-turbo")

    @property
    def is_flow(self) -> bool:
        return self.family in FLOW_FAMILIES

    @property
    def is_turbo(self) -> bool:
        return self.family.endswith("turbo")

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written to `easel-model.json` (the path is where it lives, not content)."""
        data = asdict(self)
        data.pop("path")
        data["kinds"] = list(self.kinds)
        data["samplers"] = list(self.samplers)
        for key in ("checkpoint", "sha256", "config"):
            if data[key] is None:
                data.pop(key)
        return data


def models_dir_from_env() -> Path:
    return Path(os.environ.get("EASEL_MODELS_DIR") or DEFAULT_MODELS_DIR)


def _int(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ManifestError(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def parse_manifest(data: object, path: Path) -> ModelManifest:
    """Checks one manifest's content; raises ManifestError naming the first bad field."""
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ManifestError(f"name must be lowercase letters, digits and dashes, got {name!r}")
    family = data.get("family")
    if family not in FAMILIES:
        raise ManifestError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    kinds = data.get("kinds")
    if (
        not isinstance(kinds, list)
        or not kinds
        or any(k not in KINDS for k in kinds)
        or len(set(kinds)) != len(kinds)
    ):
        raise ManifestError(f"kinds must be a non-empty list drawn from {', '.join(KINDS)}, got {kinds!r}")
    min_size = _int(data, "min_size", 8, 8192)
    max_size = _int(data, "max_size", min_size, 8192)
    for key in ("min_size", "max_size"):
        if data[key] % 8:
            raise ManifestError(f"{key} must be a multiple of 8, got {data[key]}")
    width = _int(data, "default_width", min_size, max_size)
    height = _int(data, "default_height", min_size, max_size)
    if width % 8 or height % 8:
        raise ManifestError("default_width and default_height must be multiples of 8")
    max_steps = _int(data, "max_steps", 1, 1000)
    steps = _int(data, "default_steps", 1, max_steps)
    guidance = data.get("default_guidance")
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0 <= guidance <= 30:
        raise ManifestError(f"default_guidance must be a number from 0 to 30, got {guidance!r}")
    sampler = data.get("default_sampler")
    if sampler not in SAMPLERS:
        raise ManifestError(f"default_sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    inpainting = data.get("inpainting", False)
    if not isinstance(inpainting, bool):
        raise ManifestError(f"inpainting must be true or false, got {inpainting!r}")
    source = data.get("source", "bundled")
    if not isinstance(source, str) or not source:
        raise ManifestError(f"source must be a non-empty string, got {source!r}")
    checkpoint = data.get("checkpoint")
    if checkpoint is not None and (
        not isinstance(checkpoint, str) or "/" in checkpoint or not checkpoint.endswith(".safetensors")
    ):
        raise ManifestError(f"checkpoint must be a .safetensors file name in the folder, got {checkpoint!r}")
    sha256 = data.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not SHA256_RE.match(sha256)):
        raise ManifestError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    config = data.get("config")
    if config is not None and not isinstance(config, str):
        raise ManifestError(f"config must be a string, got {config!r}")
    samplers = data.get("samplers", [])
    if (
        not isinstance(samplers, list)
        or any(s not in SAMPLERS for s in samplers)
        or len(set(samplers)) != len(samplers)
    ):
        raise ManifestError(f"samplers must be a list drawn from {', '.join(SAMPLERS)}, got {samplers!r}")
    if samplers and sampler not in samplers:
        raise ManifestError(f"default_sampler {sampler!r} must be one of the model's samplers {samplers!r}")
    size_multiple = data.get("size_multiple", 16 if family in FLOW_FAMILIES else 8)
    if size_multiple not in (8, 16, 32, 64):
        raise ManifestError(f"size_multiple must be 8, 16, 32 or 64, got {size_multiple!r}")
    for key in ("min_size", "max_size", "default_width", "default_height"):
        if data[key] % size_multiple:
            raise ManifestError(
                f"{key} must be a multiple of size_multiple ({size_multiple}), got {data[key]}"
            )
    max_sequence_length = data.get("max_sequence_length", 256 if family in FLOW_FAMILIES else 0)
    if (
        isinstance(max_sequence_length, bool)
        or not isinstance(max_sequence_length, int)
        or not (0 <= max_sequence_length <= 512)
    ):
        raise ManifestError(
            f"max_sequence_length must be an integer from 0 to 512, got {max_sequence_length!r}"
        )
    t5 = data.get("t5", True)
    if not isinstance(t5, bool):
        raise ManifestError(f"t5 must be true or false, got {t5!r}")
    return ModelManifest(
        name=name,
        family=family,
        kinds=tuple(kinds),
        default_width=width,
        default_height=height,
        default_steps=steps,
        default_guidance=float(guidance),
        default_sampler=sampler,
        min_size=min_size,
        max_size=max_size,
        max_steps=max_steps,
        inpainting=inpainting,
        path=path,
        source=source,
        checkpoint=checkpoint,
        sha256=sha256,
        config=config,
        samplers=tuple(samplers),
        size_multiple=size_multiple,
        max_sequence_length=max_sequence_length,
        t5=t5,
    )


def load_manifest(folder: Path) -> ModelManifest:
    """The manifest of one model folder; raises ManifestError saying what is wrong with it."""
    file = folder / MANIFEST_FILE
    if not (folder / "model_index.json").is_file():
        raise ManifestError("model_index.json is missing (not a diffusers folder)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{MANIFEST_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{MANIFEST_FILE} is unreadable: {exc}") from None
    return parse_manifest(data, folder)


def write_manifest(folder: Path, manifest: ModelManifest) -> Path:
    """Writes `easel-model.json` into `folder` (atomically, so readers never see half a file)."""
    parse_manifest(manifest.to_dict(), folder)  # refuse to write what discovery would reject
    file = folder / MANIFEST_FILE
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(file)
    return file


def discover_models(models_dir: Path) -> dict[str, ModelManifest]:
    """Every valid model under `models_dir`, by name; broken folders are skipped with a warning."""
    if not models_dir.is_dir():
        raise ModelsDirError(
            f"models folder {models_dir} does not exist: run `make models` or point EASEL_MODELS_DIR at one"
        )
    found: dict[str, ModelManifest] = {}
    for folder in sorted(models_dir.iterdir()):
        # Dot folders are builds or downloads in progress.
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            manifest = load_manifest(folder)
        except ManifestError as exc:
            log.warning("skipping model folder %s: %s", folder, exc)
            continue
        if manifest.name in found:
            log.warning(
                "skipping model folder %s: name %r is already used by %s",
                folder,
                manifest.name,
                found[manifest.name].path,
            )
            continue
        found[manifest.name] = manifest
    if not found:
        raise ModelsDirError(f"no models in {models_dir}: run `make models`")
    # Read every few seconds by the job api and the workers: the callers say when the set changes.
    log.debug("models found in %s: %s", models_dir, ", ".join(found))
    return found
