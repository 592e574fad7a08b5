"""What SD 3.5 and Flux.1 share: a transformer denoiser trained with flow matching, a T5 encoder.

Their samplers are Euler steps on the model's own flow-matching schedule (FlowMatchEuler, with its
shift), optionally on Karras's sigmas; the manifest lists them (`samplers`). Row-wise batching (the
CPU's bit-exact mode) splits the transformer's batch arguments by name, since its other inputs
(position ids) have no batch dimension.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from ..models import ModelManifest
from .family import Family, LoadedModel
from .requests import Item, Plan

# The transformer arguments with one row per image (or per image and guidance branch).
BATCH_ARGUMENTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance")


def make_row_wise(transformer: Any) -> None:
    """Runs `transformer` one batch row at a time (see pipelines.make_row_wise for why)."""
    import torch

    forward = transformer.forward

    @functools.wraps(forward)
    def row_wise(*args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("the row-wise transformer takes keyword arguments only")
        n = kwargs["hidden_states"].shape[0]

        def row(i: int) -> dict[str, Any]:
            out = dict(kwargs)
            for name in BATCH_ARGUMENTS:
                value = kwargs.get(name)
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                    out[name] = value[i : i + 1].clone()
            return out

        if n == 1:
            return forward(**row(0))
        outs = [forward(**row(i)) for i in range(n)]
        if isinstance(outs[0], tuple):
            return (torch.cat([o[0] for o in outs]), *outs[0][1:])
        return type(outs[0])(sample=torch.cat([o.sample for o in outs]))

    transformer.forward = row_wise


class CompiledTransformer:
    """Stands in for `pipe.transformer` during a call: forward goes to the compiled module,
    everything else (config, dtype, device) to the eager one."""

    def __init__(self, compiled: Any, eager: Any) -> None:
        self._compiled = compiled
        self._eager = eager

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._eager, name)


class FlowFamily(Family):
    """The parts of SD 3.5 and Flux.1 that are the same."""

    denoiser = "transformer"

    def prepare_loaded(self, pipe: Any, batch_invariant: bool) -> None:
        # One image at a time through the VAE, as for the UNet families.
        pipe.vae.enable_slicing()
        if batch_invariant:
            make_row_wise(pipe.transformer)

    def scheduler(self, loaded: LoadedModel, sampler: str) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        extra = {"use_karras_sigmas": True} if sampler == "euler_karras" else {}
        return FlowMatchEulerDiscreteScheduler.from_config(  # type: ignore[no-untyped-call]
            loaded.scheduler_config, **extra
        )

    def max_sequence_length(self, manifest: ModelManifest) -> int:
        return manifest.max_sequence_length or 256

    def prompt_groups(self, items: list[Item], one_by_one: bool) -> Iterator[list[tuple[str, str]]]:
        """Distinct (prompt, negative) pairs in encoder calls: each alone in the bit-exact mode,
        else those with a negative prompt together and those without together."""
        keys = list(dict.fromkeys((item.prompt, item.negative_prompt) for item in items))
        if one_by_one:
            yield from ([key] for key in keys)
            return
        for group in ([k for k in keys if k[1]], [k for k in keys if not k[1]]):
            if group:
                yield group

    def call_kwargs(self, plan: Plan, items: list[Item]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"width": plan.width, "height": plan.height}
        if plan.task == "txt2img":
            kwargs["num_inference_steps"] = plan.steps
            return kwargs
        # Image-to-image runs int(steps * strength) steps; make that at least one.
        steps = plan.steps
        while int(steps * plan.strength) < 1:
            steps += 1
        kwargs.update(num_inference_steps=steps, strength=plan.strength, image=[i.init_image for i in items])
        if plan.task == "inpaint":
            kwargs["mask_image"] = [i.mask_image for i in items]
        return kwargs

    def accelerate(self, pipe: Any, accel: Any) -> Any:
        from .. import accel as accel_module

        return accel_module.prepare(pipe, accel, denoiser=self.denoiser, runner=CompiledTransformer)
