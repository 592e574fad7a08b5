"""Control-plane load: jobs accepted per second through the gateway, and per-job overhead.

Starts the whole studio as real processes on this machine (Postgres and NATS of its own, auth,
gallery, inference api, gateway; the worker later), registers `--users` accounts with an API key
each, and measures, all in one run:

  baselines (same concurrency as the submit phase)
    1. bare gRPC no-op: standard health Check against the inference api (one gRPC hop, no work),
    2. gateway GET /healthz (HTTP parse + middlewares + JSON, no backend call),
    3. gateway GET /api/v1/auth/me with an API key (the above + Auth.Authenticate over gRPC);
  submit phase
    `--concurrency` closed loops POST /api/v1/generations (tiny-sd, 1 step, 64x64, random seed)
    with the users' keys in turn for `--seconds`. "Accepted" = answered 202: by then the job row is
    committed in Postgres and its work message acknowledged by JetStream. No worker runs in this
    phase (in production workers sit on GPU nodes, not on the control plane's cores), so the
    figure is what the control plane alone can take in. CPU time of every process is read before
    and after: CPU ms per accepted job, the figure that noise on a shared machine disturbs least;
  drain
    the worker starts and every accepted job must end completed or failed (the run fails
    otherwise);
  overhead phase
    `--latency-jobs` jobs one after another, each: submit, follow GET /api/v1/jobs/{id}/events
    until the terminal event. Per job:
        end-to-end = client saw the terminal event - client started the submit
        model time = increase of the worker's `easel_inference_run_seconds_sum` across the job
                     (the wall time of its engine.generate call: prompt encoding, denoising, VAE
                     decode; model loading excluded; exactly one pipeline call ran, checked)
        overhead   = end-to-end - model time
    i.e. everything that is not the model: HTTP, auth, validation, Postgres, JetStream, the
    worker's pull, PNG encoding, gallery storage, events back to the api and to the client.

A/B mode (`--ab OTHER_TREE`): a second stack runs the services from another checkout (for example
the code before a change) beside this one, and every phase alternates between the two in short
slices, so both see the same background load; the report puts them side by side.

Per-user limits are raised for the run (EASEL_JOBS_IN_FLIGHT_LIMIT and EASEL_JOBS_PER_DAY_LIMIT =
10,000,000): the submit phase queues thousands of jobs per user on purpose. So are the gateway's
request rate limits (EASEL_RATE_LIMIT_*): eight users at hundreds of requests a second each are a
capacity test here, not abuse.

    .venv/bin/python bench/control_plane.py [--seconds 10] [--concurrency 32] [--users 8]
                                            [--latency-jobs 50] [--ab ../other-checkout]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import drive, loadavg, machine, metric_total, now_utc, pct, table, versions
from _otlp import Receiver, timeline

from services.local.stack import Ports, Stack

PASSWORD = "bench passphrase 123"
MODEL = "tiny-sd"
LIMIT = "10000000"
RUN_METRIC = "easel_inference_run_seconds"
TERMINAL = ("completed", "failed", "cancelled")
BASELINES = (
    "gRPC no-op (health Check, inference api)",
    "gateway GET /healthz",
    "gateway GET /api/v1/auth/me (API key)",
)
_PACKAGES = ("grpcio", "aiohttp", "asyncpg", "nats-py", "protobuf", "torch", "diffusers")


def job_body(n: int) -> dict[str, Any]:
    return {"prompt": f"bench job {n} a red cat", "model": MODEL, "steps": 1, "width": 64, "height": 64}


@dataclass
class Row:
    count: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else float("nan")

    def add(self, count: int, failed: int, seconds: float, latencies: list[float]) -> None:
        self.count += count
        self.failed += failed
        self.seconds += seconds
        self.latencies += latencies


@dataclass
class Overhead:
    job_id: str
    started: float  # wall clock at submit start
    accepted_s: float  # submit round trip
    end_to_end_s: float
    model_s: float
    pipeline_calls: int
    status: str

    @property
    def overhead_s(self) -> float:
        return self.end_to_end_s - self.model_s


@dataclass
class Target:
    """One stack under test, with its accounts and what was measured on it."""

    label: str
    tree: Path
    stack: Stack
    headers: list[dict[str, str]] = field(default_factory=list)
    baselines: dict[str, Row] = field(default_factory=dict)
    submit: Row = field(default_factory=Row)
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    drain_s: float = 0.0
    drained: dict[str, int] = field(default_factory=dict)
    overheads: list[Overhead] = field(default_factory=list)
    breakdown: dict[str, list[float]] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=lambda: iter(range(10**9)))

    @property
    def base(self) -> str:
        return self.stack.gateway_url

    @property
    def cpu_per_job(self) -> dict[str, float]:
        return {k: v * 1000 / max(self.submit.count, 1) for k, v in self.cpu_s.items()}


@dataclass
class Result:
    targets: list[Target]
    load_before: str = ""
    load_after: str = ""
    postgres: str = ""
    overhead_from: float = 0.0  # wall clock when the counted overhead jobs began


@contextlib.contextmanager
def in_tree(tree: Path) -> Iterator[None]:
    """Processes started inside run `python -m services...` from `tree` (the child's sys.path
    starts with its working directory)."""
    before = os.getcwd()
    os.chdir(tree)
    try:
        yield
    finally:
        os.chdir(before)


async def make_users(http: aiohttp.ClientSession, base: str, count: int) -> list[str]:
    async def one(i: int) -> str:
        name = f"bench{i}{uuid.uuid4().hex[:6]}"
        reg = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        async with http.post(f"{base}/api/v1/auth/register", json=reg) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(f"{base}/api/v1/auth/login", json={"username": name, "password": PASSWORD}) as r:
            assert r.status == 200, await r.text()
            token = (await r.json())["token"]
        async with http.post(
            f"{base}/api/v1/keys", json={"name": "bench"}, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            return str((await resp.json())["key"])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def cpu_seconds(proc: psutil.Process, tree: bool) -> float:
    """User + system CPU seconds of `proc` (and, with `tree`, of its children: Postgres backends)."""
    total = 0.0
    try:
        procs = [proc, *proc.children(recursive=True)] if tree else [proc]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def processes(stack: Stack) -> dict[str, tuple[psutil.Process, bool]]:
    procs = {
        name: (psutil.Process(child.proc.pid), False)
        for name, child in stack.children.items()
        if child.proc is not None and name != "inference-worker"
    }
    if stack.postgres is not None and stack.postgres.proc is not None:
        procs["postgres"] = (psutil.Process(stack.postgres.proc.pid), True)
    if stack.nats is not None and stack.nats.proc is not None:
        procs["nats"] = (psutil.Process(stack.nats.proc.pid), False)
    return procs


def cpu_snapshot(stack: Stack) -> dict[str, float]:
    return {k: cpu_seconds(p, tree) for k, (p, tree) in processes(stack).items()}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # nosec B310 - loopback URL we built
        return str(resp.read().decode())


async def run_stats(stack: Stack) -> tuple[float, float]:
    text = await asyncio.to_thread(scrape, stack.metrics_url("inference-worker"))
    return metric_total(text, f"{RUN_METRIC}_sum"), metric_total(text, f"{RUN_METRIC}_count")


async def follow(http: aiohttp.ClientSession, base: str, job_id: str, headers: dict[str, str]) -> str:
    """Reads the job's event stream until its terminal event; returns that status."""
    status = ""
    while True:
        async with http.get(
            f"{base}/api/v1/jobs/{job_id}/events", headers=headers, timeout=aiohttp.ClientTimeout(total=120)
        ) as resp:
            if resp.status == 204:  # ended before we looked: read the job
                async with http.get(f"{base}/api/v1/jobs/{job_id}", headers=headers) as r:
                    return str((await r.json())["status"])
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    status = line.split(":", 1)[1].strip()
                    if status in TERMINAL:
                        return status
        # The stream ended without a terminal event (a restart): follow again.


Call = Callable[[int], Awaitable[bool]]


async def interleave(
    targets: list[Target], make: Callable[[Target], Call], seconds: float, slice_s: float, conc: int
) -> dict[str, tuple[int, int, float, list[float]]]:
    """`seconds` of load per target, in slices of `slice_s` taking turns (the same background load
    for each); returns per target (ok, failed, seconds, latencies)."""
    out: dict[str, tuple[int, int, float, list[float]]] = {t.label: (0, 0, 0.0, []) for t in targets}
    calls = {t.label: make(t) for t in targets}
    left = seconds
    while left > 1e-9:
        step = min(slice_s, left)
        for t in targets:
            n, failed, lat = await drive(calls[t.label], step, conc)
            ok0, failed0, s0, lat0 = out[t.label]
            out[t.label] = (ok0 + n, failed0 + failed, s0 + step, lat0 + lat)
        left -= step
    return out


async def run(targets: list[Target], args: argparse.Namespace) -> Result:
    res = Result(targets)
    conc = args.concurrency
    slice_s = args.slice if len(targets) > 1 else max(args.seconds, args.baseline_seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc + 4)) as http:
        for t in targets:
            keys = await make_users(http, t.base, args.users)
            t.headers = [{"Authorization": f"Bearer {k}"} for k in keys]
        db = {t.label: await asyncpg.connect(t.stack.database_url) for t in targets}
        res.postgres = str(await db[targets[0].label].fetchval("SHOW server_version"))

        # --- baselines ---------------------------------------------------------------------------
        channels = {t.label: grpc.aio.insecure_channel(t.stack.target("inference-api")) for t in targets}

        def noop(t: Target) -> Call:
            health = health_pb2_grpc.HealthStub(channels[t.label])

            async def call(_: int) -> bool:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                return True

            return call

        def healthz(t: Target) -> Call:
            async def call(_: int) -> bool:
                async with http.get(f"{t.base}/healthz") as resp:
                    await resp.read()
                    return resp.status == 200

            return call

        def me(t: Target) -> Call:
            async def call(i: int) -> bool:
                async with http.get(f"{t.base}/api/v1/auth/me", headers=t.headers[i % len(t.headers)]) as r:
                    await r.read()
                    return r.status == 200

            return call

        warm = min(2.0, args.seconds / 5)
        res.load_before = loadavg()
        for label, make in zip(BASELINES, (noop, healthz, me), strict=True):
            await interleave(targets, make, warm, warm, conc)
            got = await interleave(targets, make, args.baseline_seconds, slice_s, conc)
            for t in targets:
                row = Row()
                row.add(*got[t.label])
                t.baselines[label] = row
        for ch in channels.values():
            await ch.close()

        # --- submit phase (no worker) ------------------------------------------------------------
        def submit(t: Target) -> Call:
            async def call(i: int) -> bool:
                async with http.post(
                    f"{t.base}/api/v1/generations",
                    json=job_body(next(t.counter)),
                    headers=t.headers[i % len(t.headers)],
                ) as resp:
                    body = await resp.read()
                    t.statuses[resp.status] = t.statuses.get(resp.status, 0) + 1
                    if resp.status != 202:
                        return False
                    t.accepted.append(json.loads(body)["job"]["id"])
                    return True

            return call

        await interleave(targets, submit, warm, warm, conc)
        for t in targets:
            t.statuses.clear()
        left = args.seconds
        while left > 1e-9:
            step = min(slice_s, left)
            for t in targets:
                cpu0 = cpu_snapshot(t.stack)
                n, failed, lat = await drive(submit(t), step, conc)
                cpu1 = cpu_snapshot(t.stack)
                t.submit.add(n, failed, step, lat)
                for k in cpu1:
                    t.cpu_s[k] = t.cpu_s.get(k, 0.0) + cpu1[k] - cpu0.get(k, cpu1[k])
            left -= step
        res.load_after = loadavg()

        # --- drain -------------------------------------------------------------------------------
        async def drain(t: Target) -> None:
            t0 = time.perf_counter()
            with in_tree(t.tree):
                await asyncio.to_thread(t.stack.start_one, "inference-worker")
            ids = [uuid.UUID(j) for j in t.accepted]
            deadline = time.monotonic() + args.drain_timeout
            while True:
                rows = await db[t.label].fetch(
                    "SELECT status, count(*) AS n FROM inference.jobs WHERE id = ANY($1::uuid[]) "
                    "GROUP BY status",
                    ids,
                )
                t.drained = {r["status"]: int(r["n"]) for r in rows}
                if sum(t.drained.get(s, 0) for s in TERMINAL) == len(ids) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            t.drain_s = time.perf_counter() - t0

        for t in targets:  # one after the other: two workers would share the two cores
            await drain(t)

        # --- overhead phase ----------------------------------------------------------------------
        async def one_job(t: Target, n: int, hdrs: dict[str, str]) -> Overhead:
            sum0, count0 = await run_stats(t.stack)
            wall = time.time()
            t0 = time.perf_counter()
            async with http.post(f"{t.base}/api/v1/generations", json=job_body(n), headers=hdrs) as resp:
                assert resp.status == 202, await resp.text()
                job_id = str((await resp.json())["job"]["id"])
            t1 = time.perf_counter()
            status = await follow(http, t.base, job_id, hdrs)
            t2 = time.perf_counter()
            # The worker observes its histogram right after generate returns, before the images are
            # stored, so the figure is there by the time the completed event reached us.
            sum1, count1 = await run_stats(t.stack)
            return Overhead(job_id, wall, t1 - t0, t2 - t0, sum1 - sum0, int(count1 - count0), status)

        for i in range(args.latency_warmup):
            for t in targets:
                await one_job(t, -1 - i, t.headers[0])
        res.overhead_from = time.time()
        for i in range(args.latency_jobs):
            for t in targets:
                t.overheads.append(await one_job(t, i, t.headers[i % len(t.headers)]))

        # Where the overhead goes, from the job rows (api and worker clocks: one machine).
        for t in targets:
            records = {
                str(r["id"]): r
                for r in await db[t.label].fetch(
                    "SELECT id, started_at, finished_at FROM inference.jobs WHERE id = ANY($1::uuid[])",
                    [uuid.UUID(o.job_id) for o in t.overheads],
                )
            }
            parts: dict[str, list[float]] = {k: [] for k in ("accept", "to_start", "worker_other", "notify")}
            for o in t.overheads:
                r = records.get(o.job_id)
                if r is None or r["started_at"] is None or r["finished_at"] is None:
                    continue
                started, finished = r["started_at"].timestamp(), r["finished_at"].timestamp()
                parts["accept"].append(o.accepted_s)
                parts["to_start"].append(started - o.started)
                parts["worker_other"].append(finished - started - o.model_s)
                parts["notify"].append(o.started + o.end_to_end_s - finished)
            t.breakdown = parts
        for conn in db.values():
            await conn.close()
    return res


# --- the report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _stats(values: list[float]) -> list[str]:
    if not values:
        return ["n/a", "n/a", "n/a"]
    return [ms(pct(values, 0.5)), ms(pct(values, 0.99)), ms(sum(values) / len(values))]


def _good(t: Target) -> list[Overhead]:
    return [o for o in t.overheads if o.pipeline_calls == 1 and o.status == "completed"]


def trace_report(receiver: Receiver, since: float) -> str:
    """Median timeline of the overhead jobs' traces (submit through worker to the applied event)."""
    traces = [
        spans
        for spans in receiver.by_trace().values()
        if min(s.start_ns for s in spans) >= since * 1e9
        and any(s.name == "POST /api/v1/generations" for s in spans)
    ]
    rows = [[name, str(n), ms(start), ms(end), ms(dur)] for name, n, start, end, dur in timeline(traces)]
    head = f"\ntimeline of {len(traces)} job traces (median ms from the POST's start; tracing export on)\n"
    return head + table(["service: span", "traces", "start", "end", "duration"], rows)


def report(res: Result, args: argparse.Namespace) -> tuple[str, bool]:
    targets = res.targets
    ab = len(targets) > 1
    lines: list[str] = [
        f"\nEasel control plane, {now_utc()}; {machine()}\n{versions(_PACKAGES)}, Postgres {res.postgres}",
        f"concurrency {args.concurrency}, {args.users} users, baselines {args.baseline_seconds:g} s, "
        f"submit {args.seconds:g} s"
        + (f" per stack in {args.slice:g} s turns" if ab else "")
        + f"; load average before {res.load_before}, after the submit phase {res.load_after}",
    ]
    if ab:
        lines.append("A/B: " + "; ".join(f"{t.label} = {t.tree}" for t in targets))
    lines.append("")
    base_rate = targets[0].baselines[BASELINES[0]].rate
    rows = []
    for label in [*BASELINES, "submit"]:
        for t in targets:
            r = t.submit if label == "submit" else t.baselines[label]
            name = f"POST /api/v1/generations ({args.users} users)" if label == "submit" else label
            rows.append(
                [
                    f"{name}{' [' + t.label + ']' if ab else ''}",
                    f"{r.rate:.0f}",
                    ms(pct(r.latencies, 0.5)),
                    ms(pct(r.latencies, 0.99)),
                    str(r.failed),
                    f"{r.rate / base_rate:.3f}",
                ]
            )
    lines.append(table(["path", "calls/s", "p50 ms", "p99 ms", "errors", "vs gRPC no-op"], rows))
    ok = True
    for t in targets:
        other = {k: v for k, v in t.statuses.items() if k != 202}
        tag = f"[{t.label}] " if ab else ""
        lines.append(
            f"\n{tag}accepted (202) {t.submit.count} jobs in {t.submit.seconds:g} s = "
            f"{t.submit.rate:.0f} jobs/s" + (f"; other answers {other}" if other else "")
        )
        cpu = t.cpu_per_job
        lines.append(
            f"{tag}CPU ms per accepted job (user + system, submit phase): "
            + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            + f"; all services {sum(cpu.values()):.2f}"
        )
        terminal = sum(t.drained.get(s, 0) for s in TERMINAL)
        drained = terminal == len(t.accepted)
        ok = ok and drained and bool(_good(t))
        lines.append(
            f"{tag}drain: worker started, {len(t.accepted)} accepted jobs -> {t.drained} in {t.drain_s:.1f} s"
            + ("" if drained else "  <-- NOT ALL ACCEPTED JOBS ENDED")
        )
    for t in targets:
        good = _good(t)
        tag = f" [{t.label}]" if ab else ""
        lines.append(
            f"\nper-job overhead{tag}: {len(good)} of {len(t.overheads)} sequential jobs (1 step, 64x64, "
            f"{MODEL}; excluded: jobs not completed or with other than one pipeline call)"
        )
        b = t.breakdown
        rows = [
            ["end-to-end (submit -> terminal event seen)", *_stats([o.end_to_end_s for o in good])],
            ["worker model time (engine.generate)", *_stats([o.model_s for o in good])],
            ["overhead = end-to-end - model time", *_stats([o.overhead_s for o in good])],
            ["  a. submit -> worker starts it (started_at)", *_stats(b.get("to_start", []))],
            ["  b. worker, not model (PNG, gallery, events)", *_stats(b.get("worker_other", []))],
            ["  c. finished_at -> client sees the event", *_stats(b.get("notify", []))],
            ["  (submit round trip, -> 202; overlaps a.)", *_stats(b.get("accept", []))],
        ]
        lines.append(table(["per job", "p50 ms", "p99 ms", "mean ms"], rows))
    lines.append(
        "a + b + c = overhead for each job (their means add up; started_at and finished_at are the "
        "worker's clock, the client's is the same machine's)"
    )
    for t in targets:
        over = [o.overhead_s for o in _good(t)]
        rate = t.submit.rate
        lines.append(
            f"\ngoals{' [' + t.label + ']' if ab else ''}: >= 300 jobs/s accepted: "
            f"{'met' if rate >= 300 else 'NOT met'} ({rate:.0f}); overhead p50 < 30 ms: "
            f"{'met' if over and pct(over, 0.5) < 0.030 else 'NOT met'} "
            f"({ms(pct(over, 0.5)) if over else 'n/a'} ms)"
        )
    if ab:
        a, b2 = targets
        over_a = [o.overhead_s for o in _good(a)]
        over_b = [o.overhead_s for o in _good(b2)]
        cpu_a, cpu_b = sum(a.cpu_per_job.values()), sum(b2.cpu_per_job.values())
        lines.append(
            f"\n{a.label} / {b2.label}: accepted jobs/s {a.submit.rate / b2.submit.rate:.3f}, "
            f"CPU per job {cpu_a / cpu_b:.3f}, overhead p50 {pct(over_a, 0.5) / pct(over_b, 0.5):.3f}"
        )
    return "\n".join(lines), ok


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the submit phase")
    parser.add_argument("--baseline-seconds", type=float, default=5.0, help="length of each baseline")
    parser.add_argument("--concurrency", type=int, default=32, help="closed loops submitting at once")
    parser.add_argument("--users", type=int, default=8, help="accounts (one API key each) submitting")
    parser.add_argument("--latency-jobs", type=int, default=50, help="sequential jobs for the overhead")
    parser.add_argument("--latency-warmup", type=int, default=3, help="sequential jobs not counted")
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="seconds to wait for the drain")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="has tiny-sd (make models)")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="EASEL_TORCH_THREADS of the worker (0: torch decides)"
    )
    parser.add_argument(
        "--ab", type=Path, default=None, metavar="TREE", help="also run the services of TREE, interleaved"
    )
    parser.add_argument("--slice", type=float, default=2.0, help="A/B: seconds per turn")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="collect the services' spans and print the overhead jobs' timeline (costs CPU: diagnosis only)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs) afterwards")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for every service"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models_dir = args.models_dir.resolve()
    if not (models_dir / MODEL / "easel-model.json").is_file():
        print(f"{models_dir / MODEL} is missing: run `make models` (or pass --models-dir)", file=sys.stderr)
        return 2
    extra_env = {
        "EASEL_JOBS_IN_FLIGHT_LIMIT": LIMIT,
        "EASEL_JOBS_PER_DAY_LIMIT": LIMIT,
        "EASEL_JOBS_IN_FLIGHT_COST_LIMIT": str(10**15),
        "EASEL_RATE_LIMIT_USER_PER_S": LIMIT,
        "EASEL_RATE_LIMIT_USER_BURST": LIMIT,
        "EASEL_RATE_LIMIT_CLIENT_PER_S": LIMIT,
        "EASEL_RATE_LIMIT_CLIENT_BURST": LIMIT,
        "EASEL_AUTH_SIGNUP_PER_ADDRESS": LIMIT,  # every simulated user signs up from 127.0.0.1
        "EASEL_WORKER_MODELS": MODEL,
    }
    if args.torch_threads:
        extra_env["EASEL_TORCH_THREADS"] = str(args.torch_threads)
    for item in args.env:
        name, _, value = item.partition("=")
        extra_env[name] = value
    receiver = Receiver().start() if args.trace else None
    if receiver is not None:
        extra_env.update(receiver.env())
    trees = [("this tree", Path(__file__).resolve().parents[1])]
    if args.ab is not None:
        trees.append(("other tree", args.ab.resolve()))
    run_root = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    targets: list[Target] = []
    res: Result | None = None
    try:
        for label, tree in trees:
            run_dir = run_root / label.replace(" ", "-")
            stack = Stack(
                run_dir,
                models_dir,
                ports=Ports.free(),
                extra_env=extra_env,
                log_dir=run_dir / "logs",
                grace=10,
            )
            targets.append(Target(label, tree, stack))
            with in_tree(tree):
                stack.start(["auth", "gallery", "inference-api", "gateway"])
        res = asyncio.run(run(targets, args))
    finally:
        for t in targets:
            t.stack.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(run_root, ignore_errors=True)
    text, ok = report(res, args)
    if receiver is not None:
        text += trace_report(receiver, res.overhead_from)
        receiver.stop()
    if args.keep:
        text += f"\nrun folder (logs): {run_root}"
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
