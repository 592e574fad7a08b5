"""Fairness: how long a small job waits behind another user's maximum backlog, against an idle worker.

Starts gallery, inference api and one inference worker as real processes (Postgres and NATS of its
own) and talks to the job API over gRPC as several users, all in one run:

1. Warm-up: one small and one heavy job (the first generation at a size pays one-off costs).
2. Idle baseline: the small job (64x64) alone on the idle worker, `--repeats` times; median latency
   (submit to completion, from the job's own timestamps) and wait (submit to start).
3. Fair: the heavy user submits maximum-size jobs until the api refuses more (their in-flight
   allowance: EASEL_JOBS_IN_FLIGHT_LIMIT jobs or EASEL_JOBS_IN_FLIGHT_COST_LIMIT pixel-steps); once
   the worker is on the first of them, the small user submits the small job. Its latency is
   reported against the idle one (a ratio), and its extra wait in *worker turns*: the median run
   time (start to end) of the heavy jobs that ran meanwhile, i.e. the length of one batch.
4. FIFO reference (unless --no-fifo): the api restarted with an unlimited dispatch window, which sends
   every job to NATS at submit as before fair dispatch: the same scenario, the small job behind the
   whole backlog.

The api's dispatch window is one worker batch (EASEL_DISPATCH_WINDOW = EASEL_WORKER_BATCH_MAX =
`--batch`). The window counts jobs sent and not yet denoised, so nothing is committed ahead of the
batch running: the small job waits for about that batch (at most one turn, plus the moment between
the last denoising step and the next dispatch), against the whole backlog under FIFO.

`--tiny` shrinks everything for a CPU (tests/integration/test_bench_fairness.py runs it). Prints a
Markdown table; exit status 1 when the small job waited more than `--max-batches` worker turns beyond
its idle latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, machine, now_utc, table, versions

from easel.common.v1 import common_pb2
from easel.inference.v1 import inference_pb2, inference_pb2_grpc
from services.local.stack import Ports, Stack

MODEL = "tiny-sd"
TERMINAL = {"completed", "failed", "cancelled"}


@dataclass(frozen=True)
class Shape:
    width: int
    height: int
    steps: int
    n: int

    def params(self, prompt: str) -> inference_pb2.GenerationParams:
        return inference_pb2.GenerationParams(
            prompt=prompt, width=self.width, height=self.height, steps=self.steps, n=self.n
        )

    def __str__(self) -> str:
        return f"{self.width}x{self.height}, {self.steps} steps, {self.n} image(s)"


@dataclass(frozen=True)
class Timing:
    latency: float  # submit -> completed
    wait: float  # submit -> started


def actor(name: str) -> common_pb2.Actor:
    return common_pb2.Actor(user_id=f"bench-{name}-{uuid.uuid4().hex[:8]}", username=name, role="user")


def timing(job: inference_pb2.Job) -> Timing:
    created = job.created_at.ToDatetime()
    return Timing(
        latency=(job.finished_at.ToDatetime() - created).total_seconds(),
        wait=(job.started_at.ToDatetime() - created).total_seconds(),
    )


class Client:
    def __init__(self, api: inference_pb2_grpc.InferenceStub, job_timeout_s: float) -> None:
        self.api = api
        # Seconds any one job may take.
        self.job_timeout_s = job_timeout_s

    async def submit(self, who: common_pb2.Actor, shape: Shape, prompt: str) -> inference_pb2.Job:
        job: inference_pb2.Job = await self.api.SubmitJob(
            inference_pb2.SubmitJobRequest(
                actor=who, kind="txt2img", model=MODEL, params=shape.params(prompt)
            ),
            timeout=30,
        )
        return job

    async def wait(self, who: common_pb2.Actor, job_id: str, statuses: set[str]) -> inference_pb2.Job:
        deadline = time.monotonic() + self.job_timeout_s
        while True:
            job: inference_pb2.Job = await self.api.GetJob(
                inference_pb2.GetJobRequest(actor=who, job_id=job_id), timeout=10
            )
            if job.status in statuses:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {self.job_timeout_s:.0f}s")
            await asyncio.sleep(0.05)

    async def run(self, who: common_pb2.Actor, shape: Shape, prompt: str) -> inference_pb2.Job:
        job = await self.submit(who, shape, prompt)
        done = await self.wait(who, job.id, TERMINAL)
        if done.status != "completed":
            raise RuntimeError(f"job {job.id} ended {done.status}: {done.error_message}")
        return done

    async def backlog(self, who: common_pb2.Actor, shape: Shape) -> list[inference_pb2.Job]:
        """Submits until the api refuses: the maximum backlog one user may hold."""
        jobs = []
        while True:
            try:
                jobs.append(await self.submit(who, shape, f"a vast city, part {len(jobs)}"))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                return jobs
            if len(jobs) > 1000:
                raise RuntimeError("the api accepted 1000 jobs from one user: no in-flight limit?")

    async def cancel_all(self, who: common_pb2.Actor, jobs: list[inference_pb2.Job]) -> None:
        for job in jobs:
            await self.api.CancelJob(inference_pb2.CancelJobRequest(actor=who, job_id=job.id), timeout=10)
        for job in jobs:
            await self.wait(who, job.id, TERMINAL)


async def behind_backlog(client: Client, heavy: Shape, small: Shape) -> tuple[Timing, int, list[float]]:
    """The small job submitted while another user holds the maximum backlog, the first one running.

    Returns its timing, the backlog's size, and the run times (start to end) of the heavy jobs that
    completed meanwhile: a job's run time is the length of the worker turn (batch) it was in.
    """
    hog, newcomer = actor("hog"), actor("newcomer")
    backlog = await client.backlog(hog, heavy)
    await client.wait(hog, backlog[0].id, {"running", *TERMINAL})
    done = await client.run(newcomer, small, "a small red kite")
    await client.cancel_all(hog, backlog)
    turns = []
    for job in backlog:
        got = await client.wait(hog, job.id, TERMINAL)
        if got.status == "completed":
            turns.append((got.finished_at.ToDatetime() - got.started_at.ToDatetime()).total_seconds())
    return timing(done), len(backlog), turns


async def measure(target: str, args: argparse.Namespace, heavy: Shape, small: Shape) -> dict[str, object]:
    out: dict[str, object] = {}
    async with grpc.aio.insecure_channel(target) as ch:
        client = Client(inference_pb2_grpc.InferenceStub(ch), args.timeout)
        warm = actor("warm")
        # Warm-up: first generation at each size pays one-off costs.
        await client.run(warm, small, "warm-up")
        await client.run(warm, heavy, "warm-up")
        idle = [
            timing(await client.run(actor("alone"), small, "a small red kite")) for _ in range(args.repeats)
        ]
        out["idle"] = Timing(
            latency=statistics.median(t.latency for t in idle), wait=statistics.median(t.wait for t in idle)
        )
        out["fair"], out["backlog"], out["turns"] = await behind_backlog(client, heavy, small)
    return out


async def measure_fifo(target: str, args: argparse.Namespace, heavy: Shape, small: Shape) -> Timing:
    async with grpc.aio.insecure_channel(target) as ch:
        client = Client(inference_pb2_grpc.InferenceStub(ch), args.timeout)
        fifo, _, _ = await behind_backlog(client, heavy, small)
    return fifo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--tiny", action="store_true", help="small sizes and backlog, for a CPU (the test)")
    parser.add_argument(
        "--batch", type=int, default=0, help="worker batch size = dispatch window (4; tiny 1)"
    )
    parser.add_argument("--in-flight", type=int, default=0, help="the heavy user's job limit (8)")
    parser.add_argument("--repeats", type=int, default=3, help="idle runs of the small job (median)")
    parser.add_argument("--no-fifo", action="store_true", help="skip the FIFO reference")
    parser.add_argument("--max-batches", type=float, default=1.5, help="fail above this extra wait")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any one job may take")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs)")
    args = parser.parse_args(argv)
    args.batch = args.batch or (1 if args.tiny else 4)
    args.in_flight = args.in_flight or 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models_dir = args.models_dir.resolve()
    if not (models_dir / MODEL / "easel-model.json").is_file():
        print(f"{models_dir / MODEL} is missing: run `make models` (or pass --models-dir)", file=sys.stderr)
        return 2
    if args.tiny:
        heavy, small = Shape(128, 128, 2, 2), Shape(64, 64, 2, 1)
    else:
        heavy, small = Shape(256, 256, 30, 4), Shape(64, 64, 4, 1)
    env = {
        "EASEL_WORKER_MODELS": MODEL,
        "EASEL_WORKER_BATCH_MAX": str(args.batch),
        "EASEL_DISPATCH_WINDOW": str(args.batch),
        "EASEL_JOBS_IN_FLIGHT_LIMIT": str(args.in_flight),
        "EASEL_JOBS_PER_DAY_LIMIT": "100000",
        "EASEL_RESULT_CACHE": "false",
    }
    run_dir = Path(tempfile.mkdtemp(prefix="easel-fairness-"))
    stack = Stack(run_dir, models_dir, ports=Ports.free(), extra_env=env, log_dir=run_dir / "logs", grace=10)
    fifo: Timing | None = None
    try:
        stack.start(["gallery", "inference-api", "inference-worker"])
        res = asyncio.run(measure(stack.target("inference-api"), args, heavy, small))
        if not args.no_fifo:
            stack.children["inference-api"].stop(10)
            stack.extra_env["EASEL_DISPATCH_WINDOW"] = "10000"
            stack.start_one("inference-api")
            fifo = asyncio.run(measure_fifo(stack.target("inference-api"), args, heavy, small))
    finally:
        stack.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    turns: list[float] = res["turns"]  # type: ignore[assignment]
    if not turns:
        print("no heavy job completed before the small one: nothing to measure a turn by", file=sys.stderr)
        return 1
    batch_s = statistics.median(turns)
    idle: Timing = res["idle"]  # type: ignore[assignment]
    fair: Timing = res["fair"]  # type: ignore[assignment]
    extra = (fair.latency - idle.latency) / batch_s

    def row(label: str, t: Timing) -> list[str]:
        return [
            label,
            f"{t.latency:.2f}",
            f"{t.wait:.2f}",
            f"{t.latency / idle.latency:.2f}x",
            f"{(t.latency - idle.latency) / batch_s:.2f}",
        ]

    rows = [row("idle worker (baseline)", idle), row("behind max backlog, fair dispatch", fair)]
    if fifo is not None:
        rows.append(row("behind max backlog, FIFO (window unlimited)", fifo))
    text = "\n".join(
        [
            f"# Fairness ({'tiny' if args.tiny else 'full'} mode), {now_utc()}",
            "",
            f"machine: {machine()}; load average {loadavg()}; {versions(['torch', 'diffusers'])}",
            f"model {MODEL}; worker batch {args.batch}, dispatch window {args.batch}; "
            f"heavy jobs {heavy}; small job {small}",
            f"the heavy user's maximum backlog: {res['backlog']} jobs; one worker turn on heavy jobs "
            f"(median run time of the {len(turns)} that ran): {batch_s:.2f} s",
            "",
            table(
                ["small job", "latency s", "wait s", "vs idle", "extra wait, worker turns"],
                rows,
            ),
            "",
            f"fair dispatch: the small job waited {extra:.2f} worker turns (batches) more than on an idle "
            f"worker (bound {args.max_batches:g})",
        ]
    )
    print(text)
    return 0 if extra <= args.max_batches else 1


if __name__ == "__main__":
    raise SystemExit(main())
