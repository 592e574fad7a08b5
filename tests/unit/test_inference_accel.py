"""The acceleration layer: bucket arithmetic, settings, the generation thread, and a compiled
engine on this CPU (inductor) against the eager one."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters as dynamo_counters

from services.common.config import load_settings
from services.inference.accel import Accel, chunks, parse_buckets, parse_sizes
from services.inference.engine import Engine, GenerationRequest
from services.inference.models import discover_models
from services.inference.worker.generation_thread import GenerationThread
from services.inference.worker.settings import WorkerSettings


def test_chunks_pad_up_to_the_next_bucket_and_split_above_the_largest() -> None:
    buckets = (1, 2, 4, 8, 16)
    assert chunks(1, buckets) == [(1, 1)]
    assert chunks(3, buckets) == [(3, 4)]
    assert chunks(9, buckets) == [(9, 16)]
    assert chunks(16, buckets) == [(16, 16)]
    assert chunks(35, buckets) == [(16, 16), (16, 16), (3, 4)]
    assert chunks(5, (4,)) == [(4, 4), (1, 4)]


def test_bucket_and_size_settings_parse_or_say_what_to_write() -> None:
    assert parse_buckets("8, 1,2,2") == (1, 2, 8)
    assert parse_sizes("512x512, 768X512") == ((512, 512), (768, 512))
    assert parse_sizes("") == ()
    for bad in ("", "0", "1,x", "100"):
        with pytest.raises(ValueError, match="batch sizes"):
            parse_buckets(bad)
    for bad in ("512", "513x512", "512*512"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
            parse_sizes(bad)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EASEL_WORKER_COMPILE_BUCKETS", "1,two"),
        ("EASEL_WORKER_COMPILE_SIZES", "512by512"),
        ("EASEL_WORKER_COMPILE", "fastest"),
    ],
)
def test_bad_worker_compile_settings_stop_with_their_name(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        load_settings(WorkerSettings)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"easel: bad setting {name}: "), line


def test_auto_is_the_gpu_recipe_on_cuda_and_eager_on_a_cpu() -> None:
    gpu = Accel.resolve("cuda:0")
    assert (gpu.compile, gpu.channels_last, gpu.fuse_qkv) == ("reduce-overhead", True, True)
    cpu = Accel.resolve("cpu")
    assert not cpu.enabled
    forced = Accel.resolve("cpu", compile="default", channels_last=True, buckets=(4, 1, 4))
    assert forced.compiled and forced.channels_last and not forced.fuse_qkv and forced.buckets == (1, 4)
    with pytest.raises(ValueError, match="compile must be"):
        Accel(compile="fast")


async def test_generation_thread_runs_calls_in_order_on_one_thread_with_the_callers_context() -> None:
    gen = GenerationThread()
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")
    try:
        seen = await asyncio.gather(
            *(gen.run(lambda i=i: (i, threading.get_ident(), var.get())) for i in range(5))
        )
        assert [s[0] for s in seen] == list(range(5))
        assert len({s[1] for s in seen}) == 1 and seen[0][1] != threading.get_ident()
        assert {s[2] for s in seen} == {"caller"}

        def boom() -> None:
            raise KeyError("inside")

        with pytest.raises(KeyError, match="inside"):
            await gen.run(boom)
        assert await gen.run(lambda: 42) == 42  # the thread outlives a failed call
    finally:
        gen.close()


def _request(seeds: list[int], sampler: str = "euler") -> GenerationRequest:
    return GenerationRequest(
        kind="txt2img",
        prompt="a lighthouse at dusk",
        negative_prompt="",
        width=64,
        height=64,
        steps=3,
        guidance=7.5,
        sampler=sampler,
        seeds=seeds,
    )


_PROBE = """
import json, sys
from pathlib import Path
from services.inference.accel import Accel, cache_counters
from services.inference.engine import Engine
from services.inference.models import discover_models

models = {"tiny-sd": discover_models(Path(sys.argv[1]))["tiny-sd"]}
engine = Engine(models, device="cpu", batch_invariant=False,
                accel=Accel(compile="default", compile_vae=True, buckets=(2,), cache_dir=Path(sys.argv[2])))
engine.load("tiny-sd")
print(json.dumps({**cache_counters(), "fast": engine.loaded("tiny-sd").fast is not None}))
"""


def test_compiled_engine_matches_eager_and_a_new_process_compiles_nothing(
    models_dir: Path, tmp_path: Path
) -> None:
    """The compile path the GPU recipe takes, run with inductor on this CPU (about 40 s cold, for
    one bucket, every batch padded to two images or split into twos, and the VAE decoder)."""
    tiny = {"tiny-sd": discover_models(models_dir)["tiny-sd"]}
    cache = tmp_path / "compile-cache"
    eager = Engine(tiny, device="cpu", batch_invariant=False)
    compiled = Engine(
        tiny,
        device="cpu",
        batch_invariant=False,
        accel=Accel(compile="default", compile_vae=True, buckets=(2,), cache_dir=cache),
    )
    graphs_before = dynamo_counters["stats"]["unique_graphs"]  # counted per process
    try:
        compiled.load("tiny-sd")
        fast = compiled.loaded("tiny-sd").fast
        assert fast is not None and fast.sizes == {(64, 64)} and fast.warm_seconds > 0
        # Three images: a full bucket and one padded; one padded, with a sampler's integer timesteps.
        for seeds, sampler in (([5, 6, 7], "euler"), ([8], "dpmpp_2m")):
            want = eager.generate("tiny-sd", [_request(seeds, sampler)])[0]
            got = compiled.generate("tiny-sd", [_request(seeds, sampler)])[0]
            assert len(got) == len(seeds)
            for a, b in zip(want, got, strict=True):
                # Fused kernels round differently in the last bits; within 2 of 255 per pixel.
                diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
                assert diff.max() <= 2, diff.max()
        # Guidance off is a shape the compiled UNet was not warmed for: it runs eager, still right.
        off = _request([9])
        off.guidance = 1.0
        assert compiled.generate("tiny-sd", [off])[0][0].size == (64, 64)
        # One compiled UNet graph for the one bucket and one decoder graph; none for the second sampler
        # or the uncompiled shape.
        assert dynamo_counters["stats"]["unique_graphs"] - graphs_before == 2
        pipe = compiled.loaded("tiny-sd").base
        assert not hasattr(pipe.unet, "_orig_mod") and not hasattr(pipe.vae.decoder, "_orig_mod")
    finally:
        compiled.unload("tiny-sd")
    assert any(cache.iterdir())
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(models_dir), str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
        # The thread count is part of the CPU kernels' cache key: the same as this process's.
        env={**os.environ, "EASEL_TORCH_THREADS": str(torch.get_num_threads())},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"hits": 2, "misses": 0, "fast": True}


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_channels_last_and_fused_qkv_keep_the_images(models_dir: Path, model: str) -> None:
    """The two eager parts of the GPU recipe, on both families: same pixels within rounding."""
    manifests = {model: discover_models(models_dir)[model]}
    plain = Engine(manifests, device="cpu", batch_invariant=False)
    fast = Engine(
        manifests, device="cpu", batch_invariant=False, accel=Accel(channels_last=True, fuse_qkv=True)
    )
    req = _request([11, 12])
    req.width = req.height = manifests[model].min_size
    want = plain.generate(model, [req])[0]
    got = fast.generate(model, [req])[0]
    unet = fast.loaded(model).base.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any("Fused" in type(p).__name__ for p in unet.attn_processors.values())
    for a, b in zip(want, got, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2
