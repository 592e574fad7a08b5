"""The full load test: simulated users browsing, generating and using their gallery, all at once.

Starts the whole studio as real processes on this machine (its own Postgres and NATS in a temporary
folder, auth, gallery, inference api, one inference worker, gateway), registers `--users` accounts
(half call with a session token, half with an API key) and lets each loop, for `--seconds`, over a
mix of
  browsing  community feed, thumbnails, search (with SQL metacharacters), models, the HTML page;
  gallery   own images list, image record, original and thumbnail, title/tags/visibility edits,
            share links opened anonymously, likes and unlikes;
  generating  POST /api/v1/generations (tiny-sd, 64x64, 2 steps; some with a repeated seed, so the
            result cache answers), then following the job's event stream or polling it;
two "greedy" users queue 10 jobs at a time, over the studio's limit of 8 in flight per user, and so
meet its 429s. Then it waits for every accepted job to end. The promises checked (see
tests/reliability/loadgen.py): no 5xx or transport error; 4xx only 429 on submission, with
Retry-After; every accepted job completed, failed with a reason, or cancelled; the RSS of every
process flat after warm-up.

Prints the figures as Markdown and writes them as JSON (`--out`); exits 1 when a promise broke.

    .venv/bin/python bench/load_test.py [--users 50] [--seconds 60] [--out bench/results/load_test.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.local.stack import Ports, Stack  # noqa: E402
from tests.reliability.conftest import FAST_AUTH, SHARED_ADDRESS, pids  # noqa: E402
from tests.reliability.loadgen import LoadConfig, LoadRun  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-outstanding", type=int, default=2, help="jobs a user waits on at once")
    parser.add_argument(
        "--greedy-users", type=int, default=2, help="users who keep 10 jobs going (over the limit of 8)"
    )
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load_test.json")
    parser.add_argument(
        "--fast-hashing", action="store_true", help="cheap argon2 (the test setting) instead of the default"
    )
    args = parser.parse_args()
    if not (args.models_dir / "tiny-sd" / "easel-model.json").exists():
        print(f"no tiny-sd model in {args.models_dir}; run `make models` first", file=sys.stderr)
        return 2

    config = LoadConfig(
        users=args.users,
        duration_s=args.seconds,
        max_outstanding=args.max_outstanding,
        greedy_users=args.greedy_users,
        drain_timeout_s=args.drain_timeout,
    )
    with tempfile.TemporaryDirectory(prefix="easel-load-") as tmp:
        run_dir = Path(tmp)
        stack = Stack(
            run_dir=run_dir,
            models_dir=args.models_dir,
            ports=Ports.free(),
            log_dir=run_dir / "logs",
            grace=20,
            extra_env={**SHARED_ADDRESS, **(FAST_AUTH if args.fast_hashing else {})},
        )
        try:
            stack.start()
            print(f"stack up at {stack.gateway_url}; {args.users} users for {args.seconds:.0f} s", flush=True)
            report = asyncio.run(LoadRun(stack.gateway_url, config, pids(stack)).run())
            alive = set(pids(stack))
        finally:
            stack.stop()
    summary = report.summary()
    missing = {"auth", "gallery", "inference-api", "inference-worker", "gateway"} - alive
    if missing:
        report.problems.append(f"processes gone at the end: {sorted(missing)}")
        summary["problems"] = report.problems[:50]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(report.table())
    print(f"\nfigures written to {args.out}")
    if report.problems:
        print(f"\n{len(report.problems)} problems:", file=sys.stderr)
        for line in report.problems[:40]:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
