"""The Engine: validates requests, keeps models loaded, runs batches of images.

It joins the parts: requests.py (what a job asks for, validation), cache.py (loaded models within a
memory budget), batching.py (one pipeline call, bucket padding, out-of-memory fallback), warmup.py
(acceleration at load), stages.py (spans), and the model's Family (family.py, unet.py, ...).
`Engine.generate` is synchronous; the worker calls it in a thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image

from services.common.config import SettingsError

from ..accel import Accel
from ..models import ModelManifest
from ..schedulers import resolve_sampler
from . import batching, warmup
from .cache import ModelCache, default_budget
from .family import LoadedModel, family_for
from .requests import (
    TASK_OF_KIND,
    GenerationRequest,
    Plan,
    effective_strength,
    installed,
    items_of,
    output_size,
    validate_request,
)

if TYPE_CHECKING:
    from ..accel import FastPath

log = logging.getLogger(__name__)


class Engine:
    """Loaded pipelines in an LRU bounded by a memory budget, and batched generation on them."""

    def __init__(
        self,
        models: dict[str, ModelManifest],
        device: str = "auto",
        dtype: str = "auto",
        memory_budget_bytes: int | None = None,
        batch_invariant: bool | None = None,
        accel: Accel | None = None,
    ) -> None:
        import torch
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from .. import pipelines

        self.models = dict(models)
        self.device = pipelines.resolve_device(device)
        self.dtype = pipelines.resolve_dtype(dtype, self.device)
        self.memory_budget_bytes = (
            memory_budget_bytes if memory_budget_bytes is not None else default_budget(self.device)
        )
        # Bit-identical images in any batch cost the batching speed-up; a CPU has little of that to
        # lose, a GPU has most of its throughput in it (there batches match solo runs to rounding).
        self.batch_invariant = self.device == "cpu" if batch_invariant is None else batch_invariant
        self.accel = accel or Accel()
        self.cache_folder = None
        if self.accel.compiled and self.accel.cache_dir is not None:
            from .. import accel as accel_module

            self.cache_folder = accel_module.use_cache(self.accel.cache_dir, self.device)
        self.cache = ModelCache(
            self.models,
            self.device,
            self.dtype,
            self.memory_budget_bytes,
            self.batch_invariant,
            prepare=self._accelerate if self.accel.enabled else None,
        )
        threads = os.environ.get("EASEL_TORCH_THREADS", "").strip()
        if threads:
            if not threads.isdigit() or int(threads) < 1:
                raise SettingsError("EASEL_TORCH_THREADS", "set it to a whole number of threads, 1 or more")
            torch.set_num_threads(int(threads))
        diffusers_logging.disable_progress_bar()
        logging.getLogger("diffusers.models.modeling_utils").addFilter(_quiet_cast_warning)
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        log.info(
            "engine on %s (%s), weight budget %.1f GiB, %s, compile cache %s, models: %s",
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.memory_budget_bytes / 2**30,
            self.accel.describe(),
            self.cache_folder or "torch's default",
            installed(self.models),
        )

    # --- requests -------------------------------------------------------------------------

    def add_model(self, manifest: ModelManifest) -> None:
        """Serves a model installed while running (the cache shares this dict; loaded on first use)."""
        self.models[manifest.name] = manifest

    def validate(self, model: str, req: GenerationRequest) -> None:
        validate_request(self.models, model, req)

    def output_size(self, model: str, req: GenerationRequest) -> tuple[int, int]:
        return output_size(self.models[model], req)

    def compatible_key(self, model: str, req: GenerationRequest) -> tuple[object, ...]:
        """Requests with equal keys can run as one pipeline call (the model's Family says which)."""
        manifest = self.models.get(model)
        if manifest is None:
            # Unknown models fail validation; any family's key keeps them apart from the rest.
            from .family import Family

            return Family().batch_key(None, model, req)
        return family_for(manifest).batch_key(manifest, model, req)

    # --- models ---------------------------------------------------------------------------

    def load(self, model: str) -> float:
        """Loads `model` unless it is loaded; returns the seconds spent."""
        return self.cache.load(model)

    def loaded(self, model: str) -> LoadedModel | None:
        """The loaded model, if it is loaded (for tests and the bench: its pipelines and fast path)."""
        with self.cache.lock:
            return self.cache.loaded.get(model)

    def compiled(self, model: str) -> FastPath | None:
        """The loaded model's compiled path (sizes, buckets, warm-up time), if it has one."""
        loaded = self.loaded(model)
        return loaded.fast if loaded is not None else None

    def loaded_models(self) -> list[str]:
        """Loaded models, least recently used first."""
        with self.cache.lock:
            return list(self.cache.loaded)

    def unload(self, model: str) -> bool:
        return self.cache.unload(model)

    def memory_stats(self) -> dict[str, int]:
        return self.cache.memory_stats()

    def _accelerate(self, loaded: LoadedModel) -> None:
        if loaded.placement != "device":
            # Compiled graphs and CUDA graphs want weights that stay on the GPU; offloaded ones move.
            log.info("model %s is offloaded (%s): it runs uncompiled", loaded.manifest.name, loaded.placement)
            return
        warmup.accelerate(loaded, self.accel, self.batch_invariant)

    def placement(self, model: str) -> str | None:
        """Where a loaded model's weights live (budget.py), or None when it is not loaded."""
        loaded = self.loaded(model)
        return loaded.placement if loaded is not None else None

    # --- generation -----------------------------------------------------------------------

    def generate(
        self,
        model: str,
        reqs: list[GenerationRequest],
        on_step: Callable[[int, int], bool] | None = None,
    ) -> list[list[Image.Image]]:
        """Images for each request, made in one pipeline call; raises Cancelled when on_step says so.

        on_step(step, total) runs after every denoising step; returning False (exactly) cancels.
        Every image has its own seeded generator, so it comes out the same alone or in a batch.
        """
        if not reqs:
            return []
        for req in reqs:
            self.validate(model, req)
        keys = {self.compatible_key(model, req) for req in reqs}
        if len(keys) != 1:
            raise ValueError("requests in one generate() call must have the same compatible_key")
        first = reqs[0]
        width, height = self.output_size(model, first)
        plan = Plan(
            task=TASK_OF_KIND[first.kind],
            width=width,
            height=height,
            steps=first.steps,
            guidance=float(first.guidance),
            sampler=resolve_sampler(first.sampler),
            strength=effective_strength(first),
            model=model,
        )
        items = [item for req in reqs for item in items_of(req, width, height)]
        with self.cache.lock:
            loaded = self.cache.get(model)
            started = time.perf_counter()
            images = batching.run_with_retry(
                loaded, plan, items, on_step, self.batch_invariant, self.memory_budget_bytes
            )
        log.info(
            "generated %d %s image(s) %dx%d with %s in %.2fs",
            len(images),
            first.kind,
            width,
            height,
            model,
            time.perf_counter() - started,
        )
        if plan.task == "inpaint":
            images = batching.paste_outside_mask(images, items)
        if loaded.placement != "device":
            # Reported with the image: encode_png writes it into the PNG's parameters.
            for image in images:
                image.info["easel_placement"] = loaded.placement
        if loaded.manifest.sha256:
            # A single-file checkpoint's hash, as A1111 writes it ("Model hash"), so model sites can
            # link the image to its model.
            for image in images:
                image.info["easel_model_hash"] = loaded.manifest.sha256[:10]
        out: list[list[Image.Image]] = []
        at = 0
        for req in reqs:
            out.append(images[at : at + len(req.seeds)])
            at += len(req.seeds)
        return out


def _quiet_cast_warning(record: logging.LogRecord) -> bool:
    # SDXL pipelines cast their VAE to float32 and back around every encode and decode by design;
    # diffusers warns about each cast, which would fill the worker's log.
    return not record.getMessage().startswith("There are modules in")
