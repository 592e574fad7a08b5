"""Real-size Stable Diffusion models with random weights, built on the machine in the model-volume
layout (a diffusers folder plus `easel-model.json`), for the GPU benchmark: nothing is downloaded.

The architectures are the released ones, so the FLOPs and memory traffic per step are too:
  - `bench-sd15`: SD 1.5, UNet 860M (320/640/1280/1280, cross-attention 768), CLIP ViT-L/14 text
    encoder (12 layers, 768 wide), SD VAE (128/256/512/512);
  - `bench-sdxl`: SDXL base, UNet 2.6B (320/640/1280, transformer depth 1/2/10, cross-attention
    2048, text-time conditioning), CLIP ViT-L/14 + OpenCLIP ViT-bigG/14 text encoders (32 layers,
    1280 wide), SDXL VAE.
The tokenizers are the bundled test model's (a small byte-level vocabulary, services/inference/
testmodel.py): prompts tokenize to a few dozen ids, which the 49,408-row embeddings accept, and the
text encoders still run over all 77 positions. Weights are random, so the pictures are noise.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from services.inference import testmodel
from services.inference.models import KINDS, MANIFEST_FILE, ModelManifest, write_manifest

log = logging.getLogger(__name__)

CLIP_VOCAB = 49408


def _text_config(hidden: int, layers: int, heads: int, act: str, projection_dim: int | None = None) -> Any:
    from transformers import CLIPTextConfig

    vocab, _ = testmodel.build_vocab()
    kwargs: dict[str, Any] = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=testmodel.MAX_LENGTH,
        vocab_size=CLIP_VOCAB,
        layer_norm_eps=1e-5,
        hidden_act=act,
        **kwargs,
    )


def sd15_unet_config() -> dict[str, Any]:
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def sdxl_unet_config() -> dict[str, Any]:
    return {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (5, 10, 20),
        "transformer_layers_per_block": (1, 2, 10),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        # Six size/crop numbers at 256 each, plus the 1280-wide pooled text embedding.
        "projection_class_embeddings_input_dim": 6 * 256 + 1280,
        "cross_attention_dim": 768 + 1280,
        "norm_num_groups": 32,
    }


def _vae(sample_size: int, scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def build_sd15(folder: Path, device: str = "cpu", seed: int = testmodel.SEED) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**sd15_unet_config())  # type: ignore[no-untyped-call]
        vae = _vae(512, 0.18215)
        text_encoder = CLIPTextModel(_text_config(768, 12, 12, "quick_gelu"))
    pipe = StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=testmodel._tokenizer("<|endoftext|>"),
        unet=unet,
        scheduler=testmodel._scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _save_half(pipe, folder)


def build_sdxl(folder: Path, device: str = "cpu", seed: int = testmodel.SEED) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**sdxl_unet_config())  # type: ignore[no-untyped-call]
        vae = _vae(1024, 0.13025)
        text_encoder = CLIPTextModel(_text_config(768, 12, 12, "quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(1280, 32, 20, "gelu", projection_dim=1280))
    pipe = StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=testmodel._tokenizer("<|endoftext|>"),
        tokenizer_2=testmodel._tokenizer("!"),
        unet=unet,
        scheduler=testmodel._scheduler(),
        add_watermarker=False,
    )
    _save_half(pipe, folder)


def _save_half(pipe: Any, folder: Path) -> None:
    """Half-precision weights as the `fp16` variant, as hub checkpoints ship them (half the disk, and
    what the worker's loader tries first on a GPU)."""
    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True, variant="fp16")
    for sub in ("tokenizer", "tokenizer_2"):
        if (folder / sub).is_dir():
            testmodel.write_vocab_files(folder / sub)


SPECS: dict[str, dict[str, Any]] = {
    "bench-sd15": {"family": "sd1", "size": 512, "builder": build_sd15},
    "bench-sdxl": {"family": "sdxl", "size": 1024, "builder": build_sdxl},
}


def manifest(name: str, folder: Path) -> ModelManifest:
    spec = SPECS[name]
    size = int(spec["size"])
    return ModelManifest(
        name=name,
        family=str(spec["family"]),
        kinds=KINDS,
        default_width=size,
        default_height=size,
        default_steps=30,
        default_guidance=7.5,
        default_sampler="euler",
        min_size=256,
        max_size=2 * size,
        max_steps=150,
        inpainting=False,
        path=folder,
        source="bench-random",
    )


def ensure(models_dir: Path, name: str, device: str = "cpu") -> Path:
    """Builds `name` into `models_dir/name` unless a complete build is there already."""
    target = models_dir / name
    if (target / MANIFEST_FILE).is_file() and (target / "model_index.json").is_file():
        return target
    staging = models_dir / f".building-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    try:
        SPECS[name]["builder"](staging, device)
        write_manifest(staging, manifest(name, target))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built %s in %.0f s", target, time.perf_counter() - started)
    return target


def unet_config(name: str) -> dict[str, Any]:
    return sd15_unet_config() if SPECS[name]["family"] == "sd1" else sdxl_unet_config()
