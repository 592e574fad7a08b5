"""The bundled flow-matching test models: tiny SD 3.5 and Flux.1 pipelines with random weights.

Real diffusers folders (the classes, component names and files of the released checkpoints: CLIP
and T5 encoders with their tokenizers, a transformer denoiser, a KL VAE, a flow-matching
scheduler), built from a fixed seed, so the engine's SD 3.5 and Flux code paths run on a CPU in
seconds. Sizes follow diffusers' own tests of these pipelines, scaled so a 64x64 image is a 4x4
grid of 2x2 patches. The T5 tokenizer is a small unigram vocabulary made here (no download).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from .testmodel import _WORDS, TEXT_HIDDEN, _save, _text_config, _tokenizer

T5_HIDDEN = 64
T5_VOCAB_WORDS = _WORDS


def t5_tokenizer() -> Any:
    """A T5 (unigram) tokenizer: the prompt words whole, anything else by character."""
    from transformers import T5Tokenizer

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + word, -5.0) for word in T5_VOCAB_WORDS]
    vocab.append(("\u2581", -8.0))
    vocab += [(c, -10.0) for c in string.printable if not c.isspace()]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _t5_encoder(vocab_size: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=T5_HIDDEN,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config)


def _flow_vae(latent_channels: int) -> Any:
    from diffusers import AutoencoderKL

    # 8x downsampling as in the released models; no quant convs, shift and scale as SD3 and Flux have.
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def build_tiny_sd3(folder: Path, seed: int) -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    projection_dim = 32
    tokenizer_3 = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(  # type: ignore[no-untyped-call]
        sample_size=8,
        patch_size=2,
        # 16 latent channels, as SD 3.5's VAE has (its inpainting pipeline insists on them).
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        # The T5 width: CLIP's per-token states are zero-padded to it and joined with T5's.
        joint_attention_dim=T5_HIDDEN,
        caption_projection_dim=32,
        # Both CLIPs' pooled projections side by side.
        pooled_projection_dim=2 * projection_dim,
        pos_embed_max_size=64,
    )
    torch.manual_seed(seed + 1)
    vae = _flow_vae(16)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModelWithProjection(_text_config(projection_dim=projection_dim))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=projection_dim))
    torch.manual_seed(seed + 4)
    text_encoder_3 = _t5_encoder(len(tokenizer_3))
    pipe = StableDiffusion3Pipeline(  # type: ignore[no-untyped-call]
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer("<|endoftext|>"),
        text_encoder_2=text_encoder_2,
        tokenizer_2=_tokenizer("!"),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    _save(pipe, folder)


def build_tiny_flux(folder: Path, seed: int) -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer_2 = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=1,
        # Latents are packed in 2x2 patches: 4 VAE channels make 16 transformer channels.
        in_channels=16,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN,
        # Flux.1-dev's distilled guidance is an input of the transformer.
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(seed + 1)
    vae = _flow_vae(4)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    torch.manual_seed(seed + 3)
    text_encoder_2 = _t5_encoder(len(tokenizer_2))
    pipe = FluxPipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler(  # type: ignore[no-untyped-call]
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
        ),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer("<|endoftext|>"),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    _save(pipe, folder)
