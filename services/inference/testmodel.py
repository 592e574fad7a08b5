"""The bundled test models: tiny SD 1.x, SDXL, SD 3.5 and Flux.1 pipelines with random weights.

The flow-matching ones (SD 3.5 and Flux.1) are built in testmodel_flow.py.

They are real diffusers folders (safetensors weights, configs, a CLIP tokenizer built here from a
byte-level vocabulary) so every code path that loads and runs a hub model runs on them too, on a
CPU, in well under a second per 64x64 image. Their pictures are noise; that is the point.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .models import FLOW_FAMILIES, FLOW_SAMPLERS, KINDS, MANIFEST_FILE, ModelManifest, write_manifest

log = logging.getLogger(__name__)

SEED = 20240601
BUNDLED = ("tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux")
MAX_LENGTH = 77
TEXT_HIDDEN = 32
VOCAB_SIZE = 1000

# Whole-word merges for words common in prompts, so typical prompts tokenize into a few tokens
# each; anything else falls back to one token per byte, which still covers every input.
_WORDS = (
    "the of and with in on at by for from to an is art photo portrait painting landscape cat dog "
    "red blue green black white light dark sky sun moon sea mountain city street forest tree flower "
    "woman man girl boy face eyes hair detailed style oil digital high quality best masterpiece "
    "cinematic lighting night day castle dragon robot space astronaut horse bird water fire snow"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: merge the best-ranked adjacent pair until none applies."""
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), -1), i) for i, (a, b) in enumerate(itertools.pairwise(pieces))]
        known = [(rank, i) for rank, i in pairs if rank >= 0]
        if not known:
            break
        _, i = min(known)
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style vocabulary (bytes, bytes ending a word, merges, specials) and its merges."""
    base = list(_bytes_to_unicode().values())
    tokens: list[str] = base + [c + "</w>" for c in base]
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    ranks: dict[tuple[str, str], int] = {}
    for word in _WORDS:
        pieces = list(word)
        pieces[-1] += "</w>"
        # Segment with the merges so far, then join what is left: earlier merges outrank later ones,
        # so each word must be finished from where BPE would actually get to.
        pieces = _bpe(pieces, ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in seen:
                tokens.append(pair[0] + pair[1])
                seen.add(pair[0] + pair[1])
            pieces = _bpe(pieces, ranks)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) > VOCAB_SIZE:
        raise RuntimeError(f"test vocabulary has {len(tokens)} tokens, more than {VOCAB_SIZE}")
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _tokenizer(pad_token: str) -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab()
    # The tokenizers backend wants merges as pairs; the annotation says strings.
    tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token)  # type: ignore[arg-type]
    tok.model_max_length = MAX_LENGTH
    return tok


def write_vocab_files(folder: Path) -> None:
    """vocab.json and merges.txt, the files slow CLIP tokenizers (transformers 4.x) load from."""
    vocab, merges = build_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _text_config(projection_dim: int | None = None) -> Any:
    from transformers import CLIPTextConfig

    vocab, _ = build_vocab()
    kwargs: dict[str, Any] = {}
    if projection_dim is not None:
        kwargs["projection_dim"] = projection_dim
    return CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_LENGTH,
        vocab_size=VOCAB_SIZE,
        layer_norm_eps=1e-5,
        hidden_act="quick_gelu",
        **kwargs,
    )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    # Four blocks make the usual 8x downsampling, so 64x64 images have 8x8 latents.
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    # Stable Diffusion's training schedule, so samplers behave as they do on real checkpoints.
    return EulerDiscreteScheduler(  # type: ignore[no-untyped-call]
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


def _save(pipe: Any, folder: Path) -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    pipe.save_pretrained(folder, safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):
        if (folder / sub).is_dir():
            write_vocab_files(folder / sub)
    # safetensors writes 0600; the volume is filled by one user and read by the workers' user.
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def build_tiny_sd(folder: Path, seed: int = SEED, inpainting: bool = False) -> None:
    """A tiny SD 1.x pipeline; `inpainting` makes the 9-channel UNet of inpainting checkpoints."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=8,
        # Inpainting UNets also take the masked image's latents (4) and the mask (1).
        in_channels=9 if inpainting else 4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = _vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    pipe = StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer("<|endoftext|>"),
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _save(pipe, folder)


def build_tiny_sdxl(folder: Path, seed: int = SEED) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    time_dim = 8
    projection_dim = 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        # Six size/crop numbers embedded at time_dim each, plus the pooled text embedding.
        projection_class_embeddings_input_dim=6 * time_dim + projection_dim,
        # Both text encoders' hidden states side by side.
        cross_attention_dim=2 * TEXT_HIDDEN,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = _vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=projection_dim))
    pipe = StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer("<|endoftext|>"),
        # SDXL's second tokenizer pads with "!", as the released checkpoints do.
        tokenizer_2=_tokenizer("!"),
        unet=unet,
        scheduler=_scheduler(),
        add_watermarker=False,
    )
    _save(pipe, folder)


def _manifest(name: str, family: str, folder: Path) -> ModelManifest:
    flow = family in FLOW_FAMILIES
    return ModelManifest(
        name=name,
        family=family,
        kinds=KINDS,
        default_width=64,
        default_height=64,
        default_steps=4,
        # Flux.1-dev's distilled guidance is around 3.5; SD 3.5 runs CFG at about 4.5.
        default_guidance={"flux": 3.5, "sd3": 4.5}.get(family, 7.5),
        default_sampler="euler",
        min_size=64,
        max_size=256,
        max_steps=50,
        inpainting=False,
        path=folder,
        source="bundled",
        samplers=FLOW_SAMPLERS if flow else (),
        size_multiple=16 if flow else 8,
        # The tiny T5 reads 32 tokens (the released models: 256 for SD 3.5 and Flux schnell, 512 dev).
        max_sequence_length=32 if flow else 0,
    )


def _builders() -> dict[str, tuple[str, Callable[[Path, int], None]]]:
    from .testmodel_flow import build_tiny_flux, build_tiny_sd3

    return {
        "tiny-sd": ("sd1", build_tiny_sd),
        "tiny-sdxl": ("sdxl", build_tiny_sdxl),
        "tiny-sd3": ("sd3", build_tiny_sd3),
        "tiny-flux": ("flux", build_tiny_flux),
    }


def build_bundled(models_dir: Path, name: str, seed: int = SEED) -> Path:
    """Builds one bundled model into `models_dir/name`, replacing what is there."""
    family, builder = _builders()[name]
    target = models_dir / name
    # Build beside the target and rename, so discovery never sees half a model.
    staging = models_dir / f".building-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    try:
        builder(staging, seed)
        write_manifest(staging, _manifest(name, family, target))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built bundled model %s in %.1fs", target, time.perf_counter() - started)
    return target


def ensure_bundled(models_dir: Path, seed: int = SEED) -> list[str]:
    """Builds the bundled models missing from `models_dir`; returns the names it built."""
    models_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for name in BUNDLED:
        folder = models_dir / name
        if (folder / MANIFEST_FILE).is_file() and (folder / "model_index.json").is_file():
            continue
        build_bundled(models_dir, name, seed)
        built.append(name)
    return built
