"""Stable Diffusion 3.5 (Medium and Large): a flow-matching MMDiT transformer with CFG.

Three text encoders: two CLIPs (pooled and per-token) and T5 (`max_sequence_length` tokens). The
T5 encoder is the largest part of the model after the transformer; a manifest with `"t5": false`
loads without it, and SD 3.5 then reads its prompts through the CLIPs alone (zeros stand in for
T5's tokens, as diffusers does), in far less memory.
"""

from __future__ import annotations

from typing import Any

from ..models import ModelManifest
from .family import Family, LoadedModel
from .flow import FlowFamily
from .requests import Item, Plan

_NAMES = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


class SD3Family(FlowFamily):
    names: tuple[str, ...] = ("sd3",)
    classes = {
        "txt2img": "StableDiffusion3Pipeline",
        "img2img": "StableDiffusion3Img2ImgPipeline",
        "inpaint": "StableDiffusion3InpaintPipeline",
    }

    def load_kwargs(self, manifest: ModelManifest) -> dict[str, Any]:
        extra: dict[str, Any] = {"image_encoder": None, "feature_extractor": None}
        if not manifest.t5:
            extra.update(text_encoder_3=None, tokenizer_3=None)
        return extra

    def encode(
        self, pipe: Any, loaded: LoadedModel, items: list[Item], plan: Plan, one_by_one: bool
    ) -> dict[str, Any]:
        import torch

        cfg = self.guided(plan)
        rows: dict[tuple[str, str], tuple[Any, ...]] = {}
        with torch.no_grad():
            for call in self.prompt_groups(items, one_by_one):
                negatives = [negative for _, negative in call]
                encoded = pipe.encode_prompt(
                    prompt=[prompt for prompt, _ in call],
                    prompt_2=None,
                    prompt_3=None,
                    device=loaded.device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=cfg,
                    negative_prompt=negatives if all(negatives) else None,
                    max_sequence_length=self.max_sequence_length(loaded.manifest),
                )
                for i, key in enumerate(call):
                    rows[key] = tuple(None if part is None else part[i : i + 1] for part in encoded)
        out: dict[str, Any] = {}
        for i, name in enumerate(_NAMES):
            parts = [rows[(item.prompt, item.negative_prompt)][i] for item in items]
            out[name] = None if any(part is None for part in parts) else torch.cat(parts, dim=0)
        return out


_SD3 = SD3Family()


def family_of(manifest: ModelManifest) -> Family:
    return _SD3
