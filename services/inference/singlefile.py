"""Single-file checkpoints: `.safetensors` files as A1111, ComfyUI and model sites ship them.

Importing one is offline and cheap: the file's header is read (never its tensors), the family is
detected from the tensor names and shapes (with diffusers' own detector), a config that fits those
shapes is chosen (the ones this project carries in `configs/`, or an installed model's), and a model
folder is written beside the others: the carried configs and tokenizer, the checkpoint itself
(hard-linked where the volume allows, else copied) and an `easel-model.json` naming the file and its
hashes. The worker then loads the file with diffusers' `from_single_file` against those configs, so a
worker never reaches a hub and the weights are never converted on disk.

Hashes are A1111's: the sha256 of the whole file and its first ten hex digits ("AutoV2", the short
hash model sites and A1111's "Model hash" use).

Everything is written into a dot folder first and renamed into place, so discovery (which skips dot
folders) never sees half an import, and a failure leaves the installed models untouched.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import EaselError, conflict, invalid

from .models import FAMILY_DEFAULTS, KINDS, NAME_RE, ModelManifest, discover_models, write_manifest

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).parent / "configs"
CHECKPOINTS_FOLDER = "checkpoints"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MAX_HEADER_BYTES = 100 * 1024 * 1024
UNET = "model.diffusion_model."
VAE = "first_stage_model."
SDXL_CLIP_L = "conditioner.embedders.0.transformer."
SHORT_HASH_LEN = 10
_CHUNK = 8 * 1024 * 1024

# diffusers' model types (infer_diffusers_model_type) → Easel family, for the families Easel runs
# from a single file. The others are named in the error so the user knows what was recognised.
_FAMILY_OF = {"v1": "sd1", "inpainting": "sd1", "xl_base": "sdxl", "xl_inpaint": "sdxl"}
_NAMED = {
    "v2": "Stable Diffusion 2.x",
    "inpainting_v2": "Stable Diffusion 2.x inpainting",
    "xl_refiner": "the SDXL refiner",
    "playground-v2-5": "Playground v2.5",
    "sd3": "Stable Diffusion 3",
    "sd35_medium": "Stable Diffusion 3.5 Medium",
    "sd35_large": "Stable Diffusion 3.5 Large",
    "flux-dev": "Flux.1 dev",
    "flux-schnell": "Flux.1 schnell",
    "flux-fill": "Flux.1 Fill",
    "flux-depth": "Flux.1 Depth",
}
_SUPPORTED = "Stable Diffusion 1.x and SDXL"


@dataclass(frozen=True)
class TensorInfo:
    """What the header says of one tensor; `shape` is what diffusers' detector reads."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Detected:
    family: str  # an Easel family (models.FAMILIES)
    model_type: str  # diffusers' name for what it recognised
    inpainting: bool


def refuse(code: str, message: str) -> EaselError:
    return invalid(code, message, field="file")


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors a `.safetensors` file declares, checked against the file's size.

    A pickle (`.ckpt` and friends) is refused before anything is read: unpickling can run code.
    """
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise refuse(
            "checkpoint_pickle",
            f"{path.name} is a pickle checkpoint, which can run code when it is loaded, so Easel does not "
            "open it. Convert it to .safetensors first (for example with the kohya-ss or A1111 "
            "'checkpoint merger' tools, or safetensors' convert script) and import the .safetensors file.",
        )
    if path.suffix.lower() != ".safetensors":
        raise refuse(
            "checkpoint_format",
            f"{path.name} is not a .safetensors file; import a .safetensors checkpoint.",
        )
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _corrupt(path, "it is shorter than a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
                raise _corrupt(path, "its header length does not fit the file")
            raw = fh.read(length)
    except FileNotFoundError:
        raise invalid("checkpoint_not_found", f"{path} does not exist.", field="file") from None
    except IsADirectoryError:
        raise refuse("checkpoint_format", f"{path} is a folder, not a .safetensors file.") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _corrupt(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    tensors: dict[str, TensorInfo] = {}
    data_size = size - 8 - length
    end_max = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
            shape = tuple(int(x) for x in entry["shape"])
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"tensor {name!r} is described wrongly") from None
        if not 0 <= begin <= end:
            raise _corrupt(path, f"tensor {name!r} has impossible offsets")
        end_max = max(end_max, end)
        tensors[name] = TensorInfo(dtype, shape)
    if end_max > data_size:
        raise _corrupt(
            path, f"it is truncated ({data_size} bytes of tensor data, the header needs {end_max})"
        )
    if not tensors:
        raise _corrupt(path, "it holds no tensors")
    return tensors


def _corrupt(path: Path, why: str) -> EaselError:
    return refuse(
        "checkpoint_corrupt",
        f"{path.name} is not a readable safetensors checkpoint: {why}. Download it again and retry.",
    )


def detect(tensors: dict[str, TensorInfo]) -> Detected:
    """The family of a checkpoint from its tensor names and shapes."""
    if f"{UNET}input_blocks.0.0.weight" not in tensors and not any(
        k.startswith(("model.diffusion_model.", "double_blocks.", "joint_blocks.")) for k in tensors
    ):
        raise refuse(
            "checkpoint_unknown_family",
            "The file's tensors match no model family Easel knows (no diffusion model weights in it); "
            f"Easel imports {_SUPPORTED} checkpoints. LoRAs, VAEs and embeddings go in their own folders.",
        )
    model_type = _model_type(tensors)
    family = _FAMILY_OF.get(model_type)
    if family is None:
        what = _NAMED.get(model_type, f"a {model_type} model")
        raise refuse(
            "checkpoint_family_unsupported",
            f"This checkpoint is {what}; Easel imports {_SUPPORTED} single files so far. "
            "Use the diffusers folder of that model instead (`make models MODELS=org/name`).",
        )
    if f"{UNET}input_blocks.0.0.weight" not in tensors or not any(k.startswith(VAE) for k in tensors):
        raise refuse(
            "checkpoint_incomplete",
            "The checkpoint lacks its UNet or its VAE; import a full checkpoint (UNet, VAE and text "
            "encoders in one file).",
        )
    in_channels = tensors[f"{UNET}input_blocks.0.0.weight"].shape[1]
    return Detected(family=family, model_type=model_type, inpainting=in_channels == 9)


def _model_type(tensors: dict[str, TensorInfo]) -> str:
    """diffusers' name for the architecture (its own detector), SDXL base recognised first."""
    if any(k.startswith("conditioner.embedders.1.model.") for k in tensors) and any(
        k.startswith(SDXL_CLIP_L) for k in tensors
    ):
        # CLIP ViT-L beside OpenCLIP's layout is SDXL base. diffusers' detector asks for a tenth layer
        # of the second encoder, which a small SDXL-architecture model (the bundled one) lacks.
        return "xl_base"
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        return str(infer_diffusers_model_type(tensors))  # type: ignore[no-untyped-call]
    except (KeyError, IndexError, AttributeError, TypeError):
        # The detector reads shapes of keys it expects beside the ones it found: a partial file.
        raise refuse(
            "checkpoint_unknown_family",
            "The file's tensors look like part of a model but not a whole one Easel knows; "
            f"Easel imports {_SUPPORTED} checkpoints.",
        ) from None


def _json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _text_keys(family: str) -> list[tuple[str, str]]:
    """(checkpoint key of the token embedding, config folder) for each text encoder."""
    if family == "sdxl":
        return [
            (
                "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                "text_encoder",
            ),
            ("conditioner.embedders.1.model.token_embedding.weight", "text_encoder_2"),
        ]
    return [("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "text_encoder")]


def fits(config_dir: Path, tensors: dict[str, TensorInfo], detected: Detected) -> bool:
    """Whether the configs in `config_dir` describe models of the checkpoint's shapes."""
    try:
        unet = _json(config_dir / "unet" / "config.json")
        vae = _json(config_dir / "vae" / "config.json")
        width = int(unet["block_out_channels"][0])
        in_channels = 9 if detected.inpainting else int(unet["in_channels"])
        if tensors[f"{UNET}input_blocks.0.0.weight"].shape != (width, in_channels, 3, 3):
            return False
        out_blocks = len(unet["up_block_types"]) * (int(unet["layers_per_block"]) + 1)
        if f"{UNET}output_blocks.{out_blocks - 1}.0.in_layers.0.weight" not in tensors:
            return False
        if f"{UNET}output_blocks.{out_blocks}.0.in_layers.0.weight" in tensors:
            return False
        cross = int(unet["cross_attention_dim"])
        to_k = [v.shape for k, v in tensors.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")]
        if not to_k or any(shape[1] != cross for shape in to_k):
            return False
        vae_width = int(vae["block_out_channels"][0])
        if tensors[f"{VAE}encoder.conv_in.weight"].shape != (vae_width, 3, 3, 3):
            return False
        for key, folder in _text_keys(detected.family):
            text = _json(config_dir / folder / "config.json")
            if key in tensors and tensors[key].shape != (int(text["vocab_size"]), int(text["hidden_size"])):
                return False
    except (OSError, KeyError, ValueError, TypeError, IndexError):
        return False
    return True


def config_candidates(family: str, models_dir: Path) -> Iterable[tuple[str, Path]]:
    """The carried config of the family first, then every installed diffusers model of that family."""
    yield f"carried:{family}", CONFIGS_DIR / family
    try:
        installed = discover_models(models_dir)
    except Exception:  # an empty or missing volume has no candidates, nothing more
        return
    for manifest in installed.values():
        if manifest.family == family and not manifest.checkpoint:
            yield f"model:{manifest.name}", manifest.path


def choose_config(tensors: dict[str, TensorInfo], detected: Detected, models_dir: Path) -> tuple[str, Path]:
    for label, folder in config_candidates(detected.family, models_dir):
        if fits(folder, tensors, detected):
            return label, folder
    raise refuse(
        "checkpoint_no_config",
        f"The checkpoint is {detected.family} but its layer sizes match no configuration Easel carries or "
        "has installed (a pruned or unusual architecture); import its diffusers folder instead.",
    )


_CONFIG_FILES = ("config.json", "scheduler_config.json", "tokenizer_config.json", "special_tokens_map.json")
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")


def copy_configs(source: Path, target: Path, inpainting: bool) -> None:
    """The configs (never weights) of a model folder or carried config, with a tokenizer that loads."""
    shutil.copy2(source / "model_index.json", target / "model_index.json")
    for sub in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [f for f in sub.iterdir() if f.name in _CONFIG_FILES or f.name in _TOKENIZER_FILES]
        if not files:
            continue
        (target / sub.name).mkdir()
        for f in files:
            shutil.copy2(f, target / sub.name / f.name)
        if sub.name.startswith("tokenizer") and not (target / sub.name / "vocab.json").exists():
            for name in ("vocab.json", "merges.txt"):
                with gzip.open(CONFIGS_DIR / "clip" / f"{name}.gz", "rb") as src:
                    (target / sub.name / name).write_bytes(src.read())
    if inpainting:
        unet_config = target / "unet" / "config.json"
        data = _json(unet_config)
        data["in_channels"] = 9
        unet_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(source: Path, target: Path) -> str:
    """Copies the file and hashes it in the same pass (one read of a file that may be many GB)."""
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def place_checkpoint(source: Path, target: Path, move: bool, link: bool = True) -> str:
    """Puts the file at `target` (rename, hard link, else copy) and returns its sha256."""
    if move:
        try:
            os.replace(source, target)
            return sha256_of(target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    elif link:
        try:
            os.link(source, target)
            return sha256_of(target)
        except OSError:
            pass
    digest = _copy_hashing(source, target)
    if move:
        source.unlink()
    return digest


def slug(stem: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:64].strip("-")
    return name or "checkpoint"


def import_checkpoint(
    source: Path,
    models_dir: Path,
    name: str | None = None,
    move: bool = False,
    origin: str | None = None,
    link: bool = True,
) -> ModelManifest:
    """Imports one `.safetensors` checkpoint as a model named `name` (default: from the file name).

    The file is moved (`move`), else hard-linked where the volume allows (`link`), else copied.
    Raises EaselError (stable code, a sentence) for anything wrong with the file or the name; on any
    failure nothing is left in `models_dir` and the installed models are untouched.
    """
    tensors = read_header(source)
    detected = detect(tensors)
    model_name = name or slug(source.stem)
    if not NAME_RE.match(model_name):
        raise invalid(
            "invalid_model_name",
            "A model name is lowercase letters, digits and dashes (at most 64), starting and ending "
            "with a letter or digit.",
            field="name",
        )
    folder = models_dir / model_name
    if folder.exists():
        raise conflict(
            "model_exists",
            f"A model named {model_name} is installed already; choose another name or delete that "
            "model first.",
            field="name",
        )
    label, config_dir = choose_config(tensors, detected, models_dir)
    staging = models_dir / f".import-{model_name}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        copy_configs(config_dir, staging, detected.inpainting)
        file_name = f"{model_name}.safetensors"
        digest = place_checkpoint(source, staging / file_name, move, link)
        size, steps, guidance, sampler, min_size, max_size, max_steps = FAMILY_DEFAULTS[detected.family]
        if label.startswith("model:"):
            base = discover_models(models_dir)[label.split(":", 1)[1]]
            size, steps, guidance, sampler = (
                base.default_width,
                base.default_steps,
                base.default_guidance,
                base.default_sampler,
            )
            min_size, max_size, max_steps = base.min_size, base.max_size, base.max_steps
        manifest = ModelManifest(
            name=model_name,
            family=detected.family,
            kinds=("inpaint",) if detected.inpainting else KINDS,
            default_width=size,
            default_height=size,
            default_steps=steps,
            default_guidance=guidance,
            default_sampler=sampler,
            min_size=min_size,
            max_size=max_size,
            max_steps=max_steps,
            inpainting=detected.inpainting,
            path=folder,
            source=origin or f"file:{source.name}",
            checkpoint=file_name,
            sha256=digest,
            config=label,
        )
        write_manifest(staging, manifest)
        if folder.exists():
            raise conflict("model_exists", f"A model named {model_name} appeared meanwhile; import it again.")
        staging.rename(folder)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise invalid(
                "disk_full",
                "The model volume is full; free some space (delete a model) and import again.",
            ) from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "imported checkpoint",
        extra={"model": model_name, "family": detected.family, "config": label, "sha256": digest},
    )
    return manifest


_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "F32": 4,
    "I32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


# The single-file layout's prefixes, by the diffusers component they become.
_COMPONENT_PREFIXES = (
    ("model.diffusion_model.", "unet"),
    ("first_stage_model.", "vae"),
    ("cond_stage_model.", "text_encoder"),
    ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"),
)


def component_bytes(path: Path, element_size: int) -> dict[str, int]:
    """Bytes per component once the floating-point tensors are cast to `element_size` bytes each."""
    out: dict[str, int] = {}
    for key, info in read_header(path).items():
        count = 1
        for dim in info.shape:
            count *= dim
        size = element_size if info.dtype.startswith(("F", "BF")) else _DTYPE_BYTES.get(info.dtype, 4)
        component = next((name for prefix, name in _COMPONENT_PREFIXES if key.startswith(prefix)), "other")
        out[component] = out.get(component, 0) + count * size
    return out


def short_hash(sha256: str) -> str:
    """A1111's short model hash (AutoV2): the first ten hex digits of the file's sha256."""
    return sha256[:SHORT_HASH_LEN]


def load_pipeline(manifest: ModelManifest, pipeline_class: Any, **kwargs: Any) -> Any:
    """The diffusers pipeline of an imported checkpoint, offline, against the folder's own configs."""
    if not manifest.checkpoint:
        raise ValueError(f"{manifest.name} is a diffusers folder, not a single-file checkpoint")
    file = manifest.path / manifest.checkpoint
    if manifest.family in ("sdxl", "sdxl-turbo") and "text_encoder_2" not in kwargs:
        kwargs["text_encoder_2"] = _open_clip_encoder(
            file, manifest.path / "text_encoder_2", kwargs.get("torch_dtype")
        )
    pipe = pipeline_class.from_single_file(
        str(file), config=str(manifest.path), local_files_only=True, **kwargs
    )
    own_weights(pipe)
    return pipe


def _open_clip_encoder(file: Path, config_dir: Path, dtype: Any) -> Any:
    """SDXL's second text encoder, converted from OpenCLIP's layout by diffusers' own converter.

    diffusers' loader picks the converter by comparing widths, and takes CLIP ViT-L's when both
    encoders are equally wide (as in a small SDXL-architecture model); naming the layout avoids that.
    """
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    prefix = "conditioner.embedders.1.model."
    with safe_open(str(file), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}
    # A config folder on the model volume, read offline: never a hub download.
    config = CLIPTextConfig.from_pretrained(str(config_dir), local_files_only=True)  # nosec B615
    model = CLIPTextModelWithProjection(config)
    converted = convert_open_clip_checkpoint(model, state, prefix=prefix)  # type: ignore[no-untyped-call]
    model.load_state_dict(converted, strict=True)
    if dtype is not None:
        model.to(dtype)
    model.requires_grad_(False)
    model.train(False)
    return model


def own_weights(pipe: Any) -> None:
    """Moves every weight out of the file's memory map into memory of its own.

    Tensors read from a single file sit at the file's byte offsets; on a CPU the kernels then take
    other code paths (seen here: the UNet's output off by 1e-6), so the same weights would not give
    the same pixels as their diffusers folder. A fresh allocation, as a folder load makes, does; it also
    lets go of the mapping.
    """
    import torch

    with torch.no_grad():
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                for tensor in [*component.parameters(), *component.buffers()]:
                    tensor.data = tensor.data.clone()


DROP_IN_PREFIX = "checkpoints:"


@dataclass
class SyncResult:
    imported: list[str]
    removed: list[str]
    refused: dict[str, str]  # file name → the sentence saying why


def sync_checkpoints(models_dir: Path, known_refusals: dict[str, float] | None = None) -> SyncResult:
    """Makes `models/checkpoints/` and the installed models agree, as A1111's folder does.

    A `.safetensors` file dropped there is imported (hard-linked: no second copy on the volume) as a
    model named from its file name; a model imported that way whose file is gone is removed (renamed to
    a dot folder first, so discovery never sees it half deleted). A file that cannot be imported is
    reported once per modification time (`known_refusals` carries what was reported between calls).
    Only a process that may write the volume calls this: locally the worker; in a cluster the model
    manager's job.
    """
    result = SyncResult(imported=[], removed=[], refused={})
    drop_dir = models_dir / CHECKPOINTS_FOLDER
    present: dict[str, Path] = {}
    if drop_dir.is_dir():
        for file in sorted(drop_dir.iterdir()):
            if file.is_file() and not file.name.startswith("."):
                present[file.name] = file
    try:
        installed = discover_models(models_dir)
    except Exception:  # an empty volume: everything in checkpoints/ is new
        installed = {}
    by_source = {
        m.source[len(DROP_IN_PREFIX) :]: m for m in installed.values() if m.source.startswith(DROP_IN_PREFIX)
    }
    for file_name, manifest in by_source.items():
        dropped = present.get(file_name)
        current = manifest.path / (manifest.checkpoint or "")
        if dropped is not None and current.is_file() and _same_file(dropped, current):
            continue
        trash = models_dir / f".removed-{manifest.name}-{uuid.uuid4().hex[:8]}"
        manifest.path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        result.removed.append(manifest.name)
        log.info("removed model whose checkpoint left checkpoints/", extra={"model": manifest.name})
    for file_name, file in present.items():
        if file_name in by_source and by_source[file_name].name not in result.removed:
            continue
        if not file_name.lower().endswith((".safetensors", *PICKLE_SUFFIXES)):
            continue
        mtime = file.stat().st_mtime
        if known_refusals is not None and known_refusals.get(file_name) == mtime:
            continue
        try:
            manifest = import_checkpoint(file, models_dir, origin=f"{DROP_IN_PREFIX}{file_name}")
        except EaselError as exc:
            result.refused[file_name] = exc.message
            if known_refusals is not None:
                known_refusals[file_name] = mtime
            log.warning("cannot import %s from checkpoints/: %s", file_name, exc.message)
            continue
        result.imported.append(manifest.name)
    return result


def _same_file(a: Path, b: Path) -> bool:
    """The drop-in file is still the one imported (a hard link), or a copy of the same size and time."""
    try:
        if os.path.samefile(a, b):
            return True
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return sa.st_size == sb.st_size and int(sa.st_mtime) <= int(sb.st_mtime)
