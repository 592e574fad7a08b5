"""Stage timing: spans for the denoising loop and the VAE decode inside one pipeline call.

Spans are children of whatever span is current in the calling thread: the worker runs `generate` in
a thread with its job's context copied in.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace

from .requests import Cancelled

tracer = trace.get_tracer("easel.inference.engine")


class StageClock:
    """Times the denoising loop and the VAE decode inside one pipeline call, without changing it.

    The pipeline runs as it always does (pixels stay identical): the step callback marks the end of
    each denoising step, and forward hooks on the VAE's decoder mark the decode. The two spans are
    written afterwards with those timestamps, as children of the current span. A call that stops
    early (cancelled, or failed) still gets its denoising span, marked as such.
    """

    def __init__(self) -> None:
        self.attributes: dict[str, Any] = {}
        self.started = 0
        self.last_step = 0
        self.steps = 0
        self.decode_started = 0
        self.decode_ended = 0
        self.ended = 0

    def step(self, step: int) -> None:
        self.last_step = time.time_ns()
        self.steps = step

    def _decode_start(self, *_: Any) -> None:
        if not self.decode_started:
            self.decode_started = time.time_ns()

    def _decode_end(self, *_: Any) -> None:
        # With VAE slicing the decoder runs once per image: the decode ends with the last one.
        self.decode_ended = time.time_ns()

    @contextlib.contextmanager
    def watch(self, decoder: Any, attributes: dict[str, Any]) -> Iterator[None]:
        """Times the call run inside; `decoder` is the module that decodes latents (the family's
        Family.decoder), or None when it has none to hook."""
        self.attributes = attributes
        handles = []
        if decoder is not None and hasattr(decoder, "register_forward_pre_hook"):
            handles = [
                decoder.register_forward_pre_hook(self._decode_start),
                decoder.register_forward_hook(self._decode_end),
            ]
        self.started = time.time_ns()
        try:
            yield
        except BaseException as exc:
            self.ended = time.time_ns()
            if self.steps:
                denoise = tracer.start_span(
                    "inference.denoise", start_time=self.started, attributes=self.attributes
                )
                denoise.set_attribute("easel.steps", self.steps)
                denoise.set_attribute("easel.outcome", "cancelled" if isinstance(exc, Cancelled) else "error")
                denoise.end(end_time=self.last_step)
            raise
        finally:
            for handle in handles:
                handle.remove()
        self.ended = time.time_ns()

    def emit(self) -> None:
        attributes = self.attributes
        denoise_end = self.last_step or self.decode_started or self.ended
        denoise = tracer.start_span("inference.denoise", start_time=self.started, attributes=attributes)
        denoise.set_attribute("easel.steps", self.steps)
        denoise.end(end_time=denoise_end)
        # Without decoder hooks (another VAE class), the decode is what follows the last step.
        decode_start = self.decode_started or denoise_end
        decode_end = self.decode_ended or self.ended
        tracer.start_span("inference.vae_decode", start_time=decode_start, attributes=attributes).end(
            end_time=decode_end
        )
