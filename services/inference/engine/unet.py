"""Stable Diffusion's UNet families: SD 1.x, SD 2.x, SDXL and their turbo variants.

CLIP text encoders (one, or two for SDXL), a UNet denoiser with classifier-free guidance, a KL VAE;
every sampler in schedulers.py works on them.
"""

from __future__ import annotations

from typing import Any

from ..models import ModelManifest
from .family import Family, LoadedModel
from .requests import Item, Plan

_EMBEDDING_NAMES = ("prompt_embeds", "negative_prompt_embeds")
_SDXL_EMBEDDING_NAMES = (*_EMBEDDING_NAMES, "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


class UNetFamily(Family):
    """SD 1.x and 2.x (one CLIP encoder)."""

    names: tuple[str, ...] = ("sd1", "sd2", "sd-turbo")
    classes = {
        "txt2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
    }
    embedding_names: tuple[str, ...] = _EMBEDDING_NAMES

    def load_kwargs(self, manifest: ModelManifest) -> dict[str, Any]:
        # There is no safety checker in the bundled models and Easel does not run one; not loading it
        # also saves 1.2 GB on checkpoints that ship it.
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def prepare_loaded(self, pipe: Any, batch_invariant: bool) -> None:
        from ..pipelines import make_row_wise

        # Decoding one image at a time keeps batches from multiplying the VAE's large activations,
        # and keeps each image's pixels independent of its batch.
        pipe.vae.enable_slicing()
        if batch_invariant:
            make_row_wise(pipe.unet)

    def encode(
        self, pipe: Any, loaded: LoadedModel, items: list[Item], plan: Plan, one_by_one: bool
    ) -> dict[str, Any]:
        """Prompt embeddings per image; each distinct prompt is encoded once.

        With `one_by_one` (batch-invariant mode) every prompt is encoded on its own, so batching
        cannot change its embedding in the last bits. Otherwise the distinct prompts go through the
        text encoders together, one call for those with a negative prompt and one for those
        without: a GPU spends as long on one prompt as on sixteen.
        """
        import torch

        cfg = self.guided(plan)
        device = loaded.device
        keys = list(dict.fromkeys((item.prompt, item.negative_prompt) for item in items))
        if one_by_one:
            calls = [[key] for key in keys]
        else:
            calls = [group for group in ([k for k in keys if k[1]], [k for k in keys if not k[1]]) if group]
        rows: dict[tuple[str, str], tuple[Any, ...]] = {}
        with torch.no_grad():
            for call in calls:
                # An empty negative prompt is None, so SDXL uses zeros for it as it does by default.
                negatives = [negative for _, negative in call]
                encoded = pipe.encode_prompt(
                    prompt=[prompt for prompt, _ in call],
                    device=device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=cfg,
                    negative_prompt=negatives if all(negatives) else None,
                )
                for i, key in enumerate(call):
                    rows[key] = tuple(None if part is None else part[i : i + 1] for part in encoded)
        out: dict[str, Any] = {}
        for i, name in enumerate(self.embedding_names):
            parts = [rows[(item.prompt, item.negative_prompt)][i] for item in items]
            out[name] = None if any(part is None for part in parts) else torch.cat(parts, dim=0)
        return out

    def call_kwargs(self, plan: Plan, items: list[Item]) -> dict[str, Any]:
        if plan.task == "txt2img":
            return {"num_inference_steps": plan.steps, "width": plan.width, "height": plan.height}
        # Image-to-image runs int(steps * strength) steps; make that at least one.
        steps = plan.steps
        while int(steps * plan.strength) < 1:
            steps += 1
        kwargs: dict[str, Any] = {
            "num_inference_steps": steps,
            "strength": plan.strength,
            "image": [i.init_image for i in items],
        }
        if plan.task == "inpaint":
            kwargs.update(mask_image=[i.mask_image for i in items], width=plan.width, height=plan.height)
        return kwargs


class SDXLFamily(UNetFamily):
    """SDXL (two CLIP encoders, pooled embeddings, size conditioning)."""

    names = ("sdxl", "sdxl-turbo")
    classes = {
        "txt2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    }
    embedding_names = _SDXL_EMBEDDING_NAMES

    def load_kwargs(self, manifest: ModelManifest) -> dict[str, Any]:
        return {"add_watermarker": False}

    def task_kwargs(self, manifest: ModelManifest) -> dict[str, Any]:
        return {"add_watermarker": False}


_SD = UNetFamily()
_SDXL = SDXLFamily()


def family_of(manifest: ModelManifest) -> Family:
    return _SDXL if manifest.is_sdxl else _SD
