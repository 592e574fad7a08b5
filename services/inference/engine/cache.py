"""The model cache: loaded models in least-recently-used order, bounded by a memory budget.

A model is loaded on first use and stays until the weights of the models loaded after it would
pass the budget; then the least recently used go first. An out-of-memory while loading unloads every
other model and tries once more. Errors a user can see are EaselErrors with a stable code; the
details (paths, the loader's own message) go to the log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from services.common.errors import EaselError, unavailable

from ..models import ModelManifest
from .budget import DEVICE, choose_placement, resident_bytes
from .family import LoadedModel, family_for
from .requests import installed, model_not_found
from .stages import tracer

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Share of memory the loaded weights may take by default; the rest is for activations.
DEFAULT_BUDGET_SHARE = 0.5


def default_budget(device: str) -> int:
    """The weight budget when none is set: a share of the GPU's memory, or of the machine's."""
    import torch

    if device.startswith("cuda"):
        _, total = torch.cuda.mem_get_info(torch.device(device))
        return int(total * DEFAULT_BUDGET_SHARE)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(total * DEFAULT_BUDGET_SHARE)


def empty_cache(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def out_of_memory(device: str, budget: int, model: str, what: str) -> EaselError:
    import torch

    if device.startswith("cuda"):
        _, total = torch.cuda.mem_get_info(torch.device(device))
        limit = f"the {total / 2**30:.0f} GiB of GPU memory"
    else:
        limit = f"the memory of this machine (weight budget {budget / 2**30:.1f} GiB)"
    return EaselError(
        "out_of_memory",
        f"{what.capitalize()} with {model} needs more than {limit}; ask for fewer images or a smaller "
        "size, then try again.",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class ModelCache:
    """Loaded models by name, least recently used first, within `budget_bytes` of weights.

    `prepare` runs on every freshly loaded model (acceleration and warm-up); it is the engine's.
    """

    def __init__(
        self,
        models: dict[str, ModelManifest],
        device: str,
        dtype: torch.dtype,
        budget_bytes: int,
        batch_invariant: bool,
        prepare: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.models = models
        self.device = device
        self.dtype = dtype
        self.budget_bytes = budget_bytes
        self.batch_invariant = batch_invariant
        self.prepare = prepare
        self.loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        # One generation at a time: pipelines and their schedulers hold per-call state.
        self.lock = threading.RLock()

    def get(self, model: str) -> LoadedModel:
        """The loaded model, loading it first if need be."""
        with self.lock:
            self.load(model)
            return self.loaded[model]

    def load(self, model: str) -> float:
        """Loads `model` unless it is loaded; returns the seconds spent."""
        if model not in self.models:
            raise model_not_found(self.models, model)
        with self.lock:
            if model in self.loaded:
                self.loaded.move_to_end(model)
                return 0.0
            started = time.perf_counter()
            with tracer.start_as_current_span(
                "inference.model_load", attributes={"easel.model": model, "easel.device": self.device}
            ):
                self.loaded[model] = self._load(model)
                self._evict_for(0, keep=model)
            return time.perf_counter() - started

    def unload(self, model: str) -> bool:
        from .. import pipelines

        with self.lock:
            loaded = self.loaded.pop(model, None)
            if loaded is None:
                return False
            pipelines.release(loaded)
            log.info("unloaded model %s", model)
            return True

    def device_total(self) -> int:
        """The GPU's memory in bytes (0 on a CPU)."""
        if not self.device.startswith("cuda"):
            return 0
        import torch

        _, total = torch.cuda.mem_get_info(torch.device(self.device))
        return int(total)

    def loaded_bytes(self) -> int:
        return sum(m.nbytes for m in self.loaded.values())

    def _evict_for(self, incoming: int, keep: str | None = None) -> None:
        used = self.loaded_bytes()
        for name in list(self.loaded):
            if used + incoming <= self.budget_bytes:
                break
            if name == keep:
                continue
            used -= self.loaded[name].nbytes
            log.info("evicting model %s to stay within the memory budget", name)
            self.unload(name)

    def load_failed(self, model: str, reason: str) -> EaselError:
        # The details (paths, the loader's own error) go to the log, not to the user.
        log.error("model %s at %s could not be loaded: %s", model, self.models[model].path, reason)
        return unavailable(
            "model_load_failed",
            f"Model {model} is installed but its files could not be loaded; an operator should rebuild "
            f"or fetch it again (`make models`). Meanwhile use another installed model: "
            f"{installed(self.models)}.",
        )

    def _load(self, model: str) -> LoadedModel:
        from .. import pipelines

        manifest = self.models[model]
        if not pipelines.folder_exists(manifest.path):
            raise self.load_failed(model, "its folder or model_index.json is missing")
        try:
            components = pipelines.estimate_components(manifest, self.dtype)
        except OSError as exc:
            raise self.load_failed(model, str(exc)) from None
        placement = choose_placement(components, self.budget_bytes, self.device, self.device_total())
        resident = resident_bytes(components, placement)
        if placement != DEVICE:
            log.warning(
                "model %s needs %.1f GiB of weights, more than the %.1f GiB budget: loading it with %s",
                model,
                sum(components.values()) / 2**30,
                self.budget_bytes / 2**30,
                placement,
            )
        self._evict_for(resident)
        family = family_for(manifest)
        for attempt in (1, 2):
            try:
                loaded = family.load(
                    manifest, self.device, self.dtype, self.batch_invariant, placement, resident
                )
                if self.prepare is not None:
                    self.prepare(loaded)
                return loaded
            except Exception as exc:
                if not pipelines.is_out_of_memory(exc):
                    log.exception("loading model %s failed", model)
                    raise self.load_failed(model, str(exc)[:400]) from None
            # Out of memory. Freeing happens here, outside the except block, once the traceback no
            # longer holds the half-loaded weights.
            if attempt == 1:
                log.warning("out of memory loading %s; unloading every other model and retrying", model)
                for name in list(self.loaded):
                    self.unload(name)
                empty_cache(self.device)
        raise out_of_memory(self.device, self.budget_bytes, model, f"loading {model}")

    def memory_stats(self) -> dict[str, int]:
        import torch

        stats = {
            "rss": rss_bytes(),
            "loaded_bytes": self.loaded_bytes(),
            "budget_bytes": self.budget_bytes,
            "loaded_models": len(self.loaded),
        }
        if self.device.startswith("cuda"):
            free, total = torch.cuda.mem_get_info(torch.device(self.device))
            stats.update(
                gpu_total=total,
                gpu_free=free,
                gpu_used=total - free,
                gpu_allocated=torch.cuda.memory_allocated(self.device),
                gpu_reserved=torch.cuda.memory_reserved(self.device),
            )
        else:
            # No GPU: zeros, so the GPU series exist on every worker and dashboards and alerts need no
            # special case (the alerts divide by gpu_total only where it is above zero).
            stats.update(gpu_total=0, gpu_free=0, gpu_used=0)
        return stats
