"""`bench/gpu_throughput.py` in tiny mode (bundled tiny-sd on the CPU), and its real-size parts.

The full mode needs a CUDA device; what can be checked without one is checked here: the script runs
end to end and prints a table with sane figures, the worker's compiled path (compiled on the CPU)
serves the jobs with the plain pipeline's images and a restarted process finds it in the compile
cache, the variants ask the engine for the GPU recipe on CUDA, the real-size builders make exactly
the released architectures (parameter counts), and the FLOP counter agrees with the 1.61 TFLOP per
guided SD 1.5 step at 512x512 that the floor is computed from.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_throughput

        yield gpu_throughput
    finally:
        sys.path.remove(str(BENCH))


def _rows(out: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| tiny-sd: ")
    ]


def _check_rows(rows: list[list[str]]) -> None:
    for path, images, rate, p50, p95, memory, vs_single, vs_batch, floor, max_diff, mean_diff in rows:
        assert int(images) > 0, path
        assert 0 < float(rate) < 10_000 and math.isfinite(float(rate)), path
        assert 0 < float(p50) <= float(p95) < 60, path
        assert 0 < float(memory) < 64, path
        assert float(vs_single) > 0 and float(vs_batch) > 0, path
        assert 0 < float(floor.rstrip("%")) < 100, path
        if "worker path" in path:
            # The worker's image for a prompt and seed is the plain pipeline's, within the tolerance.
            assert 0 <= float(max_diff) <= 8 and 0 <= float(mean_diff) <= 1, path
        else:
            assert max_diff == mean_diff == ("ref" if "1 at a time" in path else "—"), path


def test_tiny_mode_prints_a_sane_table(bench: ModuleType, models_dir: Path, capsys: Any) -> None:
    argv = (
        "--tiny --steps 2 --singles 2 --burst 3 --queue 4 --batch-max 2 --warmup 1 --variants eager".split()
    )
    assert bench.main([*argv, "--models-dir", str(models_dir)]) == 0
    out = capsys.readouterr().out
    assert "TINY mode" in out and "UNet" in out
    rows = _rows(out)
    table = [r for r in rows if len(r) == 11]
    paths = [r[0] for r in table]
    assert paths == [
        "tiny-sd: plain pipeline, 1 at a time",
        "tiny-sd: plain pipeline, 3 at once",
        "tiny-sd: worker path [eager], 1 job at a time",
        "tiny-sd: worker path [eager], queue of 4 (fetch 2)",
    ], out
    _check_rows(table)
    assert table[0][6] == "1.00" and table[1][7] == "1.00"  # each baseline against itself
    assert [int(r[1]) for r in table] == [2, 3, 2, 4]
    # The variants table: an eager engine loads without compiling anything.
    (eager,) = [r for r in rows if r[0] == "tiny-sd: eager"]
    assert float(eager[1]) >= 0 and eager[2] == "—" and eager[3:5] == ["0", "0"], out
    assert "- accuracy: max |Δ| " in out and ": within" in out
    # The restart probe restarts the compiled variant, which this run did not measure.
    assert "- restart to first image: not measured" in out


# Slow (a cold CPU compile): `make test-slow`, which CI runs too. tests/unit/test_gpu_check.py runs
# the same compiled variant and restart probe through bench/gpu_check.sh in `make test`.
@pytest.mark.slow
@pytest.mark.timeout(420)  # a cold CPU compile of two batch sizes: a minute or more on a busy machine
def test_compiled_variant_and_a_warm_restart(models_dir: Path) -> None:
    """The compiled path end to end on the CPU: compiled at load (cold cache, in the bench's
    process), serving the run's jobs within the accuracy tolerance, and a restarted process that
    finds every graph in the compile cache.

    In a process of its own: compiling leaves process-wide state behind (dynamo's counters and
    caches, inductor's config) that other tests in this one would see.
    """
    argv = (
        "--tiny --steps 2 --singles 1 --burst 2 --queue 4 --batch-max 2 --warmup 1 "
        # One bucket: one cold compile (the jobs of one image are padded to two).
        "--variants eager,compiled --buckets 2"
    ).split()
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_throughput.py"), *argv, "--models-dir", str(models_dir)],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    rows = _rows(out)
    table = [r for r in rows if len(r) == 11]
    compiled = [r for r in table if "[compiled]" in r[0]]
    assert [r[0] for r in compiled] == [
        "tiny-sd: worker path [compiled], 1 job at a time",
        "tiny-sd: worker path [compiled], queue of 4 (fetch 2)",
    ], out
    _check_rows(table)
    (warm,) = [r for r in rows if r[0] == "tiny-sd: compiled"]
    assert float(warm[2]) > 0 and int(warm[4]) > 0, out  # warmed, and compiled cold
    assert warm[5] == "compiled: 64x64 at batch 2", out  # the timed jobs ran on the compiled UNet
    restart = re.search(
        r"- restart to first image \(compiled, fresh process\): ([\d.]+) s .* compile cache (\d+) hits, "
        r"(\d+) misses$",
        out,
        re.MULTILINE,
    )
    assert restart is not None, out
    seconds, hits, misses = float(restart[1]), int(restart[2]), int(restart[3])
    assert 0 < seconds < 300 and hits > 0 and misses == 0, out


def test_variants_build_the_cuda_recipe(bench: ModuleType, tmp_path: Path) -> None:
    """What the variants ask of the engine on a GPU, checked without one."""
    from services.inference.accel import DEFAULT_BUCKETS, Accel

    args = bench.parse_args([])
    buckets = bench._buckets(args, True, 16)
    assert buckets == DEFAULT_BUCKETS
    assert bench._buckets(args, False, 4) == (1, 4)
    assert bench._buckets(bench.parse_args(["--buckets", "16,1"]), True, 16) == (1, 16)
    setup = bench.Setup("cuda", buckets, (), tmp_path, "reduce-overhead")
    default = bench.variant_accel("worker-default", setup)
    assert default == Accel.resolve("cuda", cache_dir=tmp_path)
    assert default.compile == "reduce-overhead" and default.channels_last and default.fuse_qkv
    assert bench.variant_accel("compiled", setup) == default
    no_graphs = bench.variant_accel("compiled-no-cudagraphs", setup)
    assert no_graphs.compile == "max-autotune-no-cudagraphs" and no_graphs.channels_last
    assert bench.variant_accel("compiled-vae", setup) == dataclasses.replace(default, compile_vae=True)
    assert bench.variant_accel("eager", setup) == Accel()
    assert bench.variant_accel("channels-last", setup) == Accel(channels_last=True)
    assert bench.variant_accel("fused-qkv", setup) == Accel(fuse_qkv=True)
    # On a CPU the worker runs eager, and so does its variant here (no cache folder either).
    cpu = bench.Setup("cpu", (1, 4), ((96, 96),), tmp_path, "default")
    assert bench.variant_accel("worker-default", cpu) == Accel.resolve(
        "cpu", buckets=(1, 4), sizes=((96, 96),)
    )
    assert not bench.variant_accel("worker-default", cpu).compiled
    compiled = bench.variant_accel("compiled", cpu)
    assert (compiled.compile, compiled.buckets, compiled.sizes, compiled.cache_dir) == (
        "default",
        (1, 4),
        ((96, 96),),
        tmp_path,
    )
    assert not compiled.channels_last and not compiled.fuse_qkv
    for wrong in (["--variants", "eager,warp"], ["--buckets", "0,2"]):
        with pytest.raises(SystemExit):
            bench.parse_args(wrong)


def test_real_size_builders_make_the_released_architectures(bench: ModuleType) -> None:
    import _models
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def params(module: Any) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    with torch.device("meta"):  # shapes only: no memory, no time
        assert round(params(UNet2DConditionModel(**_models.sd15_unet_config())), 1) == 859.5
        assert round(params(UNet2DConditionModel(**_models.sdxl_unet_config())), 1) == 2567.5
        assert round(params(CLIPTextModel(_models._text_config(768, 12, 12, "quick_gelu"))), 1) == 123.1
        big_g = CLIPTextModelWithProjection(_models._text_config(1280, 32, 20, "gelu", projection_dim=1280))
        assert round(params(big_g), 1) == 694.7
        assert isinstance(_models._vae(512, 0.18215), AutoencoderKL)
        assert round(params(_models._vae(512, 0.18215)), 1) == 83.7


def test_counted_flops_match_the_sd15_figure(bench: ModuleType) -> None:
    import _models

    counted = bench.count_step_tflop(_models.sd15_unet_config(), 512, sdxl=False)
    assert abs(counted - bench.SD15_STEP_TFLOP_512) / bench.SD15_STEP_TFLOP_512 < 0.01
    assert re.match(r"^\d", f"{counted:.3f}")
