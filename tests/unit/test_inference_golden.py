"""Golden pixels: a fixed set of generations must keep their exact pixels across engine refactors.

The hashes in fixtures/golden_pixels.json were recorded with the engine as it was before it became a
package (one module per family); any change to how a request reaches the pipeline that changes a
single pixel fails here. CPU generation is deterministic on one machine (checked twice before
recording); float kernels can differ between CPU types, so after moving to another CPU model,
re-record with EASEL_GOLDEN_RECORD=1 on the old code first.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.inference.engine import Engine, GenerationRequest
from services.inference.models import discover_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURE = Path(__file__).parent / "fixtures" / "golden_pixels.json"


def _noise(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


# name -> (model, kind, sampler, seeds, guidance)
CASES: dict[str, tuple[str, str, str, list[int], float]] = {}
for _model in ("tiny-sd", "tiny-sdxl"):
    for _kind in ("txt2img", "img2img", "inpaint", "upscale", "variation"):
        CASES[f"{_model}-{_kind}-single"] = (_model, _kind, "euler_a", [3], 7.5)
        CASES[f"{_model}-{_kind}-batched"] = (_model, _kind, "euler_a", [3, 4], 7.5)
    CASES[f"{_model}-txt2img-dpmpp_2m"] = (_model, "txt2img", "dpmpp_2m", [5, 6], 7.5)
    CASES[f"{_model}-txt2img-ddim-noguidance"] = (_model, "txt2img", "ddim", [7], 1.0)


def _request(kind: str, sampler: str, seeds: list[int], guidance: float) -> GenerationRequest:
    return GenerationRequest(
        kind=kind,
        prompt="a red cat on a blue sea",
        negative_prompt="dark" if kind == "img2img" else "",
        width=64,
        height=64,
        steps=3,
        guidance=guidance,
        sampler=sampler,
        seeds=seeds,
        strength=0.7,
        init_image=None if kind == "txt2img" else _noise(11),
        mask_image=_mask() if kind == "inpaint" else None,
    )


def _digest(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    return f"{rgb.size[0]}x{rgb.size[1]}:" + hashlib.sha256(rgb.tobytes()).hexdigest()[:32]


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> Iterator[Engine]:
    models = discover_models(models_dir)
    yield Engine({k: v for k, v in models.items() if k in ("tiny-sd", "tiny-sdxl")}, device="cpu")


def compute(engine: Engine) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, (model, kind, sampler, seeds, guidance) in CASES.items():
        [images] = engine.generate(model, [_request(kind, sampler, seeds, guidance)])
        out[name] = [_digest(img) for img in images]
    return out


def test_pixels_match_the_recorded_golden_hashes(engine: Engine) -> None:
    got = compute(engine)
    if os.environ.get("EASEL_GOLDEN_RECORD") == "1":
        FIXTURE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip(f"recorded {len(got)} cases into {FIXTURE}")
    want = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert set(got) == set(want)
    changed = sorted(name for name in got if got[name] != want[name])
    assert not changed, f"pixels changed for: {', '.join(changed)}"
