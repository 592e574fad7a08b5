"""The generation engine on the bundled tiny models: every kind, batching, cancelling, errors."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from services.common.errors import EaselError
from services.inference.engine import (
    Cancelled,
    Engine,
    GenerationRequest,
    batching,
    encode_png,
    read_png_params,
)
from services.inference.models import ModelManifest, discover_models, write_manifest
from services.inference.pngmeta import parse_a1111
from services.inference.schedulers import SAMPLERS
from services.inference.testmodel import build_tiny_sd, ensure_bundled

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Same folder as test_inference_models uses: whichever runs first builds, the other reuses.
    models = tmp_path_factory.getbasetemp() / "tiny-models"
    ensure_bundled(models)
    return models


@pytest.fixture(scope="session")
def manifests(tiny_models_dir: Path) -> dict[str, ModelManifest]:
    return discover_models(tiny_models_dir)


@pytest.fixture(scope="session")
def engine(manifests: dict[str, ModelManifest]) -> Iterator[Engine]:
    yield Engine(manifests, device="cpu")


def noise_image(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def square_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def req(kind: str = "txt2img", seeds: list[int] | None = None, **kw: object) -> GenerationRequest:
    base: dict[str, object] = {
        "kind": kind,
        "prompt": "a red cat",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance": 7.5,
        "sampler": "euler_a",
        "seeds": seeds or [1],
    }
    if kind != "txt2img":
        base["init_image"] = noise_image(7)
    if kind == "inpaint":
        base["mask_image"] = square_mask()
    base.update(kw)
    return GenerationRequest(**base)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# --- kinds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "size"),
    [
        ("txt2img", (64, 64)),
        ("img2img", (64, 64)),
        ("inpaint", (64, 64)),
        ("variation", (64, 64)),
        ("upscale", (128, 128)),
    ],
)
def test_each_kind_on_tiny_sd_makes_images_of_the_right_size(
    engine: Engine, kind: str, size: tuple[int, int]
) -> None:
    [images] = engine.generate("tiny-sd", [req(kind, seeds=[3, 4])])
    assert len(images) == 2
    assert all(img.size == size and img.mode == "RGB" for img in images)
    # Two seeds, two different pictures, neither blank.
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))
    assert pixels(images[0]).std() > 1


def test_non_square_txt2img(engine: Engine) -> None:
    [[image]] = engine.generate("tiny-sd", [req(width=96, height=64)])
    assert image.size == (96, 64)


def test_upscale_is_capped_by_max_size(engine: Engine) -> None:
    # 200x100 doubles to 400x200; the model's max_size of 256 shrinks that to 256x128.
    [[image]] = engine.generate("tiny-sd", [req("upscale", init_image=noise_image(1, (200, 100)))])
    assert image.size == (256, 128)


def test_inpaint_repaints_only_inside_the_mask(engine: Engine) -> None:
    init = noise_image(11)
    [[image]] = engine.generate("tiny-sd", [req("inpaint", init_image=init)])
    out, src = pixels(image), pixels(init)
    inside = (slice(16, 48), slice(16, 48))
    assert np.array_equal(out[:16], src[:16]) and np.array_equal(out[:, 48:], src[:, 48:])
    assert np.abs(out[inside] - src[inside]).mean() > 5


def test_img2img_starts_from_the_init_image(engine: Engine) -> None:
    init = noise_image(5)
    [[light]] = engine.generate("tiny-sd", [req("img2img", init_image=init, strength=0.25)])
    [[heavy]] = engine.generate("tiny-sd", [req("img2img", init_image=init, strength=1.0)])
    src = pixels(init)
    assert np.abs(pixels(light) - src).mean() < np.abs(pixels(heavy) - src).mean()


@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
def test_tiny_sdxl(engine: Engine, kind: str) -> None:
    [images] = engine.generate("tiny-sdxl", [req(kind, seeds=[1, 2], negative_prompt="blurry")])
    assert [img.size for img in images] == [(64, 64), (64, 64)]
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


def test_inpainting_checkpoint_with_nine_channel_unet(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-inpaint"
    build_tiny_sd(folder, inpainting=True)
    manifest = ModelManifest(
        name="tiny-inpaint",
        family="sd1",
        kinds=("inpaint",),
        default_width=64,
        default_height=64,
        default_steps=2,
        default_guidance=7.5,
        default_sampler="euler",
        min_size=64,
        max_size=128,
        max_steps=10,
        inpainting=True,
        path=folder,
        source="bundled",
    )
    write_manifest(folder, manifest)
    eng = Engine({"tiny-inpaint": manifest}, device="cpu")
    [[image]] = eng.generate("tiny-inpaint", [req("inpaint", steps=2)])
    assert image.size == (64, 64)
    with pytest.raises(EaselError) as err:
        eng.validate("tiny-inpaint", req("txt2img"))
    assert err.value.code == "kind_not_supported"


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_generates(engine: Engine, sampler: str) -> None:
    [[image]] = engine.generate("tiny-sd", [req(sampler=sampler, steps=2)])
    assert image.size == (64, 64)


def test_turbo_style_request_without_guidance(engine: Engine) -> None:
    [[a]] = engine.generate("tiny-sd", [req(steps=1, guidance=0.0)])
    [[b]] = engine.generate("tiny-sd", [req(steps=1, guidance=0.0, strength=0.5, kind="img2img")])
    assert a.size == b.size == (64, 64)


# --- batching -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_images_are_bit_identical_alone_and_batched(engine: Engine, model: str) -> None:
    batch = [
        req(seeds=[11], prompt="a red cat"),
        req(seeds=[12, 13], prompt="a blue dog", negative_prompt="ugly"),
        req(seeds=[14], prompt="a castle at night"),
    ]
    together = engine.generate(model, batch)
    assert [len(images) for images in together] == [1, 2, 1]
    for request, images in zip(batch, together, strict=True):
        for seed, image in zip(request.seeds, images, strict=True):
            [[alone]] = engine.generate(model, [replace(request, seeds=[seed])])
            assert np.array_equal(pixels(alone), pixels(image)), f"seed {seed} differs when batched"
    assert not np.array_equal(pixels(together[1][0]), pixels(together[1][1]))


def test_img2img_batched_equals_alone(engine: Engine) -> None:
    a = req("variation", seeds=[21], init_image=noise_image(1))
    b = req("variation", seeds=[22], init_image=noise_image(2), prompt="a green tree")
    together = engine.generate("tiny-sd", [a, b])
    [[alone_b]] = engine.generate("tiny-sd", [b])
    assert np.array_equal(pixels(together[1][0]), pixels(alone_b))


def test_compatible_key_groups_what_can_batch(engine: Engine) -> None:
    key = engine.compatible_key
    assert key("tiny-sd", req(prompt="x", seeds=[1])) == key("tiny-sd", req(prompt="y", seeds=[2, 3]))
    assert key("tiny-sd", req()) != key("tiny-sd", req(steps=3))
    assert key("tiny-sd", req()) != key("tiny-sd", req(sampler="ddim"))
    assert key("tiny-sd", req("upscale", init_image=noise_image(1, (64, 64)))) != key(
        "tiny-sd", req("upscale", init_image=noise_image(1, (32, 32)))
    )
    # A1111 and our spelling of a sampler batch together.
    assert key("tiny-sd", req(sampler="Euler a")) == key("tiny-sd", req(sampler="euler_a"))
    with pytest.raises(ValueError, match="compatible_key"):
        engine.generate("tiny-sd", [req(), req(steps=3)])


# --- progress and cancelling ----------------------------------------------------------------


def test_on_step_reports_every_step(engine: Engine) -> None:
    calls: list[tuple[int, int]] = []
    engine.generate("tiny-sd", [req()], on_step=lambda s, t: calls.append((s, t)) is None)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_on_step_false_cancels_after_that_step(engine: Engine) -> None:
    calls: list[tuple[int, int]] = []

    def on_step(step: int, total: int) -> bool:
        calls.append((step, total))
        return step < 2

    with pytest.raises(Cancelled):
        engine.generate("tiny-sd", [req(seeds=[1, 2])], on_step=on_step)
    assert calls == [(1, 4), (2, 4)]
    # The engine is usable right after a cancel.
    [[image]] = engine.generate("tiny-sd", [req()])
    assert image.size == (64, 64)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "request_", "code", "field"),
    [
        ("nope", req(), "model_not_found", "model"),
        ("tiny-sd", req(width=65), "invalid_size", "width"),
        ("tiny-sd", req(height=512), "invalid_size", "height"),
        ("tiny-sd", req(sampler="warp"), "unknown_sampler", "sampler"),
        ("tiny-sd", req("inpaint", mask_image=None), "missing_mask", "mask"),
        ("tiny-sd", req("img2img", init_image=None), "missing_init_image", "image"),
        ("tiny-sd", req(kind="colorize"), "kind_not_supported", "kind"),
        ("tiny-sd", req(steps=0), "invalid_steps", "steps"),
        ("tiny-sd", req(steps=51), "invalid_steps", "steps"),
        ("tiny-sd", req(guidance=-1.0), "invalid_guidance", "guidance"),
        ("tiny-sd", req(guidance=float("nan")), "invalid_guidance", "guidance"),
        ("tiny-sd", req("img2img", strength=0.0), "invalid_strength", "strength"),
        ("tiny-sd", req("img2img", strength=1.5), "invalid_strength", "strength"),
        ("tiny-sd", req(seeds=list(range(9))), "too_many_images", "n"),
        ("tiny-sd", req(prompt="   "), "invalid_prompt", "prompt"),
        ("tiny-sd", req(prompt="x" * 2001), "invalid_prompt", "prompt"),
        ("tiny-sd", req(negative_prompt="x" * 2001), "invalid_prompt", "negative_prompt"),
        ("tiny-sd", req(seeds=[-1]), "invalid_seed", "seed"),
        ("tiny-sd", req("upscale", init_image=noise_image(1, (16, 16))), "invalid_size", "image"),
    ],
)
def test_validation_errors_have_codes(
    engine: Engine, model: str, request_: GenerationRequest, code: str, field: str
) -> None:
    with pytest.raises(EaselError) as err:
        engine.validate(model, request_)
    assert (err.value.code, err.value.field) == (code, field)
    assert err.value.message.endswith(".")
    # generate() refuses the same way, before doing any work.
    with pytest.raises(EaselError) as err2:
        engine.generate(model, [request_])
    assert err2.value.code == code


def test_model_not_found_names_installed_models(engine: Engine) -> None:
    with pytest.raises(EaselError) as err:
        engine.load("sdxl-base")
    assert err.value.code == "model_not_found"
    assert "tiny-sd" in err.value.message and "tiny-sdxl" in err.value.message
    assert err.value.http_status == 404


def test_kind_not_in_manifest_is_refused(manifests: dict[str, ModelManifest]) -> None:
    only_txt = {"tiny-sd": replace(manifests["tiny-sd"], kinds=("txt2img",))}
    eng = Engine(only_txt, device="cpu")
    with pytest.raises(EaselError) as err:
        eng.validate("tiny-sd", req("img2img"))
    assert err.value.code == "kind_not_supported" and "txt2img" in err.value.message


# --- loading --------------------------------------------------------------------------------


def test_corrupted_weights_give_model_load_failed(tiny_models_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken-sd"
    shutil.copytree(tiny_models_dir / "tiny-sd", folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00garbage" * 100)
    models = discover_models(tiny_models_dir)
    models["broken-sd"] = replace(models["tiny-sd"], name="broken-sd", path=folder)
    eng = Engine(models, device="cpu")
    with pytest.raises(EaselError) as err:
        eng.load("broken-sd")
    assert err.value.code == "model_load_failed"
    assert "tiny-sd" in err.value.message and "make models" in err.value.message
    assert eng.loaded_models() == []
    with pytest.raises(EaselError) as err:
        eng.generate("broken-sd", [req()])
    assert err.value.code == "model_load_failed"


def test_lru_evicts_least_recently_used_within_budget(manifests: dict[str, ModelManifest]) -> None:
    # tiny-sd is about 5 MiB and tiny-sdxl about 7: a 9 MiB budget holds one at a time.
    eng = Engine(manifests, device="cpu", memory_budget_bytes=9 * 2**20)
    assert eng.load("tiny-sd") > 0
    assert eng.load("tiny-sd") == 0.0
    eng.load("tiny-sdxl")
    assert eng.loaded_models() == ["tiny-sdxl"]
    roomy = Engine(manifests, device="cpu", memory_budget_bytes=64 * 2**20)
    roomy.load("tiny-sd")
    roomy.load("tiny-sdxl")
    roomy.load("tiny-sd")  # now the most recently used
    assert roomy.loaded_models() == ["tiny-sdxl", "tiny-sd"]
    stats = roomy.memory_stats()
    assert stats["rss"] > 0 and 10 * 2**20 < stats["loaded_bytes"] < 64 * 2**20


def test_components_are_shared_between_kinds(engine: Engine) -> None:
    engine.generate("tiny-sd", [req("img2img")])
    engine.generate("tiny-sd", [req("inpaint")])
    loaded = engine.loaded("tiny-sd")
    assert loaded is not None
    unets = {id(loaded.pipe(task).unet) for task in ("txt2img", "img2img", "inpaint")}
    assert unets == {id(loaded.base.unet)}


def test_out_of_memory_retries_in_halves_then_fails(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    real = batching.run_batch
    sizes: list[int] = []

    def flaky(loaded, plan, items, on_step, one_by_one):  # type: ignore[no-untyped-def]
        sizes.append(len(items))
        if len(items) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(loaded, plan, items, on_step, one_by_one)

    monkeypatch.setattr(batching, "run_batch", flaky)
    [images] = engine.generate("tiny-sd", [req(seeds=[1, 2, 3, 4])])
    assert sizes == [4, 2, 2] and len(images) == 4
    [[alone]] = engine.generate("tiny-sd", [req(seeds=[3])])
    assert np.array_equal(pixels(alone), pixels(images[2]))

    def always(loaded, plan, items, on_step, one_by_one):  # type: ignore[no-untyped-def]
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(batching, "run_batch", always)
    with pytest.raises(EaselError) as err:
        engine.generate("tiny-sd", [req(seeds=[1, 2])])
    assert err.value.code == "out_of_memory" and "fewer images" in err.value.message


def test_bad_thread_setting_stops_with_its_name(
    manifests: dict[str, ModelManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_TORCH_THREADS", "many")
    with pytest.raises(SystemExit, match="EASEL_TORCH_THREADS"):
        Engine(manifests, device="cpu")


# --- PNG parameters -------------------------------------------------------------------------


PARAMS: dict[str, object] = {
    "prompt": "a cat, oil painting — 猫",
    "negative_prompt": "blurry",
    "model": "tiny-sd",
    "kind": "img2img",
    "width": 64,
    "height": 64,
    "steps": 4,
    "guidance": 7.5,
    "sampler": "dpmpp_2m_karras",
    "seed": 123456789012,
    "strength": 0.5,
}


def test_png_params_round_trip(engine: Engine) -> None:
    [[image]] = engine.generate("tiny-sd", [req()])
    data = encode_png(image, PARAMS)
    assert data.startswith(b"\x89PNG")
    assert read_png_params(data) == PARAMS
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(pixels(im), pixels(image))
        text = im.text  # type: ignore[attr-defined]
    assert "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5" in text["parameters"]
    expected = {k: v for k, v in PARAMS.items() if k != "kind"}
    assert parse_a1111(text["parameters"]) == {**expected, "extra": {"Version": "easel"}}


def test_read_png_params_falls_back_to_a1111_text() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "masterpiece, a castle\nNegative prompt: lowres\n"
        'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768, Model: "sd, v1", Clip skip: 2',
    )
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    params = read_png_params(buf.getvalue())
    assert params == {
        "prompt": "masterpiece, a castle",
        "negative_prompt": "lowres",
        "steps": 20,
        "sampler": "euler_a",
        "guidance": 7.0,
        "seed": 42,
        "width": 512,
        "height": 768,
        "model": "sd, v1",
        "extra": {"Clip skip": "2"},
    }
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    assert read_png_params(plain.getvalue()) == {}
    with pytest.raises(EaselError) as err:
        read_png_params(b"not an image")
    assert err.value.code == "invalid_image"
