"""Where a model's weights live: all on the GPU, or offloaded to host memory when they do not fit.

A Flux.1-dev-sized model (a 12-billion-parameter transformer, 24 GB in bf16, and a 9.5 GB T5
encoder) does not fit a 24 GiB card whole. Model offload keeps every component in host memory and
moves each to the GPU only while it runs (the text encoders, then the transformer for the steps,
then the VAE): the GPU needs room for the largest component, not for all of them, at the price of
copying the weights over PCIe once per job. Sequential offload streams each layer in on its own
and needs almost no GPU memory, far more slowly: the last resort when even the largest component
does not fit.

The choice is made once, at load, from the weight files' sizes against the engine's memory budget
(EASEL_WORKER_MEMORY_BUDGET_BYTES, by default half the GPU's memory) and the card's memory; it is
reported with every image the model makes (the PNG's parameters, `placement`).
"""

from __future__ import annotations

# All weights on the device (the fast case, and the only one on a CPU).
DEVICE = "device"
# Components in host memory, each moved to the GPU while it runs (diffusers enable_model_cpu_offload).
MODEL_OFFLOAD = "model-offload"
# Layers streamed to the GPU one at a time (diffusers enable_sequential_cpu_offload).
SEQUENTIAL_OFFLOAD = "sequential-offload"
PLACEMENTS = (DEVICE, MODEL_OFFLOAD, SEQUENTIAL_OFFLOAD)

# The largest component may take this share of the card under model offload; the rest is for the
# activations of one batch. A 24 GiB card (23.6 GiB usable) holds Flux.1-dev's 22.2 GiB transformer.
MODEL_OFFLOAD_SHARE = 0.96


def choose_placement(components: dict[str, int], budget_bytes: int, device: str, device_total: int) -> str:
    """DEVICE when the weights fit the budget (or there is no GPU), else the lightest offload that fits.

    `components` is the bytes of each component's weights in the precision they will run in;
    `device_total` the GPU's memory in bytes.
    """
    if not device.startswith("cuda"):
        # On a CPU every weight already lives in host memory: nothing to offload to.
        return DEVICE
    total = sum(components.values())
    if total <= budget_bytes:
        return DEVICE
    largest = max(components.values(), default=0)
    if largest <= device_total * MODEL_OFFLOAD_SHARE:
        return MODEL_OFFLOAD
    return SEQUENTIAL_OFFLOAD


def resident_bytes(components: dict[str, int], placement: str) -> int:
    """GPU memory the weights hold between jobs under `placement` (what the cache's budget counts)."""
    if placement == DEVICE:
        return sum(components.values())
    if placement == MODEL_OFFLOAD:
        return max(components.values(), default=0)
    return 0
