"""Whether the generation in progress still advances: the worker's `/livez`.

A worker whose generation thread hangs (a wedged GPU driver, a deadlock in a kernel) still answers
on its event loop, so `/healthz` stays 200 and its jobs' heartbeats keep them from every other
worker. The stall clock is fed by the denoising step callbacks: from the start of a generation (after
its model is loaded) to its end, a gap longer than EASEL_WORKER_STALL_S between two marks makes the
worker not live, and Kubernetes' liveness probe restarts it (its jobs then go to another worker).
An idle worker, or one loading a model, is live.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StallClock:
    """Written from the generation thread (plain float stores), read from the event loop."""

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self._clock = clock
        self._mark: float | None = None

    def begin(self) -> None:
        """A generation starts (its model is loaded): the clock runs."""
        self._mark = self._clock()

    def beat(self) -> None:
        """The generation advanced (a denoising step ended)."""
        self._mark = self._clock()

    def end(self) -> None:
        """No generation in progress: nothing can stall."""
        self._mark = None

    def stalled_for(self) -> float:
        """Seconds since the running generation last advanced; 0 when none runs."""
        mark = self._mark
        return 0.0 if mark is None else max(0.0, self._clock() - mark)

    def live(self) -> bool:
        return self.stalled_for() <= self.limit_s
