"""`bench/gpu_throughput.py` in tiny mode (bundled tiny-sd on the CPU), and its real-size parts.

The full mode needs a CUDA device; what can be checked without one is checked here: the script runs
end to end and prints a table with sane figures, the real-size builders make exactly the released
architectures (parameter counts), and the FLOP counter agrees with the 1.61 TFLOP per guided SD 1.5
step at 512x512 that the floor is computed from.
"""

from __future__ import annotations

import math
import re
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


def test_tiny_mode_prints_a_sane_table(bench: ModuleType, models_dir: Path, capsys: Any) -> None:
    argv = "--tiny --steps 2 --singles 2 --burst 3 --queue 4 --batch-max 2 --warmup 1".split()
    assert bench.main([*argv, "--models-dir", str(models_dir)]) == 0
    out = capsys.readouterr().out
    assert "TINY mode" in out and "UNet" in out
    rows = _rows(out)
    paths = [r[0] for r in rows]
    assert paths == [
        "tiny-sd: plain pipeline, 1 at a time",
        "tiny-sd: plain pipeline, 3 at once",
        "tiny-sd: worker path, 1 job at a time",
        "tiny-sd: worker path, queue of 4 (fetch 2)",
    ], out
    for path, images, rate, p50, p95, memory, vs_single, vs_batch, floor in rows:
        assert int(images) > 0, path
        assert 0 < float(rate) < 10_000 and math.isfinite(float(rate)), path
        assert 0 < float(p50) <= float(p95) < 60, path
        assert 0 < float(memory) < 64, path
        assert float(vs_single) > 0 and float(vs_batch) > 0, path
        assert 0 < float(floor.rstrip("%")) < 100, path
    assert rows[0][6] == "1.00" and rows[1][7] == "1.00"  # each baseline against itself
    assert [int(r[1]) for r in rows] == [2, 3, 2, 4]


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
