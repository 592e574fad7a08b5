"""The `Family` interface: what the engine needs to know about one kind of model.

The engine (cache, batching, warm-up, stage timing) is the same for every model; what differs
between Stable Diffusion's UNet families, SD 3.5 and Flux.1 is behind this interface, one module
per family (`unet.py`, ...), the way text-generation-inference keeps one file per model behind one
`Model` base. A family says:

- `load`: which diffusers pipeline classes serve each task and how to build them from the volume;
- `encode`: prompt embeddings for a batch of items (each distinct prompt once);
- `denoise`: the pipeline call that denoises from seeded noise and decodes (diffusers runs the
  decode inside the same call; `decoder` names the module that decodes, so it can be timed);
- `batch_key`: what two requests must share to run as one pipeline call;
- `accelerate` / `compiled` / `serves_compiled`: how the family goes fast (compiled denoiser with
  static shapes) and which calls the compiled path serves.

Nothing here imports torch or diffusers at import time.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.common.errors import EaselError

from ..models import ModelManifest
from ..schedulers import resolve_sampler
from .requests import NEEDS_STRENGTH, GenerationRequest, Item, Plan, effective_strength, output_size

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..accel import Accel, FastPath

log = logging.getLogger(__name__)

# The step callback diffusers calls after every denoising step.
StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


@dataclass
class LoadedModel:
    """A model's pipelines on a device: the base pipeline and the task pipelines sharing its weights."""

    manifest: ModelManifest
    family: Family
    base: Any
    device: str
    dtype: torch.dtype
    nbytes: int
    scheduler_config: Any
    pipes: dict[str, Any] = field(default_factory=dict)
    # The compiled denoiser and the shapes it serves (accel.FastPath), once warmed.
    fast: Any = None
    # Where the weights live (budget.py): "device", or offloaded to host memory when they do not fit.
    placement: str = "device"

    def pipe(self, task: str) -> Any:
        """The pipeline for `task`, sharing the base pipeline's weights (built once, on first use)."""
        if task not in self.pipes:
            if task == self.family.base_task(self.manifest):
                self.pipes[task] = self.base
            else:
                self.pipes[task] = self.family.task_pipeline(self, task)
        return self.pipes[task]


class Family:
    """One family of models. Subclasses fill in the class table and override what differs."""

    # The manifest `family` values this module serves.
    names: tuple[str, ...] = ()
    # diffusers pipeline class per task (txt2img, img2img, inpaint).
    classes: dict[str, str] = {}

    # --- load ---------------------------------------------------------------------------------

    def pipeline_class(self, manifest: ModelManifest, task: str) -> type[Any]:
        import diffusers

        cls: type[Any] = getattr(diffusers, self.classes[task])
        return cls

    def base_task(self, manifest: ModelManifest) -> str:
        """The task whose pipeline is loaded from the folder; the others share its components."""
        return "inpaint" if manifest.inpainting else "txt2img"

    def load_kwargs(self, manifest: ModelManifest) -> dict[str, Any]:
        """Extra from_pretrained arguments (components the engine does not want, flags)."""
        return {}

    def task_kwargs(self, manifest: ModelManifest) -> dict[str, Any]:
        """Extra constructor arguments for the task pipelines built from the base one."""
        return {}

    def prepare_loaded(self, pipe: Any, batch_invariant: bool) -> None:
        """Per-family changes to a freshly loaded pipeline (slicing, row-wise batching)."""

    def load(
        self,
        manifest: ModelManifest,
        device: str,
        dtype: torch.dtype,
        batch_invariant: bool,
        placement: str = "device",
        resident: int | None = None,
    ) -> LoadedModel:
        """The model's base pipeline, placed as `placement` says (budget.py); `resident` is the GPU
        memory its weights hold between jobs when offloaded (what the cache's budget counts)."""
        from .. import pipelines

        started = time.perf_counter()
        base = pipelines.load_pipeline(manifest, device, dtype, placement)
        self.prepare_loaded(base, batch_invariant)
        nbytes = pipelines.module_bytes(base) if resident is None or placement == "device" else resident
        log.info(
            "model %s ready on %s (%s) in %.2fs (%.1f MiB of weights)",
            manifest.name,
            device,
            placement,
            time.perf_counter() - started,
            nbytes / 2**20,
        )
        return LoadedModel(
            manifest=manifest,
            family=self,
            base=base,
            device=device,
            dtype=dtype,
            nbytes=nbytes,
            scheduler_config=base.scheduler.config,
            placement=placement,
        )

    def task_pipeline(self, loaded: LoadedModel, task: str) -> Any:
        cls = self.pipeline_class(loaded.manifest, task)
        # Built from the base pipeline's components (and config flags), so every task shares one copy
        # of the weights. Not from_pipe: it re-casts the shared weights.
        params = inspect.signature(cls.__init__).parameters
        kwargs: dict[str, Any] = {k: v for k, v in loaded.base.components.items() if k in params}
        kwargs.update({k: v for k, v in loaded.base.config.items() if k in params and k not in kwargs})
        kwargs.update(self.task_kwargs(loaded.manifest))
        pipe = cls(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # --- requests -------------------------------------------------------------------------------

    def batch_key(
        self, manifest: ModelManifest | None, model: str, req: GenerationRequest
    ) -> tuple[object, ...]:
        """Requests with equal keys can run as one pipeline call."""
        width, height = output_size(manifest, req) if manifest is not None else (req.width, req.height)
        strength = effective_strength(req) if req.kind in NEEDS_STRENGTH else None
        try:
            sampler = resolve_sampler(req.sampler)
        except EaselError:
            sampler = req.sampler
        return (model, req.kind, width, height, req.steps, sampler, float(req.guidance), strength)

    def guided(self, plan: Plan) -> bool:
        """Whether the call runs classifier-free guidance (two denoiser rows per image)."""
        return plan.guidance > 1

    # --- generation -----------------------------------------------------------------------------

    def scheduler(self, loaded: LoadedModel, sampler: str) -> Any:
        from ..schedulers import make_scheduler

        return make_scheduler(sampler, loaded.scheduler_config)

    def encode(
        self, pipe: Any, loaded: LoadedModel, items: list[Item], plan: Plan, one_by_one: bool
    ) -> dict[str, Any]:
        """Prompt embeddings for `items`, as keyword arguments of the pipeline call."""
        raise NotImplementedError

    def call_kwargs(self, plan: Plan, items: list[Item]) -> dict[str, Any]:
        """The pipeline call's size, steps and image arguments for `plan`."""
        raise NotImplementedError

    def denoise(
        self,
        pipe: Any,
        plan: Plan,
        items: list[Item],
        embeddings: dict[str, Any],
        generators: list[Any],
        callback: StepCallback,
    ) -> list[Image.Image]:
        """Denoises from each item's seeded noise and decodes, in one pipeline call."""
        kwargs: dict[str, Any] = {
            **embeddings,
            "guidance_scale": plan.guidance,
            "generator": generators,
            "output_type": "pil",
            "callback_on_step_end": callback,
            **self.call_kwargs(plan, items),
        }
        result = pipe(**kwargs)
        images: list[Image.Image] = list(result.images)
        return images

    def decoder(self, pipe: Any) -> Any:
        """The module that turns latents into pixels (hooked to time the decode)."""
        return getattr(getattr(pipe, "vae", None), "decoder", None)

    # --- acceleration ---------------------------------------------------------------------------

    def accelerate(self, pipe: Any, accel: Accel) -> FastPath | None:
        """Applies `accel` to a freshly loaded pipeline; returns the compiled path, if compiling."""
        from .. import accel as accel_module

        return accel_module.prepare(pipe, accel)

    @contextlib.contextmanager
    def compiled(self, pipe: Any, fast: FastPath) -> Iterator[None]:
        """`pipe` runs on the compiled parts for the duration of the block."""
        from .. import accel as accel_module

        with accel_module.installed(pipe, fast):
            yield

    def serves_compiled(self, fast: FastPath, plan: Plan) -> bool:
        return fast.serves(plan.width, plan.height, self.guided(plan))

    def warm_guidance(self, manifest: ModelManifest) -> float:
        """The guidance warm-up calls run with (the compiled path is warmed with guidance on)."""
        return 7.5

    def warm_sampler(self, manifest: ModelManifest) -> str:
        """The sampler warm-up calls run with (the compiled denoiser does not depend on it)."""
        return "euler"


_MODULES = {
    "sd1": "unet",
    "sd2": "unet",
    "sdxl": "unet",
    "sd-turbo": "unet",
    "sdxl-turbo": "unet",
    "sd3": "sd3",
    "flux": "flux",
}


def family_for(manifest: ModelManifest) -> Family:
    """The Family serving `manifest` (its module is imported on first use)."""
    import importlib

    module = importlib.import_module(f"{__package__}.{_MODULES[manifest.family]}")
    family: Family = module.family_of(manifest)
    return family
