"""GPU throughput: the plain diffusers pipeline next to the worker's own execution path, one run.

Full mode (a CUDA device): builds SD 1.5-sized and SDXL-sized models with random weights into
`--models-dir` (bench/_models.py; nothing is downloaded; kept for the next run), then per model:

  1. plain pipeline, one request at a time (`--singles` requests), with the Euler scheduler the
     worker's jobs here use,
  2. plain pipeline, `--burst` prompts in one call,
  3. per worker variant (`--variants`; each is an `accel.Accel`, how the engine prepares a model:
     compile mode, CUDA graphs, channels-last, fused QKV, batch buckets), the worker's path one job
     at a time: the worker's Engine, loaded and warmed (compiled) on a GenerationThread and running
     `Engine.generate` there as the worker does, plus `encode_png` for each image as the worker's
     `_deliver` does (the gallery upload is not included),
  4. the same variant for a queue of `--queue` jobs submitted at once, run the way the worker's
     runner runs it: fetched `--batch-max` at a time with at most BATCHES_IN_HAND batches in hand,
     grouped by `Engine.compatible_key`, one `Engine.generate` per group holding the GPU, and the
     PNGs of batch N encoded in background threads while batch N+1 generates; a job's latency runs
     from the queue's start to its PNGs being ready,
  5. a restarted worker (`--restart`): a fresh process builds the Engine as the worker does, with
     the same compile cache (`--compile-cache`, default <models-dir>/.compile-cache like the
     worker's), loads and warms the model and makes one image; the time to that image is the
     restart figure.

It prints images/s, latency p50/p95, peak GPU memory (process RSS on a CPU), each row's images/s
against both plain baselines, the fraction of the UNet FLOP floor, and how far each variant's
images are from the plain pipeline's for the same prompt and seed (max and mean absolute difference
per pixel channel on 0-255; over ACCURACY_MAX_PX or ACCURACY_MEAN_PX is marked OVER and the exit
status is 1). The floor is images x steps x (UNet TFLOP of one guided step, i.e. batch 2 for
classifier-free guidance) / seconds / peak TFLOP/s. The per-step figure is `--sd15-step-tflop`
(1.61 at 512x512, scaled by pixel count to other sizes) for SD 1.5 and counted on the meta device
with torch's FlopCounterMode for the others unless given (`--sdxl-step-tflop`); text encoders and
VAE are not counted, so 100% is out of reach. A second table gives each variant's load + warm-up
time and the compile cache's hits and misses during it, and the last lines check the issue's goals.

For a lent GPU with minutes to spare (bench/gpu_check.sh): `--deadline` is a time guard (a variant
whose estimated time does not fit before it is skipped, with a note in the report; the restart
probe is killed there), `--json` writes the figures after every phase, and `--render` makes the
report from such files afterwards, also when the run itself was killed.

Tiny mode (`--tiny`, or automatic without CUDA): the bundled `tiny-sd` from `--models-dir` (built
into a temporary folder when missing) at 64x64 and small counts, so the script runs in the tests;
its compile cache is a temporary folder unless `--compile-cache` is given.

    .venv/bin/python bench/gpu_throughput.py --models bench-sd15   # on a GPU machine: full mode
    .venv/bin/python bench/gpu_throughput.py --tiny --steps 4      # anywhere, a few minutes
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, machine, now_utc, pct, table, versions

if TYPE_CHECKING:
    from services.inference.accel import Accel
    from services.inference.engine import GenerationRequest

H100_BF16_TFLOPS = 787.0
SD15_STEP_TFLOP_512 = 1.61

VARIANTS: dict[str, str] = {
    "eager": "no compile, no channels-last, no fused QKV: Accel()",
    "worker-default": "what the worker runs on this device by default: Accel.resolve(device), compile cache",
    "compiled": "torch.compile(--compile-mode), channels-last and fused QKV on CUDA, --buckets",
    "channels-last": "channels-last alone",
    "fused-qkv": "fused QKV projections alone",
    "compiled-no-cudagraphs": "as compiled, in mode max-autotune-no-cudagraphs on CUDA (default on a CPU)",
    "compiled-vae": "as compiled, with the VAE decoder compiled too (EASEL_WORKER_COMPILE_VAE)",
}
# An image counts as the plain pipeline's when no pixel channel (0-255) is further off than this and
# the mean difference is at most ACCURACY_MEAN_PX. Kernels that sum in another order (fp16,
# compiled, channels-last, another batch size) move a pixel by a few levels after 30 steps; a wrong
# computation moves most of them by tens.
ACCURACY_MAX_PX = 8
ACCURACY_MEAN_PX = 1.0
# The (prompt, seed) index of the images compared: the first single job, and the first job of the
# queue (batched, and padded to a bucket on the compiled path).
SINGLE_CHECK = 0
QUEUE_FIRST = 10_000
GOAL_RATE = 9.0
GOAL_SINGLE_S = 0.2
GOAL_RESTART_S = 60.0
# The time guard starts no restart probe with less than this left before its deadline.
RESTART_MIN_S = 20.0


@dataclass
class Row:
    model: str
    path: str
    images: int
    seconds: float
    latencies: list[float]
    memory_gib: float
    variant: str | None = None  # None: a plain pipeline row
    # Against the plain pipeline's image for the same prompt and seed (0-255 per channel).
    max_diff: float | None = None
    mean_diff: float | None = None

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")  # nan: failed

    @property
    def over(self) -> bool:
        return self.max_diff is not None and (
            self.max_diff > ACCURACY_MAX_PX or (self.mean_diff or 0.0) > ACCURACY_MEAN_PX
        )


@dataclass
class Plan:
    name: str
    size: int
    steps: int
    step_tflop: float
    tflop_source: str


@dataclass(frozen=True)
class Setup:
    """What the variants of one model's run share (and what a restart probe is told)."""

    device: str
    buckets: tuple[int, ...]
    # Sizes compiled besides the model's default size (the run's size when it is another).
    sizes: tuple[tuple[int, int], ...]
    cache_dir: Path
    compile_mode: str


@dataclass
class Warm:
    """One variant's `engine.load`: loading, preparing and (when compiled) warming every bucket."""

    model: str
    variant: str
    settings: str
    load_s: float
    warm_s: float | None
    hits: int
    misses: int
    serves: str


@dataclass
class Restart:
    model: str
    variant: str
    wall_s: float = float("nan")  # the parent's Popen to the probe's JSON line
    to_first_image_s: float = float("nan")  # the probe's main() to its first image's PNG
    load_s: float = float("nan")
    hits: int = 0
    misses: int = 0
    compiled: bool = False
    error: str | None = None


@dataclass
class Results:
    rows: list[Row]
    plans: dict[str, Plan]
    info: dict[str, Any]
    warms: list[Warm] = field(default_factory=list)
    restarts: dict[str, Restart] = field(default_factory=dict)
    # Per model: why its restart probe did not run.
    skipped_restart: dict[str, str] = field(default_factory=dict)
    # What the time guard (`--deadline`) skipped, and other lines the report must carry.
    notes: list[str] = field(default_factory=list)


@dataclass
class Guard:
    """The time guard of `--deadline`: a phase starts only when its estimate fits before it.

    A phase cannot be stopped halfway (a compile runs to its end), so each is estimated from what
    this run has measured already: the plain pipeline's load time, its single-image latency and its
    batch rate stand for an engine's load and jobs, plus `compile_per_shape_s` for every shape a
    compiled variant warms (an over-estimate when the compile cache is warm). The restart probe is
    killed at the deadline instead, and reported as such.
    """

    deadline: float | None
    compile_per_shape_s: float

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.time()

    def estimate(
        self,
        plain: list[Row],
        warmup: int,
        counts: dict[str, int],
        load_s: float,
        accel: Accel,
        sizes: int,
    ) -> float:
        if self.deadline is None:
            return 0.0
        single = next(r for r in plain if r.path.endswith("1 at a time"))
        burst = next(r for r in plain if r.path.endswith("at once"))
        per_image = pct(single.latencies, 0.5)
        rate = burst.rate if math.isfinite(burst.rate) and burst.rate > 0 else 1 / per_image
        jobs = (warmup + counts["singles"]) * per_image
        jobs += (warmup * counts["batch_max"] + counts["queue"]) / rate
        shapes = len(accel.buckets) * sizes * (2 if accel.compile_vae else 1)
        return load_s + jobs + (self.compile_per_shape_s * shapes if accel.compiled else 0.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="bundled tiny-sd at 64x64 (automatic without CUDA)"
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="model volume (default: ./models)")
    parser.add_argument(
        "--models", default="bench-sd15,bench-sdxl", help="full mode: models to build and measure"
    )
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (30; tiny: 4)")
    parser.add_argument("--size", type=int, default=None, help="image side (model default; tiny: 64)")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--singles", type=int, default=None, help="one-at-a-time requests (8; tiny: 3)")
    parser.add_argument("--burst", type=int, default=None, help="prompts in one plain call (16; tiny: 4)")
    parser.add_argument("--queue", type=int, default=None, help="jobs in the worker queue (64; tiny: 8)")
    parser.add_argument(
        "--batch-max",
        type=int,
        default=None,
        help="the worker's fetch size, EASEL_WORKER_BATCH_MAX (16 on CUDA; tiny: the worker's default)",
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="worker variants to measure, comma-separated, from: "
        + "; ".join(f"{k} ({v})" for k, v in VARIANTS.items())
        + ". Default eager,worker-default (without CUDA: eager,compiled)",
    )
    parser.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        default=None,
        help="torch.compile mode of the compiled variant (reduce-overhead on CUDA, default on a CPU)",
    )
    parser.add_argument(
        "--buckets",
        default=None,
        help="batch sizes the compiled variants warm, as EASEL_WORKER_COMPILE_BUCKETS (CUDA: 1,2,4,8,16; "
        "a CPU: 1 and --batch-max); fewer buckets, shorter cold compile",
    )
    parser.add_argument(
        "--compile-cache",
        type=Path,
        default=None,
        help="inductor's cache folder (default: <models-dir>/.compile-cache, the worker's; tiny: temporary)",
    )
    parser.add_argument(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure a restarted worker's first image in a fresh process (worker-default on CUDA, "
        "compiled on a CPU; needs that variant measured first)",
    )
    parser.add_argument(
        "--restart-timeout", type=float, default=300.0, help="seconds before the probe is killed"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before each measurement")
    parser.add_argument(
        "--dtype", default="auto", help="auto (the worker's default), float16, bfloat16, float32"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (tiny mode: 1, steadier on a shared machine; else torch's default)",
    )
    parser.add_argument("--sd15-step-tflop", type=float, default=SD15_STEP_TFLOP_512)
    parser.add_argument("--sdxl-step-tflop", type=float, default=None, help="default: counted")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS, help="accelerator peak")
    parser.add_argument(
        "--compile",
        choices=("none", "default", "reduce-overhead", "max-autotune"),
        default="none",
        help="also measure the plain pipeline with torch.compile(unet, mode=...) (CUDA only)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="time guard: a Unix time (seconds) after which nothing more starts; a variant whose "
        "estimated time does not fit before it is skipped, and said so (bench/gpu_check.sh sets it)",
    )
    parser.add_argument(
        "--compile-estimate-s",
        type=float,
        default=None,
        help="the time guard's estimate of one cold compile per shape (CUDA 130 s, after the issue's "
        "93-121 s on an H100; a CPU 60 s)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write the figures here, after every phase (for --render)"
    )
    parser.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print the tables at the end (--no-report: only --json, for a later --render)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the tables of one or more --json files of earlier runs as one report, and exit "
        "(status 1 when a row is over the accuracy tolerance); with --out, write them there too",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="with --render: write gpu_check.md and gpu_check.json here"
    )
    # The restart probe: what the parent runs in a fresh process (`--restart`), not for direct use.
    parser.add_argument("--restart-probe", metavar="MODEL", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-variant", default="worker-default", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variants is not None:
        names = _names(args.variants)
        unknown = [n for n in names if n not in VARIANTS]
        if unknown or not names:
            parser.error(
                f"--variants: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(VARIANTS)}"
            )
    if args.buckets is not None:
        from services.inference.accel import parse_buckets

        try:
            parse_buckets(args.buckets)
        except ValueError as exc:
            parser.error(f"--buckets: {exc}")
    return args


def _names(text: str) -> list[str]:
    return list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


# --- memory and timing ---------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _memory_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError):
        return float("nan")


def _timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


# --- FLOPs ---------------------------------------------------------------------------------------


def count_step_tflop(unet_config: dict[str, Any], size: int, sdxl: bool) -> float:
    """TFLOP of one UNet forward at batch 2 (one guided step of one image), counted on the meta
    device (no memory, no compute) with torch's FlopCounterMode."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)  # type: ignore[no-untyped-call]
        latent = size // 8
        sample = torch.empty(2, unet.config.in_channels, latent, latent)
        text = torch.empty(2, 77, unet.config.cross_attention_dim)
        kwargs: dict[str, Any] = {}
        if sdxl:
            pooled = (
                unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
            )
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.empty(2, pooled),
                "time_ids": torch.empty(2, 6),
            }
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            unet(sample, torch.tensor([500, 500]), encoder_hidden_states=text, **kwargs)
    return float(counter.get_total_flops()) / 1e12


def _floor_fraction(row: Row, plan: Plan, guided: bool, peak_tflops: float) -> float:
    per_image = plan.steps * plan.step_tflop * (1.0 if guided else 0.5)
    achieved = row.rate * per_image
    return achieved / peak_tflops


# --- images --------------------------------------------------------------------------------------


def _prompts(n: int, offset: int = 0) -> list[str]:
    return [f"a detailed oil painting of a red cat number {offset + i}, cinematic lighting" for i in range(n)]


def _pixels(image: Any) -> Any:
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _difference(image: Any, reference: Any) -> tuple[float | None, float | None]:
    """Max and mean absolute difference per pixel channel (0-255); None without a reference."""
    if image is None or reference is None:
        return None, None
    diff = abs(_pixels(image) - reference)
    return float(diff.max()), float(diff.mean())


def _request(plan: Plan, guidance: float, i: int) -> GenerationRequest:
    from services.inference.engine import GenerationRequest

    # Prompt i and seed i, as the plain rows' call(_prompts(1, i), i): the accuracy check needs both.
    return GenerationRequest(
        kind="txt2img",
        prompt=_prompts(1, i)[0],
        negative_prompt="",
        width=plan.size,
        height=plan.size,
        steps=plan.steps,
        guidance=guidance,
        sampler="euler",
        seeds=[i],
    )


def _encode_pngs(model: str, req: GenerationRequest, images: list[Any]) -> list[Any]:
    """What the worker's `_deliver` does with a job's images before uploading them."""
    from services.inference.messages import JobParams
    from services.inference.worker.runner import new_images

    params = JobParams(
        prompt=req.prompt,
        width=req.width,
        height=req.height,
        steps=req.steps,
        guidance=req.guidance,
        sampler=req.sampler,
        seed=req.seeds[0],
    )
    return new_images(model, "txt2img", params, images)


# --- the measurements ----------------------------------------------------------------------------


def measure_plain(
    manifest: Any, plan: Plan, device: str, dtype: Any, args: argparse.Namespace, counts: dict[str, int]
) -> tuple[list[Row], dict[int, Any], float]:
    """The diffusers pipeline as its documentation shows it, without Easel's engine around it.

    Returns the rows, the reference images (as pixel arrays) for the accuracy check, by index, and
    the seconds its loading took (the time guard's estimate of an engine's load).
    """
    import torch

    from services.inference import pipelines
    from services.inference.schedulers import make_scheduler

    rows: list[Row] = []
    references: dict[int, Any] = {}
    _reset_peak(device)
    load_s, pipe = _timed(device, functools.partial(pipelines.load_pipeline, manifest, device, dtype))
    # The worker's jobs here ask for Euler, built the way the engine builds it, so both make the
    # same image for a seed (the model's own default scheduler would make another).
    pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)
    # Decoding a batch one image at a time, as diffusers recommends for batches (and as the worker
    # does): 16 SDXL images decoded at once would not fit. No effect on single images.
    pipe.vae.enable_slicing()
    common = {
        "num_inference_steps": plan.steps,
        "height": plan.size,
        "width": plan.size,
        "guidance_scale": args.guidance,
    }

    def call(prompts: list[str], seed: int) -> list[Any]:
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
        return list(pipe(prompt=prompts, generator=generators, **common).images)

    labels = ["plain pipeline"]
    if args.compile != "none" and device.startswith("cuda"):
        labels.append(f"plain + torch.compile({args.compile})")
    burst = counts["burst"]
    for label in labels:
        compiled = label.startswith("plain + torch.compile")
        if compiled:
            pipe.unet = torch.compile(pipe.unet, mode=args.compile, fullgraph=False)
        for _ in range(args.warmup):
            call(_prompts(1), 0)
        _reset_peak(device)
        singles: list[float] = []
        for i in range(counts["singles"]):
            took, images = _timed(device, functools.partial(call, _prompts(1, i), i))
            singles.append(took)
            if i == SINGLE_CHECK and not compiled:
                references[i] = _pixels(images[0])
        rows.append(
            Row(
                plan.name,
                f"{label}, 1 at a time",
                counts["singles"],
                sum(singles),
                singles,
                _memory_gib(device),
            )
        )
        try:
            for _ in range(args.warmup):
                call(_prompts(burst), 0)
            _reset_peak(device)
            took, _ = _timed(device, functools.partial(call, _prompts(burst, 1000), 1000))
        except torch.cuda.OutOfMemoryError:
            print(f"{plan.name}: {burst} at once ran out of GPU memory; lower --burst", flush=True)
            took = float("nan")
        rows.append(
            Row(plan.name, f"{label}, {burst} at once", burst, took, [took] * burst, _memory_gib(device))
        )
        if not compiled:
            # The reference for the queue's first job is a single image, as a user would make it alone.
            references[QUEUE_FIRST] = _pixels(call(_prompts(1, QUEUE_FIRST), QUEUE_FIRST)[0])
    if len(labels) > 1:
        # Drops the compiled UNet's code and, on CUDA, the CUDA graphs this thread recorded.
        torch._dynamo.reset()
    return rows, references, load_s


def _buckets(args: argparse.Namespace, cuda: bool, batch_max: int) -> tuple[int, ...]:
    from services.inference.accel import DEFAULT_BUCKETS, parse_buckets

    if args.buckets:
        return parse_buckets(args.buckets)
    if cuda:
        return DEFAULT_BUCKETS
    # A CPU compiles each bucket for half a minute or more: only the batch sizes this run makes (a
    # queue's last, smaller batch is padded up to the fetch size).
    return tuple(sorted({1, batch_max}))


def _extra_sizes(manifest: Any, size: int) -> tuple[tuple[int, int], ...]:
    # The engine compiles the model's default size; another size is what EASEL_WORKER_COMPILE_SIZES adds.
    return () if (size, size) == (manifest.default_width, manifest.default_height) else ((size, size),)


def variant_accel(name: str, setup: Setup) -> Accel:
    """The Accel a named variant builds its Engine with (the restart probe builds the same)."""
    from services.inference.accel import Accel

    cuda = setup.device.startswith("cuda")
    if name == "eager":
        return Accel()
    if name == "worker-default":
        accel = Accel.resolve(setup.device, buckets=setup.buckets, sizes=setup.sizes)
        # As the worker's __main__: the cache folder only where it compiles.
        return dataclasses.replace(accel, cache_dir=setup.cache_dir) if accel.compiled else accel
    if name in ("compiled", "compiled-no-cudagraphs", "compiled-vae"):
        if name == "compiled-no-cudagraphs":
            mode = "max-autotune-no-cudagraphs" if cuda else "default"
        else:
            mode = setup.compile_mode
        return Accel(
            compile=mode,
            channels_last=cuda,
            fuse_qkv=cuda,
            compile_vae=name == "compiled-vae",
            buckets=setup.buckets,
            sizes=setup.sizes,
            cache_dir=setup.cache_dir,
        )
    if name == "channels-last":
        return Accel(channels_last=True)
    if name == "fused-qkv":
        return Accel(fuse_qkv=True)
    raise ValueError(f"unknown variant {name!r}")


def _serves(accel: Accel, fast: Any, plan: Plan, guided: bool) -> str:
    """Whether this run's jobs go to the compiled UNet; a failed warm-up silently runs eager."""
    if not accel.compiled:
        return "eager (not compiled)"
    if fast is None:
        return "COMPILE FAILED: eager (see the log above)"
    if not fast.serves(plan.size, plan.size, guided):
        return "eager: this run's shape is not compiled" + ("" if guided else " (guidance <= 1)")
    return f"compiled: {plan.size}x{plan.size} at batch {','.join(map(str, fast.buckets))}"


async def measure_variant(
    manifests: dict[str, Any],
    plan: Plan,
    device: str,
    args: argparse.Namespace,
    counts: dict[str, int],
    variant: str,
    accel: Accel,
    references: dict[int, Any],
) -> tuple[list[Row], Warm]:
    """The worker's own code: its Engine (as the worker builds it, with `accel`) on a
    GenerationThread, its PNG encoding, and its runner's overlap of batches."""
    import torch

    from services.inference.accel import cache_counters
    from services.inference.engine import Engine
    from services.inference.worker.generation_thread import GenerationThread
    from services.inference.worker.runner import BATCHES_IN_HAND

    engine = Engine(manifests, device=args.device, dtype=args.dtype, accel=accel)
    # One thread for the load (where the warm-up records the CUDA graphs) and every generate after:
    # CUDA graph trees are per thread, and replaying from another records them again.
    thread = GenerationThread(name=f"bench-{variant}")
    name = plan.name
    kept: dict[int, Any] = {}

    async def generate(reqs: list[GenerationRequest]) -> list[list[Any]]:
        return await thread.run(functools.partial(engine.generate, name, reqs))

    try:
        _reset_peak(device)
        before = cache_counters()
        load_s = await thread.run(functools.partial(engine.load, name))
        after = cache_counters()
        fast = engine.compiled(name)
        warm = Warm(
            name,
            variant,
            accel.describe(),
            load_s,
            fast.warm_seconds if fast is not None else None,
            after["hits"] - before["hits"],
            after["misses"] - before["misses"],
            _serves(accel, fast, plan, args.guidance > 1),
        )

        async def one(i: int) -> float:
            req = _request(plan, args.guidance, i)
            _sync(device)
            t0 = time.perf_counter()
            (images,) = await generate([req])
            await asyncio.to_thread(_encode_pngs, name, req, images)
            took = time.perf_counter() - t0  # PIL images: the device is done with them
            if i == SINGLE_CHECK:
                kept[i] = images[0]
            return took

        rows: list[Row] = []
        for _ in range(args.warmup):
            await one(SINGLE_CHECK)
        _reset_peak(device)
        singles = [await one(i) for i in range(counts["singles"])]
        max_diff, mean_diff = _difference(kept.get(SINGLE_CHECK), references.get(SINGLE_CHECK))
        rows.append(
            Row(
                name,
                f"worker path [{variant}], 1 job at a time",
                counts["singles"],
                sum(singles),
                singles,
                _memory_gib(device),
                variant,
                max_diff,
                mean_diff,
            )
        )

        batch_max = counts["batch_max"]
        for _ in range(args.warmup):
            warm_reqs = [_request(plan, args.guidance, i) for i in range(batch_max)]
            for req, images in zip(warm_reqs, await generate(warm_reqs), strict=True):
                await asyncio.to_thread(_encode_pngs, name, req, images)
        _reset_peak(device)
        queue = [_request(plan, args.guidance, QUEUE_FIRST + i) for i in range(counts["queue"])]
        done: list[float] = []
        gpu = asyncio.Lock()
        slots = asyncio.Semaphore(BATCHES_IN_HAND)

        async def deliver(req: GenerationRequest, images: list[Any]) -> None:
            await asyncio.to_thread(_encode_pngs, name, req, images)
            done.append(time.perf_counter() - start)
            if req.seeds[0] == QUEUE_FIRST:
                kept[QUEUE_FIRST] = images[0]

        async def process(fetched: list[GenerationRequest]) -> None:
            # As Worker._process and _run_group: only the generation holds the GPU; the batch's
            # deliveries run meanwhile in the background, and its slot frees once they are done.
            pending: list[asyncio.Task[None]] = []
            try:
                groups: dict[tuple[object, ...], list[GenerationRequest]] = {}
                for req in fetched:
                    groups.setdefault(engine.compatible_key(name, req), []).append(req)
                for group in groups.values():
                    async with gpu:
                        results = await generate(group)
                    for req, images in zip(group, results, strict=True):
                        pending.append(asyncio.create_task(deliver(req, images)))
                await asyncio.gather(*pending)
            finally:
                slots.release()

        _sync(device)
        start = time.perf_counter()
        batches: list[asyncio.Task[None]] = []
        for at in range(0, len(queue), batch_max):
            await slots.acquire()  # the worker fetches only with a slot free
            batches.append(asyncio.create_task(process(queue[at : at + batch_max])))
        await asyncio.gather(*batches)
        total = time.perf_counter() - start
        max_diff, mean_diff = _difference(kept.get(QUEUE_FIRST), references.get(QUEUE_FIRST))
        rows.append(
            Row(
                name,
                f"worker path [{variant}], queue of {len(queue)} (fetch {batch_max})",
                len(queue),
                total,
                done,
                _memory_gib(device),
                variant,
                max_diff,
                mean_diff,
            )
        )
        return rows, warm
    finally:
        await thread.run(functools.partial(engine.unload, name))
        if accel.compiled:
            # On the generation thread: CUDA graph trees (and their memory pools) belong to it.
            await thread.run(torch._dynamo.reset)
        thread.close()


def measure_restart(
    models_dir: Path,
    plan: Plan,
    setup: Setup,
    variant: str,
    args: argparse.Namespace,
    threads: int,
    env: dict[str, str],
    guard: Guard | None = None,
) -> Restart:
    """A restarted worker: a fresh Python process from Popen to its first image's PNG (killed after
    `--restart-timeout` seconds, or at the time guard's deadline if that comes first)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--restart-probe",
        plan.name,
        "--probe-variant",
        variant,
        "--models-dir",
        str(models_dir.resolve()),
        "--compile-cache",
        str(setup.cache_dir),
        "--device",
        setup.device,
        "--dtype",
        args.dtype,
        "--size",
        str(plan.size),
        "--steps",
        str(plan.steps),
        "--guidance",
        repr(args.guidance),
        "--buckets",
        ",".join(map(str, setup.buckets)),
        "--compile-mode",
        setup.compile_mode,
        "--threads",
        str(threads),
    ]
    out = Restart(plan.name, variant)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        started = time.perf_counter()
        # The environment the bench started with: what this process's engines set (the inductor
        # cache folder) must come from the probe's own engine, as in a restarted worker.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        timeout = max(1.0, min(args.restart_timeout, guard.left() if guard is not None else math.inf))
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if "to_first_image_s" in data:
                    out.wall_s = time.perf_counter() - started
                    out.to_first_image_s = float(data["to_first_image_s"])
                    out.load_s = float(data["load_s"])
                    out.hits, out.misses = int(data["hits"]), int(data["misses"])
                    out.compiled = bool(data["compiled"])
                    break
            proc.stdout.read()
            proc.wait()
        finally:
            killer.cancel()
        if math.isnan(out.wall_s):  # no JSON line came
            err.seek(0)
            tail = err.read()[-1500:].strip()
            took = time.perf_counter() - started
            if took >= timeout - 0.5:
                why = "the time guard's deadline" if timeout < args.restart_timeout else "--restart-timeout"
                out.error = f"no first image within {took:.0f} s: killed at {why}"
            else:
                out.error = f"probe exited with status {proc.returncode}: {tail or '(no output)'}"
    return out


def restart_probe(args: argparse.Namespace, started: float) -> int:
    """The fresh process of `--restart`: the worker's engine start-up, then one job's image."""
    import torch

    from services.inference.accel import cache_counters
    from services.inference.engine import Engine
    from services.inference.models import discover_models
    from services.inference.pipelines import resolve_device
    from services.inference.worker.generation_thread import GenerationThread

    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.restart_probe
    models_dir = _models_dir(args, False)
    manifest = discover_models(models_dir)[name]
    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    size = args.size or manifest.default_width
    # The parent passes every setting; the defaults are the bench's own, for a probe run by hand.
    setup = Setup(
        device,
        _buckets(args, cuda, args.batch_max or _worker_batch_max()),
        _extra_sizes(manifest, size),
        Path(args.compile_cache or models_dir / ".compile-cache").resolve(),
        args.compile_mode or ("reduce-overhead" if cuda else "default"),
    )
    plan = Plan(name, size, args.steps or manifest.default_steps, 0.0, "")
    accel = variant_accel(args.probe_variant, setup)
    engine = Engine({name: manifest}, device=args.device, dtype=args.dtype, accel=accel)

    async def first_image() -> dict[str, Any]:
        thread = GenerationThread()
        try:
            before = cache_counters()
            load_s = await thread.run(functools.partial(engine.load, name))
            req = _request(plan, args.guidance, SINGLE_CHECK)
            (images,) = await thread.run(functools.partial(engine.generate, name, [req]))
            await asyncio.to_thread(_encode_pngs, name, req, images)
            after = cache_counters()
            fast = engine.compiled(name)
            return {
                "to_first_image_s": time.perf_counter() - started,
                "load_s": load_s,
                "hits": after["hits"] - before["hits"],
                "misses": after["misses"] - before["misses"],
                "compiled": fast is not None and fast.serves(size, size, args.guidance > 1),
            }
        finally:
            thread.close()

    print(json.dumps(asyncio.run(first_image())), flush=True)
    return 0


# --- the run -------------------------------------------------------------------------------------


def _models_dir(args: argparse.Namespace, tiny: bool) -> Path:
    if args.models_dir is not None:
        return Path(args.models_dir)
    return Path("models")


def _tiny_models(args: argparse.Namespace) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    from services.inference.models import MANIFEST_FILE
    from services.inference.testmodel import build_bundled

    folder = _models_dir(args, True)
    if (folder / "tiny-sd" / MANIFEST_FILE).is_file():
        return folder, None
    tmp = tempfile.TemporaryDirectory(prefix="easel-gpu-bench-")
    build_bundled(Path(tmp.name), "tiny-sd")
    return Path(tmp.name), tmp


def run(args: argparse.Namespace) -> Results:
    import torch

    threads_before = torch.get_num_threads()
    env = dict(os.environ)
    try:
        return _run(args, env)
    finally:
        torch.set_num_threads(threads_before)  # the tests run the bench inside their own process
        # The engine points inductor at its cache folder through the environment; a later test in
        # the same process must not find this run's (deleted) temporary folder there.
        for key in [k for k in {*os.environ, *env} if k.startswith("TORCHINDUCTOR_")]:
            if key in env:
                os.environ[key] = env[key]
            else:
                os.environ.pop(key, None)


def _run(args: argparse.Namespace, env: dict[str, str]) -> Results:
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from services.inference import pipelines
    from services.inference.models import discover_models

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    device = pipelines.resolve_device(args.device)
    cuda = device.startswith("cuda")
    tiny = args.tiny or not cuda
    dtype = pipelines.resolve_dtype(args.dtype, device)
    threads = args.threads or (1 if tiny and not cuda else None)
    if threads:
        torch.set_num_threads(threads)
    # On a CPU the worker's default is eager, the same as `eager`: compiled is the one to compare.
    variants = _names(args.variants or ("eager,worker-default" if cuda else "eager,compiled"))
    info: dict[str, Any] = {"device": device, "tiny": tiny, "dtype": str(dtype).removeprefix("torch.")}
    info["threads"] = torch.get_num_threads()
    if cuda:
        info["gpu"] = torch.cuda.get_device_name()
    counts = {
        "singles": args.singles or (3 if tiny else 8),
        "burst": args.burst or (4 if tiny else 16),
        "queue": args.queue or (8 if tiny else 64),
        "batch_max": args.batch_max or (_worker_batch_max() if tiny else 16),
    }
    info["counts"] = counts
    info["variants"] = variants
    keep: list[tempfile.TemporaryDirectory[str]] = []
    if tiny:
        models_dir, tmp = _tiny_models(args)
        keep += [tmp] if tmp is not None else []
        names = ["tiny-sd"]
    else:
        import _models

        models_dir = _models_dir(args, False)
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        for name in names:
            print(f"building {name} into {models_dir} (once; skipped when present)", flush=True)
            _models.ensure(models_dir, name, device)
    if args.compile_cache is not None:
        cache_dir = Path(args.compile_cache).resolve()
    elif tiny:
        # Cold here on purpose: the first compile happens in this process, and the restart probe
        # then shows what a warm cache saves. (A kept cache would hide the cold compile.)
        cache_tmp = tempfile.TemporaryDirectory(prefix="easel-gpu-bench-cache-")
        keep.append(cache_tmp)
        cache_dir = Path(cache_tmp.name)
    else:
        cache_dir = (models_dir / ".compile-cache").resolve()
    compile_mode = args.compile_mode or ("reduce-overhead" if cuda else "default")
    buckets = _buckets(args, cuda, counts["batch_max"])
    info["buckets"] = buckets
    info["cache_dir"] = cache_dir
    restart_variant = "worker-default" if cuda else "compiled"
    info["guidance"] = args.guidance
    info["peak_tflops"] = args.peak_tflops
    info["header"] = _header()
    guard = Guard(args.deadline, args.compile_estimate_s or (130.0 if cuda else 60.0))
    results = Results([], {}, info)
    save = functools.partial(_save, results, args.json)
    try:
        manifests = {k: v for k, v in discover_models(models_dir).items() if k in names}
        for name in names:
            manifest = manifests[name]
            size = args.size or (64 if tiny else manifest.default_width)
            steps = args.steps or (4 if tiny else 30)
            if guard.left() <= 0:
                results.notes.append(f"{name}: not measured: the time guard's deadline had passed")
                results.skipped_restart[name] = "the time guard's deadline had passed"
                continue
            plan = _plan(name, manifest, size, steps, args)
            results.plans[name] = plan
            setup = Setup(device, buckets, _extra_sizes(manifest, size), cache_dir, compile_mode)
            print(f"measuring {name} at {size}x{size}, {steps} steps ...", flush=True)
            rows, references, load_s = measure_plain(manifest, plan, device, dtype, args, counts)
            results.rows += rows
            save()
            measured: list[str] = []
            for variant in variants:
                _reset_peak(device)
                accel = variant_accel(variant, setup)
                estimate = guard.estimate(rows, args.warmup, counts, load_s, accel, len(setup.sizes) + 1)
                if estimate > guard.left():
                    results.notes.append(
                        f"{name}: worker path [{variant}] skipped by the time guard: about {estimate:.0f} s "
                        f"needed, {guard.left():.0f} s left before the deadline"
                    )
                    print(f"  {results.notes[-1]}", flush=True)
                    continue
                print(f"  worker path [{variant}]: {accel.describe()} ...", flush=True)
                started = time.perf_counter()
                try:
                    variant_rows, warm = asyncio.run(
                        measure_variant(
                            {name: manifest}, plan, device, args, counts, variant, accel, references
                        )
                    )
                except Exception as exc:  # one broken variant must not cost the device run the rest
                    traceback.print_exc()
                    results.notes.append(f"{name}: worker path [{variant}] FAILED: {exc!r}"[:500])
                    save()
                    continue
                print(f"  worker path [{variant}]: {time.perf_counter() - started:.0f} s", flush=True)
                results.rows += variant_rows
                results.warms.append(warm)
                measured.append(variant)
                save()
            _reset_peak(device)
            if not args.restart:
                results.skipped_restart[name] = "--no-restart"
            elif restart_variant not in measured:
                results.skipped_restart[name] = (
                    f"the restart probe runs the {restart_variant} variant after this process compiled it "
                    + (
                        "into the cache, and that variant was not measured (see the notes)"
                        if restart_variant in variants
                        else "into the cache; add it to --variants"
                    )
                )
            elif guard.left() < RESTART_MIN_S:
                left = guard.left()
                results.skipped_restart[name] = (
                    f"the time guard: {left:.0f} s left before the deadline, under {RESTART_MIN_S:g} s"
                )
                results.notes.append(f"{name}: restart probe skipped by the time guard")
            else:
                print(f"  restarted worker [{restart_variant}] in a fresh process ...", flush=True)
                results.restarts[name] = measure_restart(
                    models_dir, plan, setup, restart_variant, args, torch.get_num_threads(), env, guard
                )
            save()
    finally:
        for tmp in keep:
            tmp.cleanup()
    return results


def _worker_batch_max() -> int:
    from services.inference.worker.settings import WorkerSettings

    return int(WorkerSettings.model_fields["worker_batch_max"].default)


def _plan(name: str, manifest: Any, size: int, steps: int, args: argparse.Namespace) -> Plan:
    if manifest.family == "sd1" and name != "tiny-sd":
        tflop = args.sd15_step_tflop * (size / 512) ** 2
        return Plan(name, size, steps, tflop, f"given {args.sd15_step_tflop} at 512x512, scaled")
    if manifest.is_sdxl and args.sdxl_step_tflop is not None:
        return Plan(name, size, steps, args.sdxl_step_tflop, "given")
    config = json.loads((manifest.path / "unet" / "config.json").read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return Plan(name, size, steps, count_step_tflop(config, size, manifest.is_sdxl), "counted")


# --- the report ----------------------------------------------------------------------------------


def _diff_cells(r: Row) -> list[str]:
    if r.max_diff is None:
        return ["ref" if r.path.startswith("plain pipeline, 1") else "—"] * 2
    flag = " OVER" if r.over else ""
    return [f"{r.max_diff:.0f}{flag}", f"{r.mean_diff or 0.0:.4f}"]


def _goal_variant(results: Results, model: str) -> str | None:
    """The variant the goals are checked on: what the worker runs (the restarted one where the
    worker's default is not measured)."""
    measured = [r.variant for r in results.rows if r.model == model and r.variant]
    for wanted in ("worker-default", "compiled"):
        if wanted in measured:
            return wanted
    return measured[0] if measured else None


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _goal_rows(results: Results, model: str) -> tuple[str | None, Row | None, Row | None]:
    variant = _goal_variant(results, model)
    mine = [r for r in results.rows if r.model == model and r.variant == variant]
    queue = next((r for r in mine if "queue of" in r.path), None)
    single = next((r for r in mine if "1 job at a time" in r.path), None)
    return variant, queue, single


def goal_figures(results: Results, model: str) -> dict[str, Any]:
    """The goals' figures for the JSON: each None where not measured."""
    variant, queue, single = _goal_rows(results, model)
    restart = results.restarts.get(model)
    restart_s = restart.wall_s if restart is not None and not restart.error else None
    checked = [r for r in results.rows if r.model == model and r.max_diff is not None]
    p50 = pct(single.latencies, 0.5) if single is not None else None
    return {
        "variant": variant,
        "queue_images_per_s": queue.rate if queue is not None else None,
        "queue_goal_images_per_s": GOAL_RATE,
        "queue_met": queue.rate >= GOAL_RATE if queue is not None else None,
        "single_p50_s": p50,
        "single_goal_s": GOAL_SINGLE_S,
        "single_met": p50 <= GOAL_SINGLE_S if p50 is not None else None,
        "restart_s": restart_s,
        "restart_goal_s": GOAL_RESTART_S,
        "restart_met": restart_s <= GOAL_RESTART_S if restart_s is not None else None,
        "restart_not_measured": (
            results.skipped_restart.get(model, "no probe ran")
            if restart is None
            else (restart.error if restart.error else None)
        ),
        "accuracy_images": len(checked),
        "accuracy_within": all(not r.over for r in checked) if checked else None,
    }


def goals(results: Results, model: str) -> list[str]:
    tiny = results.info["tiny"]
    note = (
        "TINY mode: the goals apply to the GPU full mode only; shown to exercise the checks"
        if tiny
        else ("" if model == "bench-sd15" else "set for bench-sd15; shown for reference")
    )
    lines = [
        f"{model}: goals of the issue (one H100/H200, SD 1.5-sized at 512x512, 30 steps)"
        f"{'; ' + note if note else ''}:"
    ]
    variant, queue, single = _goal_rows(results, model)
    if queue is not None:
        lines.append(
            f"- sustained images/s (queue row of {variant}): {queue.rate:.2f} (goal >= {GOAL_RATE:g}): "
            f"{_met(queue.rate >= GOAL_RATE)}"
        )
    if single is not None:
        p50 = pct(single.latencies, 0.5)
        lines.append(
            f"- single job p50 ({variant}, idle worker): {p50:.3f} s (goal <= {GOAL_SINGLE_S:g}): "
            f"{_met(p50 <= GOAL_SINGLE_S)}"
        )
    restart = results.restarts.get(model)
    if restart is None:
        why = results.skipped_restart.get(model, "no probe ran")
        lines.append(f"- restart to first image: not measured ({why})")
    elif restart.error:
        lines.append(f"- restart to first image: FAILED ({restart.error})")
    else:
        lines.append(
            f"- restart to first image ({restart.variant}, fresh process): {restart.wall_s:.1f} s "
            f"(goal <= {GOAL_RESTART_S:g}): {_met(restart.wall_s <= GOAL_RESTART_S)}; "
            f"{restart.to_first_image_s:.1f} s of it after its main() started (the rest: Python start-up), "
            f"load + warm-up {restart.load_s:.1f} s, compile cache {restart.hits} hits, "
            f"{restart.misses} misses{'' if restart.compiled else ', NOT on the compiled UNet'}"
        )
    checked = [r for r in results.rows if r.model == model and r.max_diff is not None]
    if checked:
        worst = max(checked, key=lambda r: (r.max_diff or 0.0, r.mean_diff or 0.0))
        worst_mean = max(r.mean_diff or 0.0 for r in checked)
        over = [r.path for r in checked if r.over]
        lines.append(
            f"- accuracy: max |Δ| {worst.max_diff:.0f}, mean |Δ| up to {worst_mean:.4f} over "
            f"{len(checked)} worker images against the plain pipeline's for the same prompt and seed "
            f"(tolerance: max |Δ| <= {ACCURACY_MAX_PX} and mean |Δ| <= {ACCURACY_MEAN_PX:g} on 0-255): "
            + (f"OVER in {'; '.join(over)}" if over else "within")
        )
    return lines


def _header() -> dict[str, str]:
    """Where and when the figures were taken (kept in the JSON, so a --render shows the run's)."""
    return {
        "when": now_utc(),
        "machine": machine(),
        "load": loadavg(),
        "versions": versions(("torch", "diffusers", "transformers", "accelerate")),
    }


def _run_line(info: dict[str, Any], guidance: float) -> str:
    return (
        f"device {info['device']}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}, dtype {info['dtype']}, "
        f"{'TINY mode (bundled tiny-sd, CPU figures)' if info['tiny'] else 'full mode'}, "
        f"counts {info['counts']}, guidance {guidance}, torch threads {info['threads']}; "
        f"worker variants {', '.join(info['variants'])}; compiled buckets "
        f"{','.join(map(str, info['buckets']))}; compile cache {info['cache_dir']}"
    )


def _baselines(results: Results, model: str) -> tuple[Row, Row]:
    mine = [r for r in results.rows if r.model == model]
    single = next(r for r in mine if r.path.startswith("plain pipeline, 1"))
    burst = next(r for r in mine if r.path.startswith("plain pipeline,") and "at once" in r.path)
    return single, burst


def report(results: Results, args: argparse.Namespace) -> str:
    rows, plans, info = results.rows, results.plans, results.info
    guidance = float(info.get("guidance", args.guidance))
    peak = float(info.get("peak_tflops", args.peak_tflops))
    header = info.get("header") or _header()
    lines = [
        f"\nEasel GPU throughput, {header['when']}; {header['machine']}; load average {header['load']}",
        header["versions"],
        *(_run_line(i, guidance) for i in [info, *info.get("others", [])]),
    ]
    for plan in plans.values():
        lines.append(
            f"{plan.name}: {plan.size}x{plan.size}, {plan.steps} steps, Euler, UNet {plan.step_tflop:.4g} "
            f"TFLOP per guided step ({plan.tflop_source}); floor against {peak:g} TFLOP/s"
        )
    mem = "GPU peak GiB" if info["device"].startswith("cuda") else "RSS GiB"
    out = []
    for name in plans:
        single, burst = _baselines(results, name)
        for r in (r for r in rows if r.model == name):
            out.append(
                [
                    f"{name}: {r.path}",
                    str(r.images),
                    f"{r.rate:.3f}",
                    f"{pct(r.latencies, 0.5):.3f}",
                    f"{pct(r.latencies, 0.95):.3f}",
                    f"{r.memory_gib:.2f}",
                    f"{r.rate / single.rate:.2f}",
                    f"{r.rate / burst.rate:.2f}",
                    f"{100 * _floor_fraction(r, plans[name], guidance > 1, peak):.3g}%",
                    *_diff_cells(r),
                ]
            )
    lines.append("")
    lines.append(
        table(
            [
                "model: path",
                "images",
                "images/s",
                "p50 s",
                "p95 s",
                mem,
                "vs plain 1-at-a-time",
                "vs plain batch",
                "of FLOP floor",
                "max Δ px",
                "mean Δ px",
            ],
            out,
        )
    )
    lines.append(
        "latency: per call for the plain rows (a batch's images all finish with it); per job from the "
        "queue's start for the queue rows. The worker rows include PNG encoding, as the worker does. "
        "Δ: absolute difference per pixel channel (0-255) from the plain pipeline's image for the same "
        f"prompt and seed (the first single job; the queue's first job, made in a batch); OVER: above "
        f"{ACCURACY_MAX_PX} or a mean above {ACCURACY_MEAN_PX:g}."
    )
    if results.warms:
        lines.append("")
        lines.append(
            table(
                [
                    "model: variant",
                    "load + warm-up s",
                    "warm-up s",
                    "cache hits",
                    "cache misses",
                    "jobs ran on",
                    "settings",
                ],
                [
                    [
                        f"{w.model}: {w.variant}",
                        f"{w.load_s:.1f}",
                        "—" if w.warm_s is None else f"{w.warm_s:.1f}",
                        str(w.hits),
                        str(w.misses),
                        w.serves,
                        w.settings,
                    ]
                    for w in results.warms
                ],
            )
        )
        lines.append(
            "load + warm-up: `engine.load` (weights from disk, channels-last, fused QKV, and compiling and "
            "warming every bucket); cache: inductor's FX-graph cache during it (hits: compiled code "
            "reused from the cache folder or an earlier variant of this run)."
        )
    if results.notes:
        lines.append("")
        lines += [f"note: {n}" for n in results.notes]
    for name in plans:
        lines.append("")
        lines += goals(results, name)
    return "\n".join(lines)


# --- the figures as JSON (--json, --render) ------------------------------------------------------


def to_json(results: Results) -> dict[str, Any]:
    """Everything the report shows: the raw measurements (which --render reads back) and, per row,
    the figures computed from them."""
    info = {k: str(v) if isinstance(v, Path) else v for k, v in results.info.items()}
    guided = float(info.get("guidance", 7.5)) > 1
    peak = float(info.get("peak_tflops", H100_BF16_TFLOPS))
    rows = []
    for r in results.rows:
        single, burst = _baselines(results, r.model)
        row = dataclasses.asdict(r)
        row.update(
            images_per_s=r.rate,
            p50_s=pct(r.latencies, 0.5),
            p95_s=pct(r.latencies, 0.95),
            vs_plain_single=r.rate / single.rate,
            vs_plain_batch=r.rate / burst.rate,
            floor_fraction=_floor_fraction(r, results.plans[r.model], guided, peak),
            within_tolerance=None if r.max_diff is None else not r.over,
        )
        rows.append(row)
    figures: dict[str, Any] = _finite(
        {
            "info": info,
            "tolerance": {"max_px": ACCURACY_MAX_PX, "mean_px": ACCURACY_MEAN_PX},
            "plans": {k: dataclasses.asdict(v) for k, v in results.plans.items()},
            "rows": rows,
            "warms": [dataclasses.asdict(w) for w in results.warms],
            "restarts": {k: dataclasses.asdict(v) for k, v in results.restarts.items()},
            "skipped_restart": results.skipped_restart,
            "notes": results.notes,
            "goals": {model: goal_figures(results, model) for model in results.plans},
        }
    )
    return figures


def _finite(value: Any) -> Any:
    """NaN and infinities as null: strict JSON has no NaN (a failed figure is NaN here)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def from_json(data: dict[str, Any]) -> Results:
    def pick(cls: Any, values: dict[str, Any]) -> Any:
        kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
        for name, value in kwargs.items():  # null back to NaN where a float was failed (_finite)
            if value is None and cls.__dataclass_fields__[name].type == "float":
                kwargs[name] = float("nan")
        if "latencies" in kwargs:
            kwargs["latencies"] = [float("nan") if x is None else x for x in kwargs["latencies"]]
        return cls(**kwargs)

    return Results(
        rows=[pick(Row, r) for r in data["rows"]],
        plans={k: pick(Plan, v) for k, v in data["plans"].items()},
        info=data["info"],
        warms=[pick(Warm, w) for w in data["warms"]],
        restarts={k: pick(Restart, v) for k, v in data["restarts"].items()},
        skipped_restart=dict(data.get("skipped_restart") or {}),
        notes=list(data.get("notes") or []),
    )


def merge(parts: list[Results]) -> Results:
    """Several runs (bench/gpu_check.sh's SD 1.5 run and its optional Flux run) as one report."""
    first, *rest = parts
    merged = Results([], {}, {**first.info, "others": [p.info for p in rest]})
    for part in parts:
        merged.rows += part.rows
        merged.plans.update(part.plans)
        merged.warms += part.warms
        merged.restarts.update(part.restarts)
        merged.skipped_restart.update(part.skipped_restart)
        merged.notes += part.notes
    return merged


def _save(results: Results, path: Path | None) -> None:
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(to_json(results), indent=1, allow_nan=False), encoding="utf-8")
        tmp.replace(path)  # whole or not at all, if the run is killed meanwhile


def render(args: argparse.Namespace) -> int:
    parts = [from_json(json.loads(Path(p).read_text(encoding="utf-8"))) for p in args.render]
    results = merge(parts)
    text = report(results, args)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(text.lstrip("\n") + "\n", encoding="utf-8")
        figures = json.dumps(to_json(results), indent=1, allow_nan=False)
        (args.out / "gpu_check.json").write_text(figures, encoding="utf-8")
    return _check_tolerance(results)


def _check_tolerance(results: Results) -> int:
    over = over_tolerance(results)
    if over:
        print(
            f"\naccuracy over tolerance (max |Δ| {ACCURACY_MAX_PX}, mean {ACCURACY_MEAN_PX:g}): "
            + "; ".join(over),
            flush=True,
        )
        return 1
    return 0


def over_tolerance(results: Results) -> list[str]:
    return [f"{r.model}: {r.path}" for r in results.rows if r.over]


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # the restart probe's clock: from here to its first image
    args = parse_args(argv)
    if args.restart_probe:
        return restart_probe(args, started)
    if args.render:
        return render(args)
    results = run(args)
    _save(results, args.json)
    if args.report:
        print(report(results, args))
    return _check_tolerance(results)


if __name__ == "__main__":
    raise SystemExit(main())
