"""Helpers shared by the benchmarks: closed-loop load, percentiles, machine and version notes."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime


async def drive(
    call: Callable[[int], Awaitable[bool]], seconds: float, concurrency: int
) -> tuple[int, int, list[float]]:
    """`concurrency` closed loops calling `call(loop_index)` for `seconds`.

    Returns (successful calls, failed calls, latencies in seconds of the successful ones). A call
    reports failure by returning False (an answer other than the one expected) or raising.
    """
    latencies: list[float] = []
    failed = 0
    stop_at = time.perf_counter() + seconds

    async def loop(index: int) -> None:
        nonlocal failed
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                ok = await call(index)
            except Exception:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                failed += 1

    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return len(latencies), failed, latencies


def pct(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile `q` (0..1) of `values`; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def loadavg() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{os.cpu_count()} CPU ({cpu_model()}), {platform.system()} {platform.release()}"


def versions(packages: Iterable[str]) -> str:
    parts = [f"python {platform.python_version()}"]
    for name in packages:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(parts)


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def metric_total(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of every sample of `name` in Prometheus text `text` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        if labels:
            raw = match.group(2) or ""
            if not all(f'{k}="{v}"' in raw for k, v in labels.items()):
                continue
        total += float(match.group(3))
    return total


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, first column left-aligned and the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows)])
