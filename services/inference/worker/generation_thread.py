"""The one thread that runs every engine call (model loads, warm-ups, generations).

CUDA graphs recorded by `torch.compile(mode="reduce-overhead")` are kept per thread: replaying
them from another thread records them again. So the engine lives on one long-lived thread, and
the event loop hands it work and awaits the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Work = tuple[contextvars.Context, Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]]


class GenerationThread:
    """A daemon thread (a stopping worker whose grace ran out can exit while it runs) taking calls
    in order. The caller's context variables go along, as with asyncio.to_thread, so the engine's
    spans (model load, denoising, VAE decode) are children of the span current at the call."""

    def __init__(self, name: str = "easel-generate") -> None:
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._work.put((contextvars.copy_context(), fn, loop, future))
        return await future

    def close(self) -> None:
        """Ends the thread after the calls already handed over."""
        self._work.put(None)

    def _main(self) -> None:
        while (work := self._work.get()) is not None:
            context, fn, loop, future = work
            try:
                outcome: tuple[bool, Any] = (True, context.run(fn))
            except BaseException as exc:  # handed to the awaiting task, which decides
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
