"""Single-file checkpoints: export, import, the same pixels, and every way an import is refused."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from services.common.errors import EaselError
from services.inference.engine import Engine, GenerationRequest, encode_png
from services.inference.ldm_export import export_sd_checkpoint
from services.inference.models import discover_models
from services.inference.singlefile import (
    fits,
    import_checkpoint,
    read_header,
    sha256_of,
    short_hash,
    sync_checkpoints,
)
from services.inference.testmodel import ensure_bundled

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model volume of its own holding the bundled tiny models."""
    models = tmp_path_factory.mktemp("singlefile-models")
    ensure_bundled(models)
    return models


@pytest.fixture(scope="module")
def exported(volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-sd written as an A1111-layout single file, outside the volume."""
    return export_sd_checkpoint(
        volume / "tiny-sd", tmp_path_factory.mktemp("files") / "Tiny SD v1.safetensors"
    )


def names(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir())


def refused(code: str, call: object) -> EaselError:
    assert callable(call)
    with pytest.raises(EaselError) as info:
        call()
    assert info.value.code == code, info.value.message
    assert info.value.message.endswith(".")
    return info.value


def txt2img(seed: int) -> GenerationRequest:
    return GenerationRequest(
        kind="txt2img",
        prompt="a red cat",
        negative_prompt="",
        width=64,
        height=64,
        steps=4,
        guidance=7.5,
        sampler="euler_a",
        seeds=[seed, seed + 1],
    )


def test_the_export_uses_the_single_file_layout(exported: Path) -> None:
    keys = set(read_header(exported))
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.decoder.conv_out.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert not any(k.startswith(("unet.", "vae.", "down_blocks.")) for k in keys)


@pytest.mark.parametrize(("base", "family"), [("tiny-sd", "sd1"), ("tiny-sdxl", "sdxl")])
def test_an_imported_file_gives_the_pixels_of_its_diffusers_folder(
    volume: Path, tmp_path: Path, base: str, family: str
) -> None:
    exported = export_sd_checkpoint(volume / base, tmp_path / f"{base} Export v1.safetensors")
    name = f"{base}-export-v1"
    before = names(volume)
    manifest = import_checkpoint(exported, volume)
    assert manifest.name == name
    assert manifest.family == family and manifest.checkpoint == f"{name}.safetensors"
    assert manifest.sha256 == sha256_of(exported) and short_hash(manifest.sha256) == manifest.sha256[:10]
    assert manifest.config == f"model:{base}"  # matched by shape to the installed tiny model's configs
    assert names(volume) == sorted([*before, name])
    # The weights are not converted on disk: the folder holds configs and the file itself.
    weights = [p for p in (volume / name).rglob("*.safetensors")]
    assert [p.name for p in weights] == [f"{name}.safetensors"]

    installed = discover_models(volume)
    assert installed[name].sha256 == manifest.sha256
    engine = Engine(installed, device="cpu")
    [from_folder] = engine.generate(base, [txt2img(5)])
    [from_file] = engine.generate(name, [txt2img(5)])
    for a, b in zip(from_folder, from_file, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # Its PNGs carry A1111's "Model hash" (the short sha256), as model sites expect.
    with Image.open(io.BytesIO(encode_png(from_file[0], {"model": name, "prompt": "a red cat"}))) as png:
        assert f"Model hash: {manifest.sha256[:10]}, Model: {name}" in png.text["parameters"]
    with Image.open(io.BytesIO(encode_png(from_folder[0], {"model": base, "prompt": "a red cat"}))) as png:
        assert "Model hash" not in png.text["parameters"]  # a diffusers folder has no one file to hash
    assert np.asarray(from_file[0]).std() > 1  # a picture, not a blank


def test_a_pickle_is_refused_with_how_to_convert(volume: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, ckpt)
    before = names(volume)
    error = refused("checkpoint_pickle", lambda: import_checkpoint(ckpt, volume))
    assert "safetensors" in error.message and "run code" in error.message
    assert names(volume) == before


def test_a_truncated_file_is_refused_and_nothing_is_left(
    volume: Path, exported: Path, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])
    before = names(volume)
    refused("checkpoint_corrupt", lambda: import_checkpoint(cut, volume))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    refused("checkpoint_corrupt", lambda: import_checkpoint(garbage, volume))
    assert names(volume) == before


def test_tensors_of_no_family_are_refused(volume: Path, tmp_path: Path) -> None:
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    error = refused("checkpoint_unknown_family", lambda: import_checkpoint(lora, volume))
    assert "LoRA" in error.message


def test_a_recognised_but_unsupported_family_is_named(volume: Path, tmp_path: Path) -> None:
    flux = tmp_path / "flux.safetensors"
    save_file(
        {
            "double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2),
            "guidance_in.in_layer.bias": torch.zeros(2),
            "img_in.weight": torch.zeros(8, 64),
            "time_in.in_layer.bias": torch.zeros(2),
        },
        str(flux),
    )
    error = refused("checkpoint_family_unsupported", lambda: import_checkpoint(flux, volume))
    assert "Flux" in error.message


def test_a_name_clash_is_refused(volume: Path, exported: Path) -> None:
    before = names(volume)
    refused("model_exists", lambda: import_checkpoint(exported, volume, name="tiny-sd"))
    refused("invalid_model_name", lambda: import_checkpoint(exported, volume, name="Bad Name"))
    assert names(volume) == before


def test_a_checkpoint_of_other_sizes_finds_no_config(volume: Path, exported: Path, tmp_path: Path) -> None:
    tensors = load_file(str(exported))
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(48, 4, 3, 3)
    odd = tmp_path / "odd.safetensors"
    save_file(tensors, str(odd))
    refused("checkpoint_no_config", lambda: import_checkpoint(odd, volume))


def test_the_carried_sd1_config_fits_sd15_shapes() -> None:
    """The carried configs describe the real architectures: SD 1.5's shapes fit sd1, not sdxl."""
    from services.inference.singlefile import CONFIGS_DIR, Detected, TensorInfo

    sd15 = {
        "model.diffusion_model.input_blocks.0.0.weight": TensorInfo("F16", (320, 4, 3, 3)),
        "model.diffusion_model.output_blocks.11.0.in_layers.0.weight": TensorInfo("F16", (640,)),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": TensorInfo(
            "F16", (320, 768)
        ),
        "first_stage_model.encoder.conv_in.weight": TensorInfo("F16", (128, 3, 3, 3)),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": TensorInfo(
            "F16", (49408, 768)
        ),
    }
    detected = Detected("sd1", "v1", inpainting=False)
    assert fits(CONFIGS_DIR / "sd1", sd15, detected)
    assert not fits(CONFIGS_DIR / "sdxl", sd15, Detected("sdxl", "xl_base", inpainting=False))


def test_the_carried_clip_tokenizer_is_clips(volume: Path, exported: Path, tmp_path: Path) -> None:
    """The vocabulary carried for real checkpoints tokenizes as openai/clip-vit-large-patch14 does."""
    from transformers import CLIPTokenizer

    from services.inference.singlefile import CONFIGS_DIR, copy_configs

    target = tmp_path / "cfg"
    target.mkdir()
    copy_configs(CONFIGS_DIR / "sd1", target, inpainting=False)
    tokenizer = CLIPTokenizer.from_pretrained(str(target / "tokenizer"))
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.fixture
def full_disk(tmp_path: Path, volume: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs holding tiny-sd's configs (no weights): an import there runs out of space."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=False)
    if done.returncode != 0:
        pytest.fail("mounting a small tmpfs failed: this test needs root, as CI has")
    try:
        shutil.copytree(volume / "tiny-sd", mount / "tiny-sd", ignore=shutil.ignore_patterns("*.safetensors"))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(full_disk: Path, exported: Path) -> None:
    assert exported.stat().st_size > 1024 * 1024
    before = names(full_disk)
    error = refused("disk_full", lambda: import_checkpoint(exported, full_disk))
    assert "full" in error.message
    assert names(full_disk) == before


def test_a_file_dropped_in_checkpoints_is_imported_and_its_removal_removes_it(
    volume: Path, exported: Path
) -> None:
    drop = volume / "checkpoints"
    drop.mkdir(exist_ok=True)
    target = drop / f"Dropped {uuid.uuid4().hex[:6]}.safetensors"
    shutil.copy(exported, target)
    (drop / "broken.ckpt").write_bytes(b"not really a pickle")
    refusals: dict[str, float] = {}
    result = sync_checkpoints(volume, refusals)
    [name] = result.imported
    assert "broken.ckpt" in result.refused and "pickle" in result.refused["broken.ckpt"]
    manifest = discover_models(volume)[name]
    assert manifest.source == f"checkpoints:{target.name}"
    # Hard-linked: the volume holds the weights once.
    assert os.path.samefile(target, manifest.path / (manifest.checkpoint or ""))
    # A second pass changes nothing and does not report the same refusal again.
    again = sync_checkpoints(volume, refusals)
    assert (again.imported, again.removed, again.refused) == ([], [], {})
    target.unlink()
    gone = sync_checkpoints(volume, refusals)
    assert gone.removed == [name]
    assert name not in discover_models(volume)
    assert not any(p.name.startswith(".") for p in volume.iterdir() if p.name != ".bundled")


def test_the_cli_imports_a_file(volume: Path, exported: Path, tmp_path: Path) -> None:
    copy = tmp_path / "cli.safetensors"
    shutil.copy(exported, copy)
    done = subprocess.run(
        [sys.executable, "-m", "services.inference.fetch", "--models-dir", str(volume), str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "cli" in discover_models(volume)
    manifest = json.loads((volume / "cli" / "easel-model.json").read_text())
    assert manifest["checkpoint"] == "cli.safetensors" and len(manifest["sha256"]) == 64
    again = subprocess.run(
        [sys.executable, "-m", "services.inference.fetch", "--models-dir", str(volume), str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 1 and "model_exists" in again.stderr


def test_an_image_is_an_image(volume: Path) -> None:
    """Guards the pixel comparison above: the tiny model really draws different seeds differently."""
    engine = Engine(discover_models(volume), device="cpu")
    [[a, b]] = engine.generate("tiny-sd", [txt2img(9)])
    assert isinstance(a, Image.Image) and not np.array_equal(np.asarray(a), np.asarray(b))
