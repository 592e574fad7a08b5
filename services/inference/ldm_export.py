"""Export a Stable Diffusion 1.x/2.x diffusers folder as one A1111-style `.safetensors` checkpoint.

The single-file layout is the original LDM one (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`) that A1111, ComfyUI and model sites ship. Easel imports such files
(`services.inference.singlefile`); this is the other direction, so the tests and the import bench can
make a checkpoint from weights whose pixels are known, and so a user can take a model elsewhere.

The key map is derived from the model's own config (block counts, layers per block, which blocks
attend), not from tables written for one size, so the tiny bundled model and a full-size one export
by the same code. Tensors are written as they are; only the VAE's mid-block attention projections
change shape (linear in diffusers, 1x1 convolutions in LDM).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTENTION = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _rename_resnet(rest: str) -> str:
    for diffusers_name, ldm_name in _RESNET:
        if rest.startswith(diffusers_name + "."):
            return ldm_name + rest[len(diffusers_name) :]
    return rest


def unet_prefix_map(config: dict[str, Any]) -> dict[str, str]:
    """diffusers prefix → LDM prefix for every block of a UNet2DConditionModel with this config."""
    layers = int(config["layers_per_block"])
    down = list(config["down_block_types"])
    up = list(config["up_block_types"])
    out: dict[str, str] = {}
    for i, kind in enumerate(down):
        for j in range(layers):
            index = 1 + i * (layers + 1) + j
            out[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{index}.0."
            if kind.startswith("CrossAttn"):
                out[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{index}.1."
        if i < len(down) - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (layers + 1)}.0.op."
    out["mid_block.resnets.0."] = "middle_block.0."
    out["mid_block.attentions.0."] = "middle_block.1."
    out["mid_block.resnets.1."] = "middle_block.2."
    for i, kind in enumerate(up):
        attends = kind.startswith("CrossAttn")
        for j in range(layers + 1):
            index = i * (layers + 1) + j
            out[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{index}.0."
            if attends:
                out[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{index}.1."
        if i < len(up) - 1:
            index = i * (layers + 1) + layers
            out[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{index}.{2 if attends else 1}."
    return out


_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def unet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    prefixes = unet_prefix_map(config)
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        new = None
        for diffusers_prefix, ldm_prefix in _UNET_TOP.items():
            if key.startswith(diffusers_prefix):
                new = ldm_prefix + key[len(diffusers_prefix) :]
                break
        if new is None:
            for diffusers_prefix, ldm_prefix in prefixes.items():
                if key.startswith(diffusers_prefix):
                    rest = key[len(diffusers_prefix) :]
                    if ".resnets." in diffusers_prefix:
                        rest = _rename_resnet(rest)
                    new = ldm_prefix + rest
                    break
        if new is None:
            raise ValueError(f"UNet tensor {key} has no place in the single-file layout")
        out["model.diffusion_model." + new] = tensor
    return out


def vae_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    blocks = len(config["block_out_channels"])
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        new = key
        for side in ("encoder", "decoder"):
            if not key.startswith(side + "."):
                continue
            rest = key[len(side) + 1 :]
            parts = rest.split(".")
            if parts[0] in ("down_blocks", "up_blocks"):
                i = int(parts[1])
                ldm_i = i if parts[0] == "down_blocks" else blocks - 1 - i
                group = "down" if parts[0] == "down_blocks" else "up"
                if parts[2] == "resnets":
                    tail = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                    new = f"{side}.{group}.{ldm_i}.block.{parts[3]}.{tail}"
                else:  # downsamplers.0.conv.* / upsamplers.0.conv.*
                    what = "downsample" if group == "down" else "upsample"
                    new = f"{side}.{group}.{ldm_i}.{what}.{'.'.join(parts[4:])}"
            elif parts[0] == "mid_block" and parts[1] == "resnets":
                tail = ".".join(parts[3:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{side}.mid.block_{int(parts[2]) + 1}.{tail}"
            elif parts[0] == "mid_block" and parts[1] == "attentions":
                tail = ".".join(parts[3:])
                for diffusers_name, ldm_name in _VAE_ATTENTION:
                    if tail.startswith(diffusers_name):
                        tail = ldm_name + tail[len(diffusers_name) :]
                        break
                new = f"{side}.mid.attn_1.{tail}"
                if tail.endswith("weight") and tensor.ndim == 2:
                    tensor = tensor.reshape(*tensor.shape, 1, 1)
            elif parts[0] == "conv_norm_out":
                new = f"{side}.norm_out.{'.'.join(parts[1:])}"
        out["first_stage_model." + new] = tensor
    return out


def _weights(sub: Path, stem: str) -> dict[str, Any]:
    """A component's weights, full precision or the `fp16`/`bf16` variant, whichever was saved."""
    files = sorted(sub.glob(f"{stem}*.safetensors"))
    if len(files) != 1:
        raise ValueError(
            f"{sub} must hold exactly one {stem}*.safetensors file (sharded weights do not export)"
        )
    return load_file(files[0])


_OPEN_CLIP = (
    ("text_model.encoder.layers.", "transformer.resblocks."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
    (".self_attn.out_proj.", ".attn.out_proj."),
)


def open_clip_to_ldm(state: dict[str, Any]) -> dict[str, Any]:
    """A CLIPTextModelWithProjection's weights in OpenCLIP's layout (SDXL's second text encoder)."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[str, dict[str, dict[str, Any]]] = {}
    fixed = {
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    for key, tensor in state.items():
        if key in fixed:
            out[fixed[key]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif ".self_attn." in key and key.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
            # text_model.encoder.layers.N.self_attn.q_proj.weight → one in_proj per layer, q k v stacked
            head, projection, kind = key.rsplit(".", 2)
            layer = head.removesuffix(".self_attn")
            qkv.setdefault(layer, {}).setdefault(kind, {})[projection[0]] = tensor
        else:
            new = key
            for diffusers_part, ldm_part in _OPEN_CLIP:
                new = new.replace(diffusers_part, ldm_part)
            out[new] = tensor
    for layer, kinds in qkv.items():
        ldm_layer = layer.replace("text_model.encoder.layers.", "transformer.resblocks.")
        for kind, parts in kinds.items():
            out[f"{ldm_layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _clip_l(state: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 saves CLIPTextModel without its `text_model.` level; the LDM layout has it.
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def export_sd_checkpoint(folder: Path, target: Path) -> Path:
    """Writes the SD 1.x/2.x or SDXL diffusers model in `folder` as one LDM-layout safetensors file."""
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    sdxl = unet_config.get("addition_embed_type") == "text_time"
    state: dict[str, Any] = {}
    state.update(unet_to_ldm(_weights(folder / "unet", "diffusion_pytorch_model"), unet_config))
    state.update(vae_to_ldm(_weights(folder / "vae", "diffusion_pytorch_model"), vae_config))
    clip_l = _clip_l(_weights(folder / "text_encoder", "model"))
    if sdxl:
        state.update({"conditioner.embedders.0.transformer." + k: v for k, v in clip_l.items()})
        big_g = open_clip_to_ldm(_weights(folder / "text_encoder_2", "model"))
        state.update({"conditioner.embedders.1.model." + k: v for k, v in big_g.items()})
    else:
        state.update({"cond_stage_model.transformer." + k: v for k, v in clip_l.items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(target), metadata={"format": "pt"})
    return target
