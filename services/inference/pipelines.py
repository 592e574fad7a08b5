"""Loading diffusers pipelines from the model volume: devices, precisions, weight files, memory.

What is the same for every family; the pipeline classes and load arguments come from the model's
Family (engine/family.py). Everything here imports torch and diffusers; the engine imports this
module only when it first needs a model, so the job API can use the request types and validation
without them.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .models import ModelManifest

if TYPE_CHECKING:
    from .engine.family import LoadedModel

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _dtype_kwarg() -> str:
    import diffusers
    from packaging.version import Version

    # diffusers 0.42 renamed torch_dtype to dtype (the old name warns); older ones know only torch_dtype.
    return "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"


_DTYPE_KWARG = _dtype_kwarg()


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


def estimate_components(manifest: ModelManifest, dtype: torch.dtype) -> dict[str, int]:
    """A guess, before loading, of the bytes each component will take in `dtype`, from its files."""
    target = torch.empty((), dtype=dtype).element_size()
    if manifest.checkpoint:
        from .singlefile import component_bytes

        return component_bytes(manifest.path / manifest.checkpoint, target)
    out: dict[str, int] = {}
    for sub in sorted(p for p in manifest.path.iterdir() if p.is_dir()):
        files = [p for p in sub.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)]
        half = [p for p in files if ".fp16." in p.name or ".bf16." in p.name]
        full = [p for p in files if p not in half]
        if full:
            # Prefer safetensors when both formats are present, as the loader does.
            chosen = [p for p in full if p.name.endswith(".safetensors")] or full
            out[sub.name] = int(sum(p.stat().st_size for p in chosen) * target / 4)
        elif half:
            chosen = [p for p in half if p.name.endswith(".safetensors")] or half
            out[sub.name] = int(sum(p.stat().st_size for p in chosen) * target / 2)
    return out


def estimate_bytes(manifest: ModelManifest, dtype: torch.dtype) -> int:
    """A guess, before loading, of the bytes a model will take in `dtype`, from its weight files."""
    return sum(estimate_components(manifest, dtype).values())


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


def load_pipeline(manifest: ModelManifest, device: str, dtype: torch.dtype, placement: str = "device") -> Any:
    """The model's base pipeline on `device`; raises RuntimeError with the most telling failure.

    With an offload `placement` (engine/budget.py) the weights stay in host memory and diffusers'
    hooks move them to `device` while they run.
    """
    from .engine.family import family_for

    family = family_for(manifest)
    cls = family.pipeline_class(manifest, family.base_task(manifest))
    extra = family.load_kwargs(manifest)
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
        if placement == "model-offload":
            pipe.enable_model_cpu_offload(device=device)
            return pipe
        if placement == "sequential-offload":
            pipe.enable_sequential_cpu_offload(device=device)
            return pipe
        return pipe.to(device)
    # A missing variant is expected; a broken file is what the user needs to hear about.
    telling = [f for f in failures if "variant" not in f.lower()] or failures
    raise RuntimeError(telling[0] if telling else "no loadable weights")


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


def release(loaded: LoadedModel) -> None:
    """Drops a model's pipelines so its memory can be freed (and returned to the GPU)."""
    loaded.pipes.clear()
    loaded.fast = None
    loaded.base = None
    if loaded.device.startswith("cuda"):
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def folder_exists(path: Path) -> bool:
    return (path / "model_index.json").is_file()
