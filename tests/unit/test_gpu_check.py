"""`bench/gpu_check.sh`, the one command of the GPU check (issue 19), run end to end on the CPU.

The device machine lends 15 minutes in all, so the script's first run must not be there: here it runs
in its tiny mode (bundled tiny-sd, 2 steps, small counts; eager, and compiled at one bucket, 2, so a
single cold CPU compile) through the same steps as on the GPU: the package check (the packages are
importable here, so no wheel is installed), the bench under its time guard writing JSON after every
phase, the restart probe on the warm compile cache, the skipped Flux hook, and the one report made
from the JSON, written to $OUT. A second test drives the time guard itself: a variant whose estimate
does not fit is skipped and said so, and the report is made again from the JSON alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

TINY_PATHS = [
    "tiny-sd: plain pipeline, 1 at a time",
    "tiny-sd: plain pipeline, 2 at once",
    "tiny-sd: worker path [eager], 1 job at a time",
    "tiny-sd: worker path [eager], queue of 4 (fetch 2)",
    "tiny-sd: worker path [compiled], 1 job at a time",
    "tiny-sd: worker path [compiled], queue of 4 (fetch 2)",
]


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_throughput

        yield gpu_throughput
    finally:
        sys.path.remove(str(BENCH))


def _table(text: str) -> dict[str, list[str]]:
    """The main table's rows by path ("model: path" -> the other ten cells)."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| tiny-sd: ")
    ]
    return {r[0]: r[1:] for r in rows if len(r) == 11}


def _strict_json(path: Path) -> Any:
    def no_nan(name: str) -> None:
        raise AssertionError(f"{path} holds {name}, which strict JSON has not")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_nan)


def _check_figures(data: dict[str, Any]) -> None:
    for row in data["rows"]:
        where = row["path"]
        assert row["images"] > 0 and len(row["latencies"]) == row["images"], where
        assert 0 < row["images_per_s"] < 10_000, where
        assert 0 < row["p50_s"] <= row["p95_s"] < 60, where
        assert row["vs_plain_single"] > 0 and row["vs_plain_batch"] > 0, where
        assert 0 < row["floor_fraction"] < 1, where
        if row["variant"] is None:
            assert row["max_diff"] is None and row["within_tolerance"] is None, where
        else:
            # The worker's image for a prompt and seed is the plain pipeline's, within the tolerance.
            assert row["within_tolerance"] is True, where
            assert 0 <= row["max_diff"] <= data["tolerance"]["max_px"], where
            assert 0 <= row["mean_diff"] <= data["tolerance"]["mean_px"], where


@pytest.mark.timeout(1000)  # a cold CPU compile: about a minute idle, many on a machine shared by 8
def test_gpu_check_runs_end_to_end_in_tiny_mode(models_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "GPU_CHECK_MODELS_DIR": str(models_dir),
        "GPU_CHECK_BUDGET_S": "900",
        "OUT": str(out_dir),
    }
    started = time.perf_counter()
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=960,
        check=False,
    )
    took = time.perf_counter() - started
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-3000:]
    assert "packages: importable already; no wheels installed" in out, out
    assert "Flux-size row: skipped: bench/_models.py has no bench-flux model" in out, out
    spent = re.search(r"done in (\d+) s of 900; exit status 0$", out, re.MULTILINE)
    assert spent is not None and int(spent[1]) <= math.ceil(took), out[-3000:]

    # ONE report, last, with every row: plain at 1 and at 2, eager and compiled, single jobs and queue.
    report = out[out.index("the report (") :]
    table = _table(report)
    assert list(table) == TINY_PATHS, report
    for path in TINY_PATHS[2:]:
        max_diff, mean_diff = table[path][-2:]
        assert "OVER" not in max_diff and float(max_diff) <= 8 and float(mean_diff) <= 1, path
    assert "| tiny-sd: compiled |" in report and "compiled: 64x64 at batch 2" in report, report
    assert "- accuracy: max |Δ| " in report and ": within" in report, report
    assert "restart to first image (compiled, fresh process)" in report, report
    assert "time guard" not in report.split("tiny-sd: goals")[0], report  # nothing skipped

    # $OUT: the report, a JSON of the figures and the whole log.
    assert {p.name for p in out_dir.iterdir()} == {"gpu_check.md", "gpu_check.json", "gpu_check.log"}
    assert _table((out_dir / "gpu_check.md").read_text(encoding="utf-8")) == table
    assert "packages: importable already" in (out_dir / "gpu_check.log").read_text(encoding="utf-8")
    data = _strict_json(out_dir / "gpu_check.json")
    assert [r["model"] + ": " + r["path"] for r in data["rows"]] == TINY_PATHS
    _check_figures(data)
    assert data["info"]["tiny"] is True and data["info"]["buckets"] == [2]
    assert data["notes"] == [] and data["skipped_restart"] == {}
    (compiled,) = [w for w in data["warms"] if w["variant"] == "compiled"]
    assert compiled["serves"] == "compiled: 64x64 at batch 2", compiled
    assert compiled["warm_s"] > 0 and compiled["misses"] > 0, compiled  # compiled cold, in-process
    restart = data["restarts"]["tiny-sd"]
    assert restart["error"] is None, restart
    # The restarted process found every graph in the cache the run had filled, and served from it.
    assert restart["hits"] > 0 and restart["misses"] == 0 and restart["compiled"] is True, restart
    assert 0 < restart["to_first_image_s"] <= restart["wall_s"] < 900, restart
    goals = data["goals"]["tiny-sd"]
    assert goals["variant"] == "compiled" and goals["accuracy_within"] is True, goals
    assert goals["accuracy_images"] == 4 and goals["restart_s"] == restart["wall_s"], goals
    assert goals["queue_images_per_s"] > 0 and goals["single_p50_s"] > 0, goals


def test_time_guard_skips_what_does_not_fit_and_the_report_is_made_again_from_json(
    bench: ModuleType, models_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    """A compile estimated at a day does not start before a deadline five minutes away: the eager
    rows are measured, the compiled variant and its restart probe are skipped, and the report says
    so. Then `--render` rebuilds the same report from the JSON, as gpu_check.sh does."""
    figures = tmp_path / "run.json"
    argv = [
        *"--tiny --steps 1 --singles 1 --burst 2 --queue 2 --batch-max 2 --variants eager,compiled".split(),
        *["--buckets", "2", "--compile-estimate-s", "86400", "--deadline", str(time.time() + 300)],
        *["--models-dir", str(models_dir), "--json", str(figures)],
    ]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert list(_table(printed)) == [
        "tiny-sd: plain pipeline, 1 at a time",
        "tiny-sd: plain pipeline, 2 at once",
        "tiny-sd: worker path [eager], 1 job at a time",
        "tiny-sd: worker path [eager], queue of 2 (fetch 2)",
    ], printed
    assert "note: tiny-sd: worker path [compiled] skipped by the time guard: about " in printed, printed
    assert "- restart to first image: not measured (" in printed and "was not measured" in printed

    data = _strict_json(figures)
    _check_figures(data)
    assert len(data["notes"]) == 1 and "skipped by the time guard" in data["notes"][0]
    assert [w["variant"] for w in data["warms"]] == ["eager"] and data["restarts"] == {}
    assert data["goals"]["tiny-sd"]["restart_s"] is None
    assert "was not measured" in data["goals"]["tiny-sd"]["restart_not_measured"]

    out_dir = tmp_path / "out"
    assert bench.main(["--render", str(figures), "--out", str(out_dir)]) == 0
    rendered = capsys.readouterr().out
    # The same report, word for word: the run's time, machine and load come from the JSON too.
    assert rendered.strip() == printed[printed.index("Easel GPU throughput") :].strip()
    assert _strict_json(out_dir / "gpu_check.json")["rows"] == data["rows"]

    # A deadline already passed: nothing is measured, and the report still comes, saying why.
    late = tmp_path / "late.json"
    argv = ["--tiny", "--models-dir", str(models_dir), "--json", str(late)]
    argv += ["--deadline", str(time.time() - 1)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "note: tiny-sd: not measured: the time guard's deadline had passed" in printed, printed
    assert _strict_json(late)["rows"] == []
