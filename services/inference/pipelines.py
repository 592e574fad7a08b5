"""Loading diffusers pipelines from the model volume and running one batch through them.

Everything here imports torch and diffusers; `engine.py` imports this module only when it first
needs a model, so the job API can use the request types and validation without them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .models import ModelManifest

log = logging.getLogger(__name__)

# Pipeline class per family and task; upscale and variation are img2img passes.
_CLASSES: dict[bool, dict[str, str]] = {
    False: {
        "txt2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
    },
    True: {
        "txt2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    },
}
TASK_OF_KIND = {
    "txt2img": "txt2img",
    "img2img": "img2img",
    "upscale": "img2img",
    "variation": "img2img",
    "inpaint": "inpaint",
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _dtype_kwarg() -> str:
    import diffusers
    from packaging.version import Version

    # diffusers 0.42 renamed torch_dtype to dtype (the old name warns); older ones know only torch_dtype.
    return "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"


_DTYPE_KWARG = _dtype_kwarg()


def pipeline_class(manifest: ModelManifest, task: str) -> type[Any]:
    import diffusers

    cls: type[Any] = getattr(diffusers, _CLASSES[manifest.is_sdxl][task])
    return cls


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        # Half precision halves memory and is what the released checkpoints are tuned in; CPUs have
        # no fast half kernels, so they stay in float32.
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def load_attempts(dtype: torch.dtype) -> list[dict[str, Any]]:
    """from_pretrained variants to try in order: the precision we run in first, then what exists."""
    plain: list[dict[str, Any]] = [
        {"variant": None, "use_safetensors": True},
        {"variant": None, "use_safetensors": None},
    ]
    if dtype == torch.float16:
        return [{"variant": "fp16", "use_safetensors": True}, *plain]
    if dtype == torch.bfloat16:
        return [
            {"variant": "bf16", "use_safetensors": True},
            {"variant": "fp16", "use_safetensors": True},
            *plain,
        ]
    # A volume filled with fp16 files only still loads on a CPU, upcast to float32.
    return [*plain, {"variant": "fp16", "use_safetensors": True}]


def module_bytes(pipe: Any) -> int:
    """Bytes held by a pipeline's weights (parameters and buffers)."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                total += tensor.numel() * tensor.element_size()
    return total


def estimate_bytes(manifest: ModelManifest, dtype: torch.dtype) -> int:
    """A guess, before loading, of the bytes a model will take in `dtype`, from its weight files."""
    target = torch.empty((), dtype=dtype).element_size()
    if manifest.checkpoint:
        from .singlefile import weights_bytes

        return weights_bytes(manifest.path / manifest.checkpoint, target)
    total = 0.0
    for sub in sorted(p for p in manifest.path.iterdir() if p.is_dir()):
        files = [p for p in sub.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)]
        half = [p for p in files if ".fp16." in p.name or ".bf16." in p.name]
        full = [p for p in files if p not in half]
        if full:
            # Prefer safetensors when both formats are present, as the loader does.
            chosen = [p for p in full if p.name.endswith(".safetensors")] or full
            total += sum(p.stat().st_size for p in chosen) * target / 4
        elif half:
            chosen = [p for p in half if p.name.endswith(".safetensors")] or half
            total += sum(p.stat().st_size for p in chosen) * target / 2
    return int(total)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        sign in text
        for sign in (
            "out of memory",
            "can't allocate memory",
            "cudnn_status_alloc_failed",
            "cublas_status_alloc_failed",
        )
    )


def load_pipeline(manifest: ModelManifest, device: str, dtype: torch.dtype) -> Any:
    """The model's base pipeline on `device`; raises RuntimeError with the most telling failure."""
    task = "inpaint" if manifest.inpainting else "txt2img"
    cls = pipeline_class(manifest, task)
    extra: dict[str, Any] = (
        {"add_watermarker": False}
        if manifest.is_sdxl
        else {
            # There is no safety checker in the bundled models and Easel does not run one; not loading
            # it also saves 1.2 GB on checkpoints that ship it.
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
    )
    failures: list[str] = []
    for attempt in [{}] if manifest.checkpoint else load_attempts(dtype):
        try:
            if manifest.checkpoint:
                # An imported single-file checkpoint, loaded against the configs beside it, offline.
                from .singlefile import load_pipeline as load_single_file

                pipe = load_single_file(manifest, cls, torch_dtype=dtype, **extra)
            else:
                pipe = cls.from_pretrained(
                    str(manifest.path), local_files_only=True, **{_DTYPE_KWARG: dtype}, **attempt, **extra
                )
        except Exception as exc:  # diffusers raises many types for missing or broken files
            if is_out_of_memory(exc):
                raise
            log.info("loading %s with %s failed: %s", manifest.name, attempt, _short(exc))
            failures.append(_short(exc))
            continue
        log.info("loaded %s with %s", manifest.name, attempt)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)
    # A missing variant is expected; a broken file is what the user needs to hear about.
    telling = [f for f in failures if "variant" not in f.lower()] or failures
    raise RuntimeError(telling[0] if telling else "no loadable weights")


@dataclass
class LoadedModel:
    manifest: ModelManifest
    base: Any
    device: str
    dtype: torch.dtype
    nbytes: int
    scheduler_config: Any
    pipes: dict[str, Any] = field(default_factory=dict)
    # The compiled UNet and the shapes it serves (accel.FastPath), once warmed.
    fast: Any = None

    def pipe(self, task: str) -> Any:
        """The pipeline for `task`, sharing the base pipeline's weights (built once, on first use)."""
        if task not in self.pipes:
            if task == ("inpaint" if self.manifest.inpainting else "txt2img"):
                self.pipes[task] = self.base
            else:
                cls = pipeline_class(self.manifest, task)
                # Built from the base pipeline's components (and config flags), so every task
                # shares one copy of the weights. Not from_pipe: it re-casts the shared weights.
                params = inspect.signature(cls.__init__).parameters
                kwargs: dict[str, Any] = {k: v for k, v in self.base.components.items() if k in params}
                kwargs.update({k: v for k, v in self.base.config.items() if k in params and k not in kwargs})
                if self.manifest.is_sdxl:
                    kwargs["add_watermarker"] = False
                pipe = cls(**kwargs)
                pipe.set_progress_bar_config(disable=True)
                self.pipes[task] = pipe
        return self.pipes[task]


def _row(value: Any, n: int, i: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
        # A fresh copy, so row i sits in memory exactly as it would in a batch of one.
        return value[i : i + 1].clone()
    if isinstance(value, dict):
        return {k: _row(v, n, i) for k, v in value.items()}
    return value


def make_row_wise(unet: Any) -> None:
    """Runs `unet` one batch row at a time, so an image comes out bit-identical in any batch.

    Matrix kernels pick their blocking by batch size, so the same row computed in batches of
    different sizes differs in the last bits, and the sampler amplifies that into visible pixels.
    Rows of one always take the same kernels. Costs the batching speed-up, which a CPU barely has.
    """
    forward = unet.forward

    @functools.wraps(forward)
    def row_wise(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n = sample.shape[0]
        if n == 1:
            return forward(sample.clone(), *args, **kwargs)
        outs = [
            forward(
                _row(sample, n, i),
                *(_row(a, n, i) for a in args),
                **{k: _row(v, n, i) for k, v in kwargs.items()},
            )
            for i in range(n)
        ]
        if isinstance(outs[0], tuple):
            return (torch.cat([o[0] for o in outs]), *outs[0][1:])
        return type(outs[0])(sample=torch.cat([o.sample for o in outs]))

    unet.forward = row_wise


def load_model(
    manifest: ModelManifest, device: str, dtype: torch.dtype, batch_invariant: bool = False
) -> LoadedModel:
    started = time.perf_counter()
    base = load_pipeline(manifest, device, dtype)
    # Decoding one image at a time keeps batches from multiplying the VAE's large activations,
    # and keeps each image's pixels independent of its batch.
    base.vae.enable_slicing()
    if batch_invariant:
        make_row_wise(base.unet)
    nbytes = module_bytes(base)
    log.info(
        "model %s ready on %s in %.2fs (%.1f MiB of weights)",
        manifest.name,
        device,
        time.perf_counter() - started,
        nbytes / 2**20,
    )
    return LoadedModel(
        manifest=manifest,
        base=base,
        device=device,
        dtype=dtype,
        nbytes=nbytes,
        scheduler_config=base.scheduler.config,
    )


def release(loaded: LoadedModel) -> None:
    loaded.pipes.clear()
    loaded.fast = None
    loaded.base = None
    if loaded.device.startswith("cuda"):
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def folder_exists(path: Path) -> bool:
    return (path / "model_index.json").is_file()
