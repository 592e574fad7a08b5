"""Model manifests, discovery, samplers, the bundled test models and the hub fetch helpers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import EaselError
from services.inference import fetch
from services.inference.models import (
    KINDS,
    MANIFEST_FILE,
    ManifestError,
    ModelsDirError,
    discover_models,
    load_manifest,
    parse_manifest,
    write_manifest,
)
from services.inference.schedulers import (
    A1111_SAMPLERS,
    SAMPLERS,
    make_scheduler,
    resolve_sampler,
)
from services.inference.testmodel import SEED, build_tiny_sd, build_vocab, ensure_bundled

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled models, built once per session (the engine tests reuse the same folder)."""
    models = tmp_path_factory.getbasetemp() / "tiny-models"
    ensure_bundled(models)
    return models


GOOD = {
    "name": "toy",
    "family": "sd1",
    "kinds": ["txt2img", "img2img"],
    "default_width": 512,
    "default_height": 512,
    "default_steps": 30,
    "default_guidance": 7.5,
    "default_sampler": "euler_a",
    "min_size": 256,
    "max_size": 1024,
    "max_steps": 150,
    "inpainting": False,
    "source": "bundled",
}


def _fake_model(folder: Path, manifest: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (folder / MANIFEST_FILE).write_text(text)
    return folder


# --- discovery ------------------------------------------------------------------------------


def test_discover_finds_every_bundled_model(tiny_models: Path) -> None:
    models = discover_models(tiny_models)
    assert set(models) == {"tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux"}
    assert (models["tiny-sd3"].family, models["tiny-flux"].family) == ("sd3", "flux")
    sd, xl = models["tiny-sd"], models["tiny-sdxl"]
    assert (sd.family, xl.family) == ("sd1", "sdxl")
    assert sd.kinds == KINDS and xl.kinds == KINDS
    assert (sd.default_width, sd.default_height, sd.min_size, sd.max_size) == (64, 64, 64, 256)
    assert sd.path == tiny_models / "tiny-sd" and sd.source == "bundled"
    assert xl.is_sdxl and not sd.is_sdxl


def test_discover_missing_dir_says_to_run_make_models(tmp_path: Path) -> None:
    with pytest.raises(ModelsDirError, match="make models"):
        discover_models(tmp_path / "nope")


def test_discover_empty_dir_says_to_run_make_models(tmp_path: Path) -> None:
    (tmp_path / ".building-x").mkdir()  # in-progress builds do not count
    with pytest.raises(ModelsDirError, match=r"no models in .*make models"):
        discover_models(tmp_path)


def test_discover_skips_broken_manifests_and_logs_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_model(tmp_path / "good", GOOD)
    _fake_model(tmp_path / "garbled", "{not json")
    _fake_model(tmp_path / "upper", {**GOOD, "name": "Upper.Case"})
    _fake_model(tmp_path / "dup", GOOD)  # same name as "good"
    (tmp_path / "no-index").mkdir()
    (tmp_path / "no-index" / MANIFEST_FILE).write_text(json.dumps({**GOOD, "name": "no-index"}))
    with caplog.at_level(logging.WARNING, logger="services.inference.models"):
        models = discover_models(tmp_path)
    assert list(models) == ["toy"]
    assert models["toy"].path in (tmp_path / "good", tmp_path / "dup")
    logged = caplog.text
    assert "garbled" in logged and "unreadable" in logged
    assert "upper" in logged and "name must be lowercase" in logged
    assert "model_index.json is missing" in logged
    assert "already used" in logged


def test_discover_with_only_broken_models_raises(tmp_path: Path) -> None:
    _fake_model(tmp_path / "garbled", "[]")
    with pytest.raises(ModelsDirError):
        discover_models(tmp_path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"family": "sd4"}, "family"),
        ({"kinds": []}, "kinds"),
        ({"kinds": ["txt2img", "paint"]}, "kinds"),
        ({"default_width": 500}, "multiples of 8"),
        ({"default_width": 2048}, "default_width"),
        ({"default_steps": 200}, "default_steps"),
        ({"default_guidance": "high"}, "default_guidance"),
        ({"default_sampler": "magic"}, "default_sampler"),
        ({"min_size": 300}, "min_size"),
        ({"inpainting": "yes"}, "inpainting"),
        ({"name": "a.b"}, "name"),
    ],
)
def test_manifest_errors_name_the_field(change: dict[str, object], field: str, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=field):
        parse_manifest({**GOOD, **change}, tmp_path)


def test_write_manifest_round_trips(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{}")
    manifest = parse_manifest(GOOD, tmp_path)
    write_manifest(tmp_path, replace(manifest, default_steps=12))
    again = load_manifest(tmp_path)
    assert again == replace(manifest, default_steps=12)
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["kinds"] == ["txt2img", "img2img"]


# --- samplers -------------------------------------------------------------------------------


def test_required_samplers_exist_with_a1111_names() -> None:
    for name in ("euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "pndm", "lms", "heun", "unipc"):
        assert name in SAMPLERS
    for label, ours in {
        "Euler a": "euler_a",
        "Euler": "euler",
        "DPM++ 2M": "dpmpp_2m",
        "DPM++ 2M Karras": "dpmpp_2m_karras",
        "DDIM": "ddim",
        "LMS": "lms",
        "Heun": "heun",
        "UniPC": "unipc",
        "PLMS": "pndm",
    }.items():
        assert A1111_SAMPLERS[label] == ours
        assert resolve_sampler(label) == ours


def test_resolve_sampler_spellings_and_schedules() -> None:
    assert resolve_sampler("dpmpp_2m") == "dpmpp_2m"
    assert resolve_sampler("euler A") == "euler_a"
    assert resolve_sampler("DPM++ 2M", "Karras") == "dpmpp_2m_karras"
    assert resolve_sampler("DPM++ 2M Karras", "karras") == "dpmpp_2m_karras"
    assert resolve_sampler("Euler a", "Automatic") == "euler_a"


def test_unknown_sampler_names_the_valid_ones() -> None:
    with pytest.raises(EaselError) as err:
        resolve_sampler("warp drive")
    assert err.value.code == "unknown_sampler" and err.value.field == "sampler"
    assert "euler_a" in err.value.message and "DPM++ 2M Karras" in err.value.message


def test_unknown_or_impossible_schedule_is_refused() -> None:
    with pytest.raises(EaselError) as err:
        resolve_sampler("Euler", "exponential")
    assert err.value.code == "unknown_scheduler" and err.value.field == "scheduler"
    with pytest.raises(EaselError) as err:
        resolve_sampler("DDIM", "karras")
    assert err.value.code == "unknown_scheduler"


def test_every_sampler_builds_on_a_model_config(tiny_models: Path) -> None:
    config = json.loads((tiny_models / "tiny-sd" / "scheduler" / "scheduler_config.json").read_text())
    for name in SAMPLERS:
        scheduler = make_scheduler(name, config)
        scheduler.set_timesteps(4)
        assert len(scheduler.timesteps) >= 4, name
    assert make_scheduler("dpmpp_2m_karras", config).config.use_karras_sigmas is True
    # The model's own training schedule carries over.
    assert make_scheduler("ddim", config).config.beta_schedule == "scaled_linear"


def test_lms_coefficients_match_numeric_integration() -> None:
    scheduler = make_scheduler(
        "lms", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    )
    scheduler.set_timesteps(10)
    sig = [float(s) for s in scheduler.sigmas]
    t, order = 5, 4
    for current in range(order):
        taus = np.linspace(sig[t], sig[t + 1], 200_001)
        prod = np.ones_like(taus)
        for k in range(order):
            if k != current:
                prod *= (taus - sig[t - k]) / (sig[t - current] - sig[t - k])
        expected = float(np.sum((prod[1:] + prod[:-1]) / 2 * np.diff(taus)))
        assert scheduler.get_lms_coefficient(order, t, current) == pytest.approx(expected, rel=1e-6)


# --- bundled models -------------------------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_bundled_build_is_deterministic(tmp_path: Path, tiny_models: Path) -> None:
    build_tiny_sd(tmp_path / "again", SEED)
    build_tiny_sd(tmp_path / "other", SEED + 1)
    original = _digest(tiny_models / "tiny-sd")
    assert len(original) == 3  # unet, vae, text encoder
    assert _digest(tmp_path / "again") == original
    assert _digest(tmp_path / "other") != original


def test_ensure_bundled_skips_present_models(tiny_models: Path) -> None:
    before = (tiny_models / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert ensure_bundled(tiny_models) == []
    after = (tiny_models / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert before == after


def test_tokenizer_loads_offline_and_covers_any_prompt(tiny_models: Path, tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_models / "tiny-sdxl" / "tokenizer", local_files_only=True)
    vocab, _ = build_vocab()
    ids = tok("A portrait of a cat, oil painting — 猫 🐱 #42").input_ids
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert all(0 <= i < 1000 for i in ids)
    assert tok.convert_ids_to_tokens(tok("the cat").input_ids)[1:3] == ["the</w>", "cat</w>"]
    padded = tok("cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77
    # The plain vocab.json + merges.txt pair (what transformers 4.x loads) gives the same ids.
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny_models / "tiny-sd" / "tokenizer" / name, plain / name)
    tok2 = CLIPTokenizer(vocab=str(plain / "vocab.json"), merges=str(plain / "merges.txt"))
    assert tok2("A portrait of a cat 猫").input_ids == tok("A portrait of a cat 猫").input_ids


# --- fetch ----------------------------------------------------------------------------------


def test_choose_files_picks_one_precision_and_skips_extras() -> None:
    files = [
        "model_index.json",
        "README.md",
        "v1-5-pruned.ckpt",
        "sd_xl_base_1.0.safetensors",
        "safety_checker/config.json",
        "safety_checker/model.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "tokenizer/tokenizer_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
    ]
    got = set(fetch.choose_files(files, "fp16"))
    assert got == {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "tokenizer/tokenizer_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
    }
    full = set(fetch.choose_files(files, None))
    assert "text_encoder/model.safetensors" in full and "text_encoder/model.fp16.safetensors" not in full
    assert "unet/diffusion_pytorch_model.safetensors.index.json" in full
    assert "unet/diffusion_pytorch_model-00001-of-00002.safetensors" in full


def _hub_folder(
    root: Path, cls: str, hidden: int = 768, in_channels: int = 4, prediction: str = "epsilon"
) -> Path:
    folder = root / cls
    for sub in ("unet", "text_encoder", "scheduler"):
        (folder / sub).mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    (folder / "unet" / "config.json").write_text(json.dumps({"in_channels": in_channels}))
    (folder / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    return folder


@pytest.mark.parametrize(
    ("cls", "source", "extra", "family", "size", "steps", "guidance", "inpainting"),
    [
        ("StableDiffusionPipeline", "runwayml/stable-diffusion-v1-5", {}, "sd1", 512, 30, 7.5, False),
        (
            "StableDiffusionPipeline",
            "stabilityai/stable-diffusion-2-1",
            {"hidden": 1024, "prediction": "v_prediction"},
            "sd2",
            768,
            30,
            7.5,
            False,
        ),
        ("StableDiffusionPipeline", "stabilityai/sd-turbo", {"hidden": 1024}, "sd-turbo", 512, 1, 0.0, False),
        (
            "StableDiffusionXLPipeline",
            "stabilityai/stable-diffusion-xl-base-1.0",
            {},
            "sdxl",
            1024,
            30,
            5.0,
            False,
        ),
        ("StableDiffusionXLPipeline", "stabilityai/sdxl-turbo", {}, "sdxl-turbo", 512, 1, 0.0, False),
        (
            "StableDiffusionInpaintPipeline",
            "org/sd-inpainting",
            {"in_channels": 9},
            "sd1",
            512,
            30,
            7.5,
            True,
        ),
    ],
)
def test_guess_manifest_from_configs(
    tmp_path: Path,
    cls: str,
    source: str,
    extra: dict[str, object],
    family: str,
    size: int,
    steps: int,
    guidance: float,
    inpainting: bool,
) -> None:
    folder = _hub_folder(tmp_path, cls, **extra)  # type: ignore[arg-type]
    name = fetch.slug_for(source)
    manifest = fetch.guess_manifest(folder, source, name)
    assert (manifest.family, manifest.default_width, manifest.default_steps) == (family, size, steps)
    assert manifest.default_guidance == guidance and manifest.inpainting is inpainting
    assert manifest.kinds == (("inpaint",) if inpainting else KINDS)
    write_manifest(folder, manifest)
    assert discover_models(tmp_path)[name].source == source


def test_guess_manifest_refuses_other_pipelines(tmp_path: Path) -> None:
    folder = _hub_folder(tmp_path, "WanPipeline")
    with pytest.raises(fetch.FetchError, match="WanPipeline"):
        fetch.guess_manifest(folder, "wan-ai/wan", "wan")


@pytest.mark.parametrize(
    ("cls", "source", "guidance_embeds", "t5", "want"),
    [
        ("FluxPipeline", "black-forest-labs/FLUX.1-dev", True, True, ("flux", 28, 3.5, 512, True)),
        ("FluxPipeline", "black-forest-labs/FLUX.1-schnell", False, True, ("flux", 4, 0.0, 256, True)),
        (
            "StableDiffusion3Pipeline",
            "stabilityai/stable-diffusion-3.5-large",
            None,
            True,
            ("sd3", 28, 4.0, 256, True),
        ),
        (
            "StableDiffusion3Pipeline",
            "org/sd3.5-medium-no-t5",
            None,
            False,
            ("sd3", 28, 4.0, 256, False),
        ),
    ],
)
def test_guess_manifest_for_sd3_and_flux(
    tmp_path: Path,
    cls: str,
    source: str,
    guidance_embeds: bool | None,
    t5: bool,
    want: tuple[object, ...],
) -> None:
    folder = tmp_path / "m"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    config = {} if guidance_embeds is None else {"guidance_embeds": guidance_embeds}
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    if t5:
        (folder / "text_encoder_3").mkdir()
    m = fetch.guess_manifest(folder, source, "m")
    assert (m.family, m.default_steps, m.default_guidance, m.max_sequence_length, m.t5) == want
    assert m.samplers == ("euler", "euler_karras") and m.size_multiple == 16 and m.default_width == 1024
    write_manifest(folder, m)
    assert load_manifest(folder) == m


def test_slugs_are_model_names() -> None:
    assert fetch.slug_for("stabilityai/stable-diffusion-xl-base-1.0") == "stable-diffusion-xl-base-1-0"
    assert fetch.slug_for("Org/SD_Turbo") == "sd-turbo"


def test_fetch_fails_in_one_line_when_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(fetch.FetchError, match="HF_HUB_OFFLINE"):
        fetch.fetch_model("stabilityai/sd-turbo", tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(fetch.FetchError, match="cannot reach the Hugging Face hub") as err:
        fetch.fetch_model("stabilityai/sd-turbo", tmp_path, endpoint=f"http://127.0.0.1:{port}")
    assert "\n" not in str(err.value)
    with pytest.raises(fetch.FetchError, match="org/name"):
        fetch.fetch_model("not a repo", tmp_path)


def test_fetch_cli_builds_bundled_and_reports_errors(
    tiny_models: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fetch.main(["--models-dir", str(tiny_models), "--bundled"]) == 0
    assert "present" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch.main(["--models-dir", str(tiny_models), "org/model"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("easel: HF_HUB_OFFLINE is set")
