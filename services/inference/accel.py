"""Making a loaded pipeline fast: channels-last, fused QKV, and a compiled UNet with static shapes.

`torch.compile` specialises on input shapes, and in `reduce-overhead` mode records CUDA graphs per
shape, so the compiled UNet serves a fixed set of shapes: each warmed size at the batch sizes in
`buckets` (a batch is padded up to the next bucket, and split above the largest). Every shape is
compiled and run once when the model loads ("warm-up"), so no job pays for a compile; any other
shape (an unusual size, guidance off) runs the eager UNet, same weights, no wait.

Inductor keeps what it compiled (FX graphs, autograd graphs, Triton kernels, autotuning results)
under `TORCHINDUCTOR_CACHE_DIR`; pointing that at the model volume lets a restarted worker skip the
compiling and only trace and record, which is what makes a restart fast.

torch is imported where it is used: the job API imports the engine (and this module) to validate
requests, without the generation stack.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_BUCKETS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Accel:
    """How the engine prepares a model; the defaults are plain eager execution."""

    compile: str = "none"
    channels_last: bool = False
    fuse_qkv: bool = False
    # Also compile the VAE decoder (one image at a time, as the engine decodes: one shape per size).
    compile_vae: bool = False
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    # Sizes compiled besides each model's default size, as (width, height).
    sizes: tuple[tuple[int, int], ...] = ()
    # Inductor's on-disk caches; None leaves torch's default (a folder under /tmp).
    cache_dir: Path | None = None
    # Denoising steps of each warm-up call: CUDA graph trees record on the second call of a shape
    # and replay from the third, so three covers it within one call.
    warm_steps: int = 3

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if not self.buckets or any(b < 1 for b in self.buckets):
            raise ValueError("buckets must be batch sizes of 1 or more")
        # chunks() walks them in order.
        object.__setattr__(self, "buckets", tuple(sorted(set(self.buckets))))

    @property
    def compiled(self) -> bool:
        return self.compile != "none"

    @property
    def enabled(self) -> bool:
        return self.compiled or self.channels_last or self.fuse_qkv

    def describe(self) -> str:
        parts = [f"compile={self.compile}"]
        if self.compiled:
            parts.append("buckets=" + ",".join(map(str, self.buckets)))
            parts.append(f"compile_vae={self.compile_vae}")
        parts += [f"channels_last={self.channels_last}", f"fuse_qkv={self.fuse_qkv}"]
        return " ".join(parts)

    @classmethod
    def resolve(
        cls,
        device: str,
        compile: str = "auto",
        channels_last: bool | None = None,
        fuse_qkv: bool | None = None,
        compile_vae: bool = False,
        buckets: tuple[int, ...] = DEFAULT_BUCKETS,
        sizes: tuple[tuple[int, int], ...] = (),
        cache_dir: Path | None = None,
    ) -> Accel:
        """`auto` settings: the GPU recipe on CUDA (compiled with CUDA graphs, channels-last, fused
        QKV); plain eager on a CPU, where compiling costs half a minute per shape at every start
        without a cache and the bit-exact row-wise batching matters more."""
        gpu = device.startswith("cuda")
        mode = ("reduce-overhead" if gpu else "none") if compile == "auto" else compile
        return cls(
            compile=mode,
            channels_last=gpu if channels_last is None else channels_last,
            fuse_qkv=gpu if fuse_qkv is None else fuse_qkv,
            compile_vae=compile_vae,
            buckets=buckets,
            sizes=sizes,
            cache_dir=cache_dir,
        )


def parse_buckets(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); raises ValueError naming what is wrong."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or not all(v.isdigit() and 1 <= int(v) <= 64 for v in values):
        raise ValueError("use batch sizes from 1 to 64 separated by commas, e.g. 1,2,4,8,16")
    return tuple(sorted({int(v) for v in values}))


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'512x512,768x512' -> ((512, 512), (768, 512)); empty text gives ()."""
    sizes = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)x(\d+)", part)
        if match is None or int(match[1]) % 8 or int(match[2]) % 8:
            raise ValueError(f"{part!r} is not WIDTHxHEIGHT in multiples of 8, e.g. 512x512,768x512")
        sizes.append((int(match[1]), int(match[2])))
    return tuple(sizes)


def chunks(n: int, buckets: tuple[int, ...]) -> list[tuple[int, int]]:
    """Splits n images into (real, padded) chunks, each padded up to a bucket size."""
    largest = buckets[-1]
    out: list[tuple[int, int]] = []
    while n > largest:
        out.append((largest, largest))
        n -= largest
    if n:
        out.append((n, next(b for b in buckets if b >= n)))
    return out


def cache_folder(root: Path, device: str) -> Path:
    """One folder per torch version and device model: kernels built for one do not fit the other."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        name = torch.cuda.get_device_name(index)
        major, minor = torch.cuda.get_device_capability(index)
        what = f"{name}-sm{major}{minor}"
    else:
        what = "cpu"
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", f"torch-{torch.__version__}-{what}")
    return root / slug


def use_cache(root: Path, device: str) -> Path:
    """Points inductor's caches at `root` (on the model volume); returns the folder used."""
    folder = cache_folder(root, device)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    # On by default in current torch; set so an older default cannot silently turn them off.
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return folder


def cache_counters() -> dict[str, int]:
    """Inductor's FX-graph cache hits and misses so far in this process."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"hits": int(inductor["fxgraph_cache_hit"]), "misses": int(inductor["fxgraph_cache_miss"])}


@dataclass
class FastPath:
    """A loaded model's compiled denoiser (UNet or transformer) and the shapes it has been warmed for."""

    eager: Any
    compiled: Any
    buckets: tuple[int, ...]
    # The VAE's compiled decoder, when Accel.compile_vae.
    decoder: Any = None
    # (width, height) warmed at every bucket, with classifier-free guidance.
    sizes: set[tuple[int, int]] = field(default_factory=set)
    warm_seconds: float = 0.0
    # The pipeline attribute holding the denoiser, and the stand-in class that calls the compiled one.
    denoiser: str = "unet"
    runner_class: Any = None
    runner: Any = field(init=False)

    def __post_init__(self) -> None:
        self.runner = (self.runner_class or CompiledUNet)(self.compiled, self.eager)

    def serves(self, width: int, height: int, guided: bool) -> bool:
        # Warmed with classifier-free guidance only: guidance 1 or below halves the UNet's batch,
        # a shape of its own, and such jobs run eager rather than compile on a user's time.
        return guided and (width, height) in self.sizes


def prepare(pipe: Any, accel: Accel, denoiser: str = "unet", runner: Any = None) -> FastPath | None:
    """Applies `accel` to a freshly loaded pipeline; returns the compiled path, if compiling.

    `denoiser` is the pipeline attribute holding the denoiser ("unet", or "transformer" for SD 3.5
    and Flux); `runner` the class standing in for it during a compiled call (CompiledUNet if None).
    """
    import torch

    model = getattr(pipe, denoiser)
    if accel.channels_last:
        # Convolutions run in NHWC on tensor cores; the UNet and VAE are mostly convolutions (a
        # transformer has none, so only its VAE changes).
        if denoiser == "unet":
            model.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if accel.fuse_qkv:
        # One matrix multiply for Q, K and V instead of three (same weights, concatenated).
        try:
            fuse = getattr(pipe, "fuse_qkv_projections", None) or model.fuse_qkv_projections
            fuse()
        except (AttributeError, ValueError, RuntimeError) as exc:
            log.warning("fused QKV not applied: %s", exc)
    if not accel.compiled:
        return None
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    # Every bucket and size is one more specialisation of the same code.
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)
    # 1x1 convolutions as matrix multiplies: the faster kernels on GPUs (the diffusers recipe).
    inductor_config.conv_1x1_as_mm = True
    compiled = torch.compile(model, mode=accel.compile, fullgraph=True, dynamic=False)
    decoder = None
    if accel.compile_vae:
        # The decoder module, not vae.decode: the engine's timing hooks sit on the module's wrapper,
        # outside the compiled code.
        decoder = torch.compile(pipe.vae.decoder, mode=accel.compile, fullgraph=True, dynamic=False)
    return FastPath(
        eager=model,
        compiled=compiled,
        buckets=accel.buckets,
        decoder=decoder,
        denoiser=denoiser,
        runner_class=runner,
    )


class CompiledUNet:
    """Stands in for `pipe.unet` during a call: forward goes to the compiled module, everything else
    (config, dtype, device) to the eager one.

    The timestep becomes a float32 tensor on the sample's device: samplers hand it over as int64
    or float32, on the CPU or the GPU, and each variant would be another compiled graph. The UNet
    turns it into float32 first thing anyway, so the result is the same.
    """

    def __init__(self, compiled: Any, eager: Any) -> None:
        self._compiled = compiled
        self._eager = eager

    def __call__(self, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(sample.device, torch.float32)
        return self._compiled(sample, timestep, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._eager, name)


@contextlib.contextmanager
def installed(pipe: Any, fast: FastPath) -> Iterator[None]:
    """`pipe` runs on the compiled parts for the duration. The task pipelines share one denoiser and
    one VAE, and other shapes must keep running eager, so they are swapped in per call (the engine
    runs one call at a time)."""
    before = getattr(pipe, fast.denoiser)
    vae = pipe.vae
    decoder = vae.decoder
    # Past the pipeline's __setattr__, which would rewrite its config to name the stand-in's class.
    object.__setattr__(pipe, fast.denoiser, fast.runner)
    if fast.decoder is not None:
        vae.decoder = fast.decoder
    try:
        yield
    finally:
        object.__setattr__(pipe, fast.denoiser, before)
        vae.decoder = decoder


class WarmTimer:
    """Measures a warm-up and the compile cache's part in it, for the log and the bench."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.before = cache_counters()

    def done(self) -> tuple[float, dict[str, int]]:
        after = cache_counters()
        return time.perf_counter() - self.started, {k: after[k] - self.before[k] for k in after}
