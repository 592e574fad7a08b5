"""Flux.1 (dev and schnell): a flow-matching transformer with distilled guidance.

Flux runs no classifier-free guidance: dev takes the guidance value as an input of the transformer
(distilled guidance, one row per image), schnell ignores it. There is no negative prompt (the
distilled model was not trained with one); a negative prompt is accepted and not used. Prompts go
through CLIP (pooled) and T5 (`max_sequence_length` tokens, from the manifest).
"""

from __future__ import annotations

from typing import Any

from ..models import ModelManifest
from .family import Family, LoadedModel
from .flow import FlowFamily
from .requests import Item, Plan


class FluxFamily(FlowFamily):
    names: tuple[str, ...] = ("flux",)
    classes = {
        "txt2img": "FluxPipeline",
        "img2img": "FluxImg2ImgPipeline",
        "inpaint": "FluxInpaintPipeline",
    }

    def load_kwargs(self, manifest: ModelManifest) -> dict[str, Any]:
        # Easel uses no IP-Adapter image encoder here; folders that ship none load without it.
        return {"image_encoder": None, "feature_extractor": None}

    def guided(self, plan: Plan) -> bool:
        # Distilled guidance: one transformer row per image whatever the guidance value.
        return False

    def warm_guidance(self, manifest: ModelManifest) -> float:
        return manifest.default_guidance

    def encode(
        self, pipe: Any, loaded: LoadedModel, items: list[Item], plan: Plan, one_by_one: bool
    ) -> dict[str, Any]:
        import torch

        length = self.max_sequence_length(loaded.manifest)
        rows: dict[str, tuple[Any, Any]] = {}
        prompts = list(dict.fromkeys(item.prompt for item in items))
        calls = [[p] for p in prompts] if one_by_one else [prompts]
        with torch.no_grad():
            for call in calls:
                embeds, pooled, _ = pipe.encode_prompt(
                    prompt=call,
                    prompt_2=None,
                    device=loaded.device,
                    num_images_per_prompt=1,
                    max_sequence_length=length,
                )
                for i, prompt in enumerate(call):
                    rows[prompt] = (embeds[i : i + 1], pooled[i : i + 1])
        return {
            "prompt_embeds": torch.cat([rows[item.prompt][0] for item in items], dim=0),
            "pooled_prompt_embeds": torch.cat([rows[item.prompt][1] for item in items], dim=0),
        }

    def serves_compiled(self, fast: Any, plan: Plan) -> bool:
        return (plan.width, plan.height) in fast.sizes


_FLUX = FluxFamily()


def family_of(manifest: ModelManifest) -> Family:
    return _FLUX
