"""Samplers: our names, AUTOMATIC1111's names, and the diffusers scheduler behind each.

The tables are plain data so that the job API can validate a sampler without importing diffusers;
`make_scheduler` imports it only when a worker builds a scheduler.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, cast

from services.common.errors import invalid


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: str
    config: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # the AUTOMATIC1111 name


_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("euler", "EulerDiscreteScheduler", {}, "Euler"),
        Sampler("euler_karras", "EulerDiscreteScheduler", _KARRAS, "Euler Karras"),
        Sampler("euler_a", "EulerAncestralDiscreteScheduler", {}, "Euler a"),
        Sampler("ddim", "DDIMScheduler", {}, "DDIM"),
        Sampler("dpmpp_2m", "DPMSolverMultistepScheduler", _DPMPP_2M, "DPM++ 2M"),
        Sampler(
            "dpmpp_2m_karras", "DPMSolverMultistepScheduler", {**_DPMPP_2M, **_KARRAS}, "DPM++ 2M Karras"
        ),
        Sampler("dpmpp_2m_sde", "DPMSolverMultistepScheduler", _DPMPP_2M_SDE, "DPM++ 2M SDE"),
        Sampler(
            "dpmpp_2m_sde_karras",
            "DPMSolverMultistepScheduler",
            {**_DPMPP_2M_SDE, **_KARRAS},
            "DPM++ 2M SDE Karras",
        ),
        # PLMS is PNDM without the Runge-Kutta warm-up steps.
        Sampler("pndm", "PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
        Sampler("lms", "LMSDiscreteScheduler", {}, "LMS"),
        Sampler("lms_karras", "LMSDiscreteScheduler", _KARRAS, "LMS Karras"),
        Sampler("heun", "HeunDiscreteScheduler", {}, "Heun"),
        Sampler("heun_karras", "HeunDiscreteScheduler", _KARRAS, "Heun Karras"),
        Sampler("unipc", "UniPCMultistepScheduler", {}, "UniPC"),
    )
}

# AUTOMATIC1111 sampler names (as its /sdapi/v1/samplers lists them) to ours.
A1111_SAMPLERS: dict[str, str] = {s.label: s.name for s in SAMPLERS.values()}
# A1111 1.9+ sends the schedule separately ("scheduler": "karras").
A1111_SCHEDULERS = ("automatic", "karras")

_BY_LOWER: dict[str, str] = {
    **{label.lower(): name for label, name in A1111_SAMPLERS.items()},
    **{name: name for name in SAMPLERS},
}


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def a1111_name(sampler: str) -> str:
    """The AUTOMATIC1111 label for one of our samplers (for PNG `parameters` text)."""
    return SAMPLERS[sampler].label if sampler in SAMPLERS else sampler


def resolve_sampler(name: str, scheduler: str = "automatic") -> str:
    """Our sampler name for `name` in our or A1111 spelling, with A1111's optional schedule type."""
    key = (name or "").strip().lower()
    ours = _BY_LOWER.get(key) or _BY_LOWER.get(key.replace(" ", "_"))
    if ours is None:
        raise invalid(
            "unknown_sampler",
            f"Sampler {name!r} is not available; use one of: {', '.join(SAMPLERS)} "
            f"(or their AUTOMATIC1111 names: {', '.join(A1111_SAMPLERS)}).",
            field="sampler",
        )
    sched = (scheduler or "automatic").strip().lower()
    if sched not in A1111_SCHEDULERS:
        raise invalid(
            "unknown_scheduler",
            f"Schedule type {scheduler!r} is not available; use one of: {', '.join(A1111_SCHEDULERS)}.",
            field="scheduler",
        )
    if sched == "karras" and not ours.endswith("_karras"):
        karras = f"{ours}_karras"
        if karras not in SAMPLERS:
            with_karras = [n for n in SAMPLERS if n.endswith("_karras")]
            raise invalid(
                "unknown_scheduler",
                f"Sampler {name!r} has no Karras schedule; use schedule type automatic, or one of: "
                f"{', '.join(with_karras)}.",
                field="scheduler",
            )
        ours = karras
    return ours


@functools.cache
def _lms_class() -> type[Any]:
    """diffusers' LMS integrates its coefficients with scipy, which we do not install.

    The integrand is a Lagrange basis polynomial of degree < 4, so 4-point Gauss-Legendre quadrature
    computes the same integral exactly with numpy alone.
    """
    import numpy as np
    from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler

    nodes, weights = np.polynomial.legendre.leggauss(4)

    class NumpyLMSDiscreteScheduler(LMSDiscreteScheduler):
        def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
            sig = [float(s) for s in self.sigmas]
            lo, hi = sig[t], sig[t + 1]
            taus = (hi - lo) / 2 * nodes + (hi + lo) / 2
            prod = np.ones_like(taus)
            for k in range(order):
                if k != current_order:
                    prod *= (taus - sig[t - k]) / (sig[t - current_order] - sig[t - k])
            return float((hi - lo) / 2 * np.sum(weights * prod))

    return cast(type[Any], NumpyLMSDiscreteScheduler)


def scheduler_class(sampler: str) -> type[Any]:
    if sampler not in SAMPLERS:
        sampler = resolve_sampler(sampler)
    spec = SAMPLERS[sampler]
    if spec.scheduler_class == "LMSDiscreteScheduler":
        return _lms_class()
    import diffusers

    return cast(type[Any], getattr(diffusers, spec.scheduler_class))


def make_scheduler(sampler: str, base_config: Any) -> Any:
    """A fresh scheduler for `sampler` built on a model's own scheduler config.

    The model's config carries what its training fixed (beta schedule, prediction type, timestep
    spacing); the sampler only changes the solver and the sigma schedule.
    """
    if sampler not in SAMPLERS:
        sampler = resolve_sampler(sampler)
    cls = scheduler_class(sampler)
    return cls.from_config(base_config, **SAMPLERS[sampler].config)
