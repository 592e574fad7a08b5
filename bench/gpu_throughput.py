"""GPU throughput: the plain diffusers pipeline next to the worker's own execution path, one run.

Full mode (a CUDA device): builds SD 1.5-sized and SDXL-sized models with random weights into
`--models-dir` (bench/_models.py; nothing is downloaded; kept for the next run), then per model:

  1. plain pipeline, one request at a time (`--singles` requests),
  2. plain pipeline, `--burst` prompts in one call,
  3. the worker's path, one job at a time: `Engine.generate` (the worker's engine with its
     precision, attention, batching and whatever it enables on this device) plus `encode_png` for
     each image, as the worker's `_deliver` does (the gallery upload is not included),
  4. the worker's path for a queue of `--queue` jobs submitted at once: taken `--batch-max` at a
     time (the worker's fetch, EASEL_WORKER_BATCH_MAX), grouped by `Engine.compatible_key`, one
     `Engine.generate` per group, then the PNGs; a job's latency runs from the queue's start to its
     PNGs being ready.

It prints images/s, latency p50/p95, peak GPU memory (process RSS on a CPU), each row's images/s
against both plain baselines, and the fraction of the UNet FLOP floor: images x steps x (UNet
TFLOP of one guided step, i.e. batch 2 for classifier-free guidance) / seconds / peak TFLOP/s.
The per-step figure is `--sd15-step-tflop` (1.61 at 512x512, scaled by pixel count to other
sizes) for SD 1.5 and counted on the meta device with torch's FlopCounterMode for the others
unless given (`--sdxl-step-tflop`); text encoders and VAE are not counted, so 100% is out of reach.

Tiny mode (`--tiny`, or automatic without CUDA): the bundled `tiny-sd` from `--models-dir` (built
into a temporary folder when missing) at 64x64 and small counts, so the script runs in the tests.

    .venv/bin/python bench/gpu_throughput.py                   # on a GPU machine: full mode
    .venv/bin/python bench/gpu_throughput.py --tiny --steps 4  # anywhere, seconds
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, machine, now_utc, pct, table, versions

H100_BF16_TFLOPS = 787.0
SD15_STEP_TFLOP_512 = 1.61


@dataclass
class Row:
    model: str
    path: str
    images: int
    seconds: float
    latencies: list[float]
    memory_gib: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")  # nan: failed


@dataclass
class Plan:
    name: str
    size: int
    steps: int
    step_tflop: float
    tflop_source: str


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
        "--batch-max", type=int, default=None, help="worker fetch size (EASEL_WORKER_BATCH_MAX)"
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
    return parser.parse_args(argv)


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


def _timed(device: str, fn: Callable[[], Any]) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


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


# --- the measurements ----------------------------------------------------------------------------


def _prompts(n: int, offset: int = 0) -> list[str]:
    return [f"a detailed oil painting of a red cat number {offset + i}, cinematic lighting" for i in range(n)]


def measure_plain(
    manifest: Any, plan: Plan, device: str, dtype: Any, args: argparse.Namespace, counts: dict[str, int]
) -> list[Row]:
    """The diffusers pipeline as its documentation shows it, without Easel's engine around it."""
    import torch

    from services.inference import pipelines

    rows: list[Row] = []
    _reset_peak(device)
    pipe = pipelines.load_pipeline(manifest, device, dtype)
    # Decoding a batch one image at a time, as diffusers recommends for batches (and as the worker
    # does): 16 SDXL images decoded at once would not fit. No effect on single images.
    pipe.vae.enable_slicing()
    common = {
        "num_inference_steps": plan.steps,
        "height": plan.size,
        "width": plan.size,
        "guidance_scale": args.guidance,
    }

    def call(prompts: list[str], seed: int) -> None:
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
        pipe(prompt=prompts, generator=generators, **common)

    labels = ["plain pipeline"]
    if args.compile != "none" and device.startswith("cuda"):
        labels.append(f"plain + torch.compile({args.compile})")
    burst = counts["burst"]
    for label in labels:
        if label.startswith("plain + torch.compile"):
            pipe.unet = torch.compile(pipe.unet, mode=args.compile, fullgraph=False)
        for _ in range(args.warmup):
            call(_prompts(1), 0)
        _reset_peak(device)
        singles = [_timed(device, lambda i=i: call(_prompts(1, i), i)) for i in range(counts["singles"])]
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
            took = _timed(device, lambda: call(_prompts(burst, 1000), 1000))
        except torch.cuda.OutOfMemoryError:
            print(f"{plan.name}: {burst} at once ran out of GPU memory; lower --burst", flush=True)
            took = float("nan")
        rows.append(
            Row(plan.name, f"{label}, {burst} at once", burst, took, [took] * burst, _memory_gib(device))
        )
    return rows


def measure_worker(
    manifests: dict[str, Any], plan: Plan, device: str, args: argparse.Namespace, counts: dict[str, int]
) -> list[Row]:
    """The worker's own code: its Engine (as the worker builds it) and its PNG encoding."""
    from services.inference.engine import Engine, GenerationRequest, encode_png
    from services.inference.messages import JobParams, image_params

    engine = Engine(manifests, device=args.device, dtype=args.dtype)
    engine.load(plan.name)

    def request(i: int) -> GenerationRequest:
        return GenerationRequest(
            kind="txt2img",
            prompt=_prompts(1, i)[0],
            negative_prompt="",
            width=plan.size,
            height=plan.size,
            steps=plan.steps,
            guidance=args.guidance,
            sampler="euler",
            seeds=[i],
        )

    def deliver(req: GenerationRequest, images: list[Any]) -> None:
        params = JobParams(
            prompt=req.prompt,
            width=req.width,
            height=req.height,
            steps=req.steps,
            guidance=req.guidance,
            sampler=req.sampler,
            seed=req.seeds[0],
        )
        for index, img in enumerate(images):
            encode_png(img, image_params(plan.name, "txt2img", params, index, img.width, img.height))

    def one(i: int) -> None:
        req = request(i)
        deliver(req, engine.generate(plan.name, [req])[0])

    rows: list[Row] = []
    for _ in range(args.warmup):
        one(0)
    _reset_peak(device)
    singles = [_timed(device, lambda i=i: one(i)) for i in range(counts["singles"])]
    rows.append(
        Row(
            plan.name,
            "worker path, 1 job at a time",
            counts["singles"],
            sum(singles),
            singles,
            _memory_gib(device),
        )
    )

    batch_max = counts["batch_max"]
    for _ in range(args.warmup):
        reqs = [request(i) for i in range(batch_max)]
        for req, images in zip(reqs, engine.generate(plan.name, reqs), strict=True):
            deliver(req, images)
    _reset_peak(device)
    queue = [request(10_000 + i) for i in range(counts["queue"])]
    done: list[float] = []
    _sync(device)
    start = time.perf_counter()
    for at in range(0, len(queue), batch_max):
        fetched = queue[at : at + batch_max]
        groups: dict[tuple[object, ...], list[GenerationRequest]] = {}
        for req in fetched:
            groups.setdefault(engine.compatible_key(plan.name, req), []).append(req)
        for group in groups.values():
            for req, images in zip(group, engine.generate(plan.name, group), strict=True):
                deliver(req, images)
                _sync(device)
                done.append(time.perf_counter() - start)
    total = time.perf_counter() - start
    rows.append(
        Row(
            plan.name,
            f"worker path, queue of {len(queue)} (fetch {batch_max})",
            len(queue),
            total,
            done,
            _memory_gib(device),
        )
    )
    engine.unload(plan.name)
    return rows


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


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, Plan], dict[str, Any]]:
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)  # the tests run the bench inside their own process


def _run(args: argparse.Namespace) -> tuple[list[Row], dict[str, Plan], dict[str, Any]]:
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from services.inference import pipelines
    from services.inference.models import discover_models

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    device = pipelines.resolve_device(args.device)
    tiny = args.tiny or not device.startswith("cuda")
    dtype = pipelines.resolve_dtype(args.dtype, device)
    threads = args.threads or (1 if tiny and not device.startswith("cuda") else None)
    if threads:
        torch.set_num_threads(threads)
    info: dict[str, Any] = {"device": device, "tiny": tiny, "dtype": str(dtype).removeprefix("torch.")}
    info["threads"] = torch.get_num_threads()
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    counts = {
        "singles": args.singles or (3 if tiny else 8),
        "burst": args.burst or (4 if tiny else 16),
        "queue": args.queue or (8 if tiny else 64),
        "batch_max": args.batch_max or _worker_batch_max(),
    }
    info["counts"] = counts
    keep: tempfile.TemporaryDirectory[str] | None = None
    if tiny:
        models_dir, keep = _tiny_models(args)
        names = ["tiny-sd"]
    else:
        import _models

        models_dir = _models_dir(args, False)
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        for name in names:
            print(f"building {name} into {models_dir} (once; skipped when present)", flush=True)
            _models.ensure(models_dir, name, device)
    try:
        manifests = {k: v for k, v in discover_models(models_dir).items() if k in names}
        rows: list[Row] = []
        plans: dict[str, Plan] = {}
        for name in names:
            manifest = manifests[name]
            size = args.size or (64 if tiny else manifest.default_width)
            steps = args.steps or (4 if tiny else 30)
            plan = _plan(name, manifest, size, steps, args)
            plans[name] = plan
            print(f"measuring {name} at {size}x{size}, {steps} steps ...", flush=True)
            rows += measure_plain(manifest, plan, device, dtype, args, counts)
            _reset_peak(device)
            rows += measure_worker({name: manifest}, plan, device, args, counts)
            _reset_peak(device)
    finally:
        if keep is not None:
            keep.cleanup()
    return rows, plans, info


def _worker_batch_max() -> int:
    from services.inference.worker.settings import WorkerSettings

    return int(WorkerSettings.model_fields["worker_batch_max"].default)


def _plan(name: str, manifest: Any, size: int, steps: int, args: argparse.Namespace) -> Plan:
    import json

    if manifest.family == "sd1" and name != "tiny-sd":
        tflop = args.sd15_step_tflop * (size / 512) ** 2
        return Plan(name, size, steps, tflop, f"given {args.sd15_step_tflop} at 512x512, scaled")
    if manifest.is_sdxl and args.sdxl_step_tflop is not None:
        return Plan(name, size, steps, args.sdxl_step_tflop, "given")
    config = json.loads((manifest.path / "unet" / "config.json").read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return Plan(name, size, steps, count_step_tflop(config, size, manifest.is_sdxl), "counted")


def report(rows: list[Row], plans: dict[str, Plan], info: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"\nEasel GPU throughput, {now_utc()}; {machine()}; load average {loadavg()}",
        versions(("torch", "diffusers", "transformers", "accelerate")),
        f"device {info['device']}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}, dtype {info['dtype']}, "
        f"{'TINY mode (bundled tiny-sd, CPU figures)' if info['tiny'] else 'full mode'}, "
        f"counts {info['counts']}, guidance {args.guidance}, torch threads {info['threads']}",
    ]
    for plan in plans.values():
        lines.append(
            f"{plan.name}: {plan.size}x{plan.size}, {plan.steps} steps, UNet {plan.step_tflop:.4g} TFLOP per "
            f"guided step ({plan.tflop_source}); floor against {args.peak_tflops:g} TFLOP/s"
        )
    mem = "GPU peak GiB" if info["device"].startswith("cuda") else "RSS GiB"
    out = []
    for name in plans:
        mine = [r for r in rows if r.model == name]
        single = next(r for r in mine if r.path.startswith("plain pipeline, 1"))
        burst = next(r for r in mine if r.path.startswith("plain pipeline,") and "at once" in r.path)
        for r in mine:
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
                    f"{100 * _floor_fraction(r, plans[name], args.guidance > 1, args.peak_tflops):.3g}%",
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
            ],
            out,
        )
    )
    lines.append(
        "latency: per call for the plain rows (a batch's images all finish with it); per job from the "
        "queue's start for the queue row. The worker rows include PNG encoding, as the worker does."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, plans, info = run(args)
    print(report(rows, plans, info, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
