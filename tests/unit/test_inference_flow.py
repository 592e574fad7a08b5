"""SD 3.5 and Flux.1 on the bundled tiny-sd3 and tiny-flux: every kind, batching, their limits,
T5 left out, the compiled path's plumbing, and the offload choice of the memory budget."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from services.common.errors import EaselError
from services.inference.accel import Accel
from services.inference.engine import Engine, GenerationRequest, encode_png, read_png_params
from services.inference.engine.budget import (
    DEVICE,
    MODEL_OFFLOAD,
    SEQUENTIAL_OFFLOAD,
    choose_placement,
    resident_bytes,
)
from services.inference.engine.requests import fit
from services.inference.models import (
    FLOW_SAMPLERS,
    ManifestError,
    ModelManifest,
    discover_models,
    load_manifest,
    parse_manifest,
    write_manifest,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FLOW_MODELS = ("tiny-sd3", "tiny-flux")
GiB = 2**30


@pytest.fixture(scope="module")
def manifests(models_dir: Path) -> dict[str, ModelManifest]:
    models = discover_models(models_dir)
    return {name: models[name] for name in FLOW_MODELS}


@pytest.fixture(scope="module")
def engine(manifests: dict[str, ModelManifest]) -> Iterator[Engine]:
    yield Engine(manifests, device="cpu")


def _noise(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _mask(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (16, 16, size[0] - 16, size[1] - 16))
    return mask


def req(kind: str, seeds: list[int], size: tuple[int, int] = (80, 64), **kw: Any) -> GenerationRequest:
    base: dict[str, Any] = {
        "kind": kind,
        "prompt": "a red cat on a blue sea",
        "negative_prompt": "dark",
        "width": size[0],
        "height": size[1],
        "steps": 2,
        "guidance": 4.0,
        "sampler": "euler",
        "seeds": seeds,
        "strength": 0.7,
    }
    if kind != "txt2img":
        base["init_image"] = _noise(5)
    if kind == "inpaint":
        base["mask_image"] = _mask(size)
    base.update(kw)
    return GenerationRequest(**base)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("model", FLOW_MODELS)
@pytest.mark.parametrize("kind", ["txt2img", "img2img", "inpaint"])
def test_each_kind_makes_pngs_of_the_requested_size_and_batched_equals_alone(
    engine: Engine, model: str, kind: str
) -> None:
    [batch] = engine.generate(model, [req(kind, [11, 12])])
    [[alone]] = engine.generate(model, [req(kind, [12])])
    assert [img.size for img in batch] == [(80, 64), (80, 64)]
    assert np.array_equal(arr(batch[1]), arr(alone)), "the same seed gives the same image in a batch"
    assert not np.array_equal(arr(batch[0]), arr(batch[1])), "two seeds, two pictures"
    assert arr(batch[0]).std() > 1, "not a blank picture"
    params = {"model": model, "kind": kind, "seed": 11, "steps": 2, "guidance": 4.0, "sampler": "euler"}
    data = encode_png(batch[0], params)
    assert read_png_params(data) == params
    with Image.open(io.BytesIO(data)) as png:
        assert png.size == (80, 64)
        assert np.array_equal(arr(png), arr(batch[0]))
    if kind == "inpaint":
        # Outside the mask the input (fitted to the output size) is kept exactly.
        init = arr(fit(_noise(5), (80, 64), "RGB"))
        assert np.array_equal(arr(batch[0])[:16], init[:16])
        assert not np.array_equal(arr(batch[0])[16:48, 16:64], init[16:48, 16:64])


def test_flux_guidance_is_distilled_and_changes_the_picture(engine: Engine) -> None:
    """Flux runs one transformer row per image (no CFG) whatever the guidance; it still steers."""
    [[low]] = engine.generate("tiny-flux", [req("txt2img", [3], guidance=1.0)])
    [[high]] = engine.generate("tiny-flux", [req("txt2img", [3], guidance=5.0)])
    assert not np.array_equal(arr(low), arr(high))
    key_low = engine.compatible_key("tiny-flux", req("txt2img", [3], guidance=1.0))
    key_high = engine.compatible_key("tiny-flux", req("txt2img", [3], guidance=5.0))
    assert key_low != key_high, (
        "distilled guidance is an input of the call: different values, different calls"
    )


def test_karras_flow_sampler_runs_and_differs(engine: Engine) -> None:
    # Four steps: with two, both schedules are just their end points.
    [[euler]] = engine.generate("tiny-sd3", [req("txt2img", [4], steps=4)])
    [[karras]] = engine.generate("tiny-sd3", [req("txt2img", [4], steps=4, sampler="Euler Karras")])
    assert karras.size == (80, 64) and not np.array_equal(arr(euler), arr(karras))


@pytest.mark.parametrize(
    ("model", "changes", "code", "field"),
    [
        ("tiny-flux", {"width": 72}, "invalid_size", "width"),
        ("tiny-sd3", {"height": 88}, "invalid_size", "height"),
        ("tiny-flux", {"sampler": "dpmpp_2m"}, "unknown_sampler", "sampler"),
        ("tiny-sd3", {"sampler": "DPM++ 2M Karras"}, "unknown_sampler", "sampler"),
    ],
)
def test_family_limits_are_enforced(
    engine: Engine, model: str, changes: dict[str, Any], code: str, field: str
) -> None:
    with pytest.raises(EaselError) as err:
        engine.generate(model, [req("txt2img", [1], **changes)])
    assert err.value.code == code and err.value.field == field
    assert "16" in err.value.message or "euler" in err.value.message


def test_manifests_carry_the_family_defaults(manifests: dict[str, ModelManifest]) -> None:
    flux, sd3 = manifests["tiny-flux"], manifests["tiny-sd3"]
    assert flux.family == "flux" and sd3.family == "sd3"
    for m in (flux, sd3):
        assert m.samplers == FLOW_SAMPLERS and m.size_multiple == 16 and m.max_sequence_length == 32
    assert flux.default_guidance == 3.5 and sd3.default_guidance == 4.5 and sd3.t5


def test_manifest_fields_are_checked(tmp_path: Path) -> None:
    base = {
        "name": "m",
        "family": "flux",
        "kinds": ["txt2img"],
        "default_width": 1024,
        "default_height": 1024,
        "default_steps": 28,
        "default_guidance": 3.5,
        "default_sampler": "euler",
        "min_size": 256,
        "max_size": 2048,
        "max_steps": 100,
    }
    m = parse_manifest(base, tmp_path)
    # Absent fields take the family's values: 16-pixel steps and 256 T5 tokens for a flow model.
    assert (m.size_multiple, m.max_sequence_length, m.samplers, m.t5) == (16, 256, (), True)
    for bad, message in (
        ({"samplers": ["euler", "nope"]}, "samplers"),
        ({"samplers": ["euler_karras"]}, "default_sampler"),
        ({"default_width": 1032}, "size_multiple"),
        ({"max_sequence_length": 1024}, "max_sequence_length"),
        ({"t5": "no"}, "t5"),
        ({"family": "sd4"}, "family"),
    ):
        with pytest.raises(ManifestError, match=message):
            parse_manifest({**base, **bad}, tmp_path)
    # An SD 1.x manifest written before these fields existed still reads, with the old behaviour.
    old = parse_manifest({**base, "family": "sd1", "default_width": 512, "default_height": 512}, tmp_path)
    assert (old.size_multiple, old.max_sequence_length, old.samplers) == (8, 0, ())


def test_sd3_without_t5_loads_without_it_and_generates(
    manifests: dict[str, ModelManifest], tmp_path: Path
) -> None:
    folder = tmp_path / "tiny-sd3-no-t5"
    shutil.copytree(manifests["tiny-sd3"].path, folder)
    write_manifest(folder, replace(manifests["tiny-sd3"], name="tiny-sd3-no-t5", t5=False, path=folder))
    manifest = load_manifest(folder)
    assert manifest.t5 is False and json.loads((folder / "easel-model.json").read_text())["t5"] is False
    eng = Engine({"tiny-sd3-no-t5": manifest}, device="cpu")
    [[image]] = eng.generate("tiny-sd3-no-t5", [req("txt2img", [2])])
    assert image.size == (80, 64)
    loaded = eng.loaded("tiny-sd3-no-t5")
    assert loaded is not None and loaded.base.text_encoder_3 is None


# --- memory budget: where the weights live ------------------------------------------------------


# A Flux.1-dev-sized model in bf16: transformer, T5, CLIP, VAE.
FLUX_DEV = {"transformer": 23_800_000_000, "text_encoder_2": 9_520_000_000, "text_encoder": 246_000_000}
FLUX_DEV["vae"] = 168_000_000
CARD_24 = int(23.6 * GiB)  # what a 24 GiB card reports as its total
CARD_80 = int(79.2 * GiB)


def test_flux_dev_on_a_24_gib_card_is_model_offloaded() -> None:
    # The worker's default budget is half the card.
    assert choose_placement(FLUX_DEV, CARD_24 // 2, "cuda", CARD_24) == MODEL_OFFLOAD
    assert resident_bytes(FLUX_DEV, MODEL_OFFLOAD) == FLUX_DEV["transformer"]
    # A budget set to the whole card still cannot hold 33.7 GB of weights.
    assert choose_placement(FLUX_DEV, CARD_24, "cuda:0", CARD_24) == MODEL_OFFLOAD
    # On an 80 GiB card with a budget of 60 GiB it all stays on the GPU.
    assert choose_placement(FLUX_DEV, 60 * GiB, "cuda", CARD_80) == DEVICE
    assert resident_bytes(FLUX_DEV, DEVICE) == sum(FLUX_DEV.values())


def test_a_component_larger_than_the_card_streams_layer_by_layer() -> None:
    assert choose_placement(FLUX_DEV, 8 * GiB, "cuda", 16 * GiB) == SEQUENTIAL_OFFLOAD
    assert resident_bytes(FLUX_DEV, SEQUENTIAL_OFFLOAD) == 0


def test_a_cpu_never_offloads() -> None:
    assert choose_placement(FLUX_DEV, 1 * GiB, "cpu", 0) == DEVICE


def test_engine_reports_placement_and_the_png_records_offloading(manifests: dict[str, ModelManifest]) -> None:
    # A budget far below the tiny model's weights: on a CPU there is nowhere to offload to.
    eng = Engine({"tiny-flux": manifests["tiny-flux"]}, device="cpu", memory_budget_bytes=1024)
    [[image]] = eng.generate("tiny-flux", [req("txt2img", [1])])
    assert eng.placement("tiny-flux") == DEVICE and "easel_placement" not in image.info
    assert "placement" not in read_png_params(encode_png(image, {"seed": 1}))
    image.info["easel_placement"] = MODEL_OFFLOAD  # as the engine marks images from offloaded weights
    data = encode_png(image, {"seed": 1})
    assert read_png_params(data) == {"seed": 1, "placement": MODEL_OFFLOAD}
    with Image.open(io.BytesIO(data)) as png:
        assert "Offload: model-offload" in png.text["parameters"]  # type: ignore[attr-defined]


# --- the compiled path ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", FLOW_MODELS)
def test_compiled_path_serves_warmed_sizes_with_bucket_padding(
    manifests: dict[str, ModelManifest], model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's compiled path on the transformer families: the denoiser is compiled with static
    shapes (dynamo's eager backend here, so the CPU does not spend minutes in inductor; the GPU run
    uses inductor and CUDA graphs), warmed at load for the default size at every bucket, swapped in
    per call, and a batch is padded up to its bucket."""
    real_compile = torch.compile
    compiled_modules: list[Any] = []

    def eager_compile(module: Any, **kwargs: Any) -> Any:
        compiled_modules.append(module)
        return real_compile(module, backend="eager", fullgraph=kwargs["fullgraph"], dynamic=False)

    monkeypatch.setattr(torch, "compile", eager_compile)
    eager = Engine({model: manifests[model]}, device="cpu", batch_invariant=False)
    fast_engine = Engine(
        {model: manifests[model]},
        device="cpu",
        batch_invariant=False,
        accel=Accel(compile="default", buckets=(2,)),
    )
    fast_engine.load(model)
    fast = fast_engine.compiled(model)
    assert fast is not None and fast.sizes == {(64, 64)} and fast.denoiser == "transformer"
    loaded = fast_engine.loaded(model)
    assert loaded is not None and compiled_modules == [loaded.base.transformer]
    calls: list[int] = []
    original = fast.compiled

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["hidden_states"].shape[0])
        return original(*args, **kwargs)

    fast.runner._compiled = counting
    want = eager.generate(model, [req("txt2img", [5], size=(64, 64))])[0]
    got = fast_engine.generate(model, [req("txt2img", [5], size=(64, 64))])[0]
    assert calls, "the compiled denoiser ran"
    # One image padded to the bucket of two (SD 3.5 doubles rows for CFG: four).
    assert set(calls) == ({4} if model == "tiny-sd3" else {2})
    diff = np.abs(arr(want[0]) - arr(got[0]))
    assert diff.max() <= 2, diff.max()
    # A size it was not warmed for runs eager, never compiling on a user's time.
    calls.clear()
    [[other]] = fast_engine.generate(model, [req("txt2img", [5], size=(80, 64))])
    assert other.size == (80, 64) and not calls
    assert loaded.base.transformer is fast.eager, "the eager transformer is back after each call"


def test_warm_up_sizes_keep_to_the_families_multiples(manifests: dict[str, ModelManifest]) -> None:
    from types import SimpleNamespace

    from services.inference.engine.warmup import warm_sizes

    accel = Accel(compile="default", sizes=((96, 64), (72, 64), (64, 512)))
    flux = SimpleNamespace(manifest=manifests["tiny-flux"])
    # 72 is a multiple of 8, not of 16; 512 is past the model's max_size.
    assert warm_sizes(flux, accel) == [(64, 64), (96, 64)]  # type: ignore[arg-type]
