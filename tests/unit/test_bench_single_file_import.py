"""`bench/single_file_import.py` in tiny mode: it runs end to end and prints its ratio table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "single_file_import.py"


def test_the_import_bench_prints_import_against_cat_in_one_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--repeats", "2", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = dict(
        re.findall(r"^(baseline: cat|import, hard link|import, copy)\D.*?([0-9.]+)\s*$", done.stdout, re.M)
    )
    assert set(rows) == {"baseline: cat", "import, hard link", "import, copy"}, done.stdout
    assert float(rows["baseline: cat"]) == 1.0
    assert all(float(v) > 0 for v in rows.values())
    assert re.search(r"^goal: import at most 2x the baseline — (met|MISSED)", done.stdout, re.M)
    # Every import it timed was removed again: the volume holds only the bundled models.
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith("imported-")]
