"""The inference worker as a process: start-up checks, readiness, batching, crashes and shutdown.

Gallery and the inference api run as real processes; each test starts the worker it needs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.js.api import DeliverPolicy

from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from easel.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference.messages import JobEventMessage
from services.local.stack import DEFS, Child, Ports, Stack

pytestmark = pytest.mark.timeout(240)

TERMINAL = {"completed", "failed", "cancelled"}
WORKER = "inference-worker"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, postgres_url: str, nats_url: str
) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("inference-worker-stack")
    s = Stack(
        run_dir,
        models_dir,
        ports=Ports.free(),
        database_url=postgres_url,
        nats_url=nats_url,
        log_dir=run_dir / "logs",
        grace=15.0,
        extra_env={
            # This module's worker serves tiny-sd only; a short ack_wait makes a lost worker's job
            # come back quickly.
            "EASEL_WORKER_MODELS": "tiny-sd",
            "EASEL_WORKER_ACK_WAIT_S": "3",
            "EASEL_SHUTDOWN_GRACE_S": "15",
        },
    )
    try:
        s.start(["gallery", "inference-api"])
        yield s
    finally:
        s.stop()


@pytest.fixture
def no_worker(stack: Stack) -> Iterator[None]:
    """Each test starts its own worker; none is left running after it."""
    yield
    child = stack.children.get(WORKER)
    if child is not None and child.alive:
        child.stop(15.0)


@pytest.fixture(scope="module")
async def api(stack: Stack) -> AsyncIterator[inference_pb2_grpc.InferenceStub]:
    async with grpc.aio.insecure_channel(stack.target("inference-api")) as ch:
        yield inference_pb2_grpc.InferenceStub(ch)


@pytest.fixture(scope="module")
async def gallery(stack: Stack) -> AsyncIterator[gallery_pb2_grpc.GalleryStub]:
    async with grpc.aio.insecure_channel(stack.target("gallery")) as ch:
        yield gallery_pb2_grpc.GalleryStub(ch)


def actor(name: str) -> common_pb2.Actor:
    return common_pb2.Actor(user_id=f"user-{name}-{uuid.uuid4().hex[:8]}", username=name, role="user")


def job_request(who: common_pb2.Actor, **params: Any) -> inference_pb2.SubmitJobRequest:
    return inference_pb2.SubmitJobRequest(
        actor=who,
        kind="txt2img",
        model="tiny-sd",
        params=inference_pb2.GenerationParams(**{"prompt": "an orchard in spring", **params}),
    )


def spawn_worker(stack: Stack, **env: str) -> Child:
    """Starts the stack's worker with extra settings, without waiting for it to be ready."""
    child = Child(
        DEFS[WORKER],
        {**stack.env_for(WORKER), **env},
        stack.log_dir / f"{WORKER}.log" if stack.log_dir else None,
    )
    stack.children[WORKER] = child
    child.start()
    return child


def readyz(stack: Stack) -> int:
    """HTTP status of the worker's /readyz; 0 while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.metrics[WORKER]}/readyz", timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def metrics(stack: Stack) -> str:
    with urllib.request.urlopen(stack.metrics_url(WORKER), timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_status(
    api: inference_pb2_grpc.InferenceStub, who: common_pb2.Actor, job_id: str, timeout: float = 90
) -> inference_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job: inference_pb2.Job = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=job_id))
        if job.status in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {timeout}s"
        await asyncio.sleep(0.1)


def test_worker_without_models_exits_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for models_dir in (empty, tmp_path / "missing"):
        env = {
            **os.environ,
            "EASEL_MODELS_DIR": str(models_dir),
            # Nothing listens here: the worker must stop before it needs NATS.
            "EASEL_NATS_URL": "nats://127.0.0.1:1",
            "EASEL_METRICS_PORT": "0",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "services.inference.worker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "EASEL_MODELS_DIR" in lines[0] and "make models" in lines[0]
        assert "Traceback" not in proc.stdout + proc.stderr


def test_worker_serving_an_unknown_model_names_the_installed_ones(models_dir: Path) -> None:
    env = {
        **os.environ,
        "EASEL_MODELS_DIR": str(models_dir),
        "EASEL_WORKER_MODELS": "tiny-sd,nope",
        "EASEL_NATS_URL": "nats://127.0.0.1:1",
        "EASEL_METRICS_PORT": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "services.inference.worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert "\n" not in line and "EASEL_WORKER_MODELS" in line and "nope" in line and "tiny-sdxl" in line


async def test_ready_only_after_models_load_then_batches_queued_jobs(
    stack: Stack, api: inference_pb2_grpc.InferenceStub, no_worker: None
) -> None:
    who = actor("early")
    # Queued before any worker exists; all compatible, so one pipeline call runs them.
    jobs = [await api.SubmitJob(job_request(who, steps=3, prompt=f"tree {i}")) for i in range(3)]
    assert all(j.status == "queued" for j in jobs)

    child = stack.children.get(WORKER)
    assert child is None or not child.alive
    worker = spawn_worker(stack)
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while True:
        code = await asyncio.to_thread(readyz, stack)
        if not seen or seen[-1] != code:
            seen.append(code)
        if code == 200:
            break
        assert worker.alive and time.monotonic() < deadline, seen
        await asyncio.sleep(0.05)
    # It answered "not ready" while it was loading, and the model was loaded when it turned ready.
    assert 503 in seen and seen[-1] == 200, seen
    text = await asyncio.to_thread(metrics, stack)
    assert metric(text, 'easel_inference_model_load_seconds_count{model="tiny-sd"}') == 1
    assert metric(text, "easel_inference_loaded_models") == 1
    assert metric(text, "easel_inference_worker_ready") == 1

    for job in jobs:
        assert (await wait_status(api, who, job.id)).status == "completed"
    text = await asyncio.to_thread(metrics, stack)
    # One pipeline call of (at least) three jobs; nothing else was queued for this fresh worker
    # unless another test left jobs behind, hence "at least".
    batches = metric(text, 'easel_inference_batch_size_count{model="tiny-sd"}')
    small = metric(text, 'easel_inference_batch_size_bucket{le="2.0",model="tiny-sd"}')
    assert batches - small >= 1, (batches, small)
    assert metric(text, 'easel_inference_images_generated_total{kind="txt2img",model="tiny-sd"}') >= 3
    assert metric(text, 'easel_inference_queue_wait_seconds_count{kind="txt2img",model="tiny-sd"}') >= 3
    assert metric(text, 'easel_inference_run_seconds_count{kind="txt2img",model="tiny-sd"}') >= 1
    assert metric(text, 'easel_inference_memory_bytes{stat="rss"}') > 0


async def test_killed_worker_loses_nothing_and_job_completes_once(
    stack: Stack,
    api: inference_pb2_grpc.InferenceStub,
    gallery: gallery_pb2_grpc.GalleryStub,
    nats_url: str,
    no_worker: None,
) -> None:
    await asyncio.to_thread(stack.start_one, WORKER)
    who = actor("unlucky")
    job = await api.SubmitJob(job_request(who, width=256, height=256, steps=40, n=4))
    stream = api.WatchJob(inference_pb2.WatchJobRequest(actor=who, job_id=job.id), timeout=180)
    events: list[inference_pb2.JobEvent] = []
    killed = False
    async for event in stream:
        events.append(event)
        if not killed and event.type == "progress" and event.job.step >= 2:
            killed = True
            await asyncio.to_thread(stack.kill, WORKER, signal.SIGKILL)
            await asyncio.to_thread(stack.start_one, WORKER)
    assert killed
    final = events[-1].job
    assert events[-1].type == "completed" and final.status == "completed", [e.type for e in events]
    assert sorted(i.index for i in final.images) == [0, 1, 2, 3]
    # The second delivery started over: a second "running" after the kill.
    assert [e.type for e in events].count("running") >= 1

    mine = await gallery.ListImages(gallery_pb2.ListImagesRequest(actor=who, limit=50))
    assert len(mine.items) == 4
    assert {i.job_id for i in mine.items} == {job.id}
    assert sorted(i.index for i in mine.items) == [0, 1, 2, 3]
    assert {i.id for i in mine.items} == {i.id for i in final.images}

    # Exactly one completed event is on the stream (JetStream de-duplication by msg id), and the
    # running events show the redelivery.
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            f"easel.events.job.{job.id}", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        found: list[JobEventMessage] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                break
            found.append(JobEventMessage.decode(msg.data))
        await sub.unsubscribe()
    finally:
        await nc.close()
    assert [e.type for e in found].count("completed") == 1
    attempts = {e.attempt for e in found if e.type == "running"}
    assert attempts == {1, 2}, attempts


async def test_sigterm_finishes_the_job_in_hand_then_exits(
    stack: Stack, api: inference_pb2_grpc.InferenceStub, no_worker: None
) -> None:
    child = await asyncio.to_thread(stack.start_one, WORKER)
    who = actor("closing-time")
    job = await api.SubmitJob(job_request(who, width=192, height=192, steps=30, n=2))
    stream = api.WatchJob(inference_pb2.WatchJobRequest(actor=who, job_id=job.id), timeout=120)
    async for event in stream:
        if event.type == "progress":
            child.signal(signal.SIGTERM)
            break
    stream.cancel()
    # Not ready any more while it finishes.
    await asyncio.sleep(0.3)
    assert await asyncio.to_thread(readyz, stack) in (0, 503)
    code = await asyncio.to_thread(child.wait, 60)
    assert code == 0
    done = await wait_status(api, who, job.id, timeout=30)
    assert done.status == "completed" and len(done.images) == 2


async def test_job_that_kills_every_worker_fails_instead_of_hanging(
    stack: Stack, api: inference_pb2_grpc.InferenceStub, no_worker: None
) -> None:
    """With one delivery allowed, a worker lost mid-job leaves the job failed (not running forever)."""
    child = spawn_worker(stack, EASEL_WORKER_MAX_DELIVER="1")
    await asyncio.to_thread(stack.wait_ready, WORKER)
    who = actor("doomed")
    job = await api.SubmitJob(job_request(who, width=256, height=256, steps=40, n=4))
    stream = api.WatchJob(inference_pb2.WatchJobRequest(actor=who, job_id=job.id), timeout=120)
    events: list[inference_pb2.JobEvent] = []
    async for event in stream:
        events.append(event)
        if event.type == "progress" and child.alive:
            await asyncio.to_thread(stack.kill, WORKER, signal.SIGKILL)
    final = events[-1].job
    assert final.status == "failed" and final.error_code == "worker_failed", final
    assert "try again" in final.error_message
    # The job's message is gone: a fresh worker does not pick it up again.
    await asyncio.to_thread(stack.start_one, WORKER)
    await asyncio.sleep(2)
    again = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=job.id))
    assert again.status == "failed" and not again.images


def compile_log_lines(stack: Stack) -> list[str]:
    path = stack.log_dir / f"{WORKER}.log" if stack.log_dir else None
    assert path is not None
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if "compiled tiny-sd" in line]


# Slow (a cold compile in a real worker, about 1.5 min): `make test-slow`, which CI runs too. The
# compiled path and a warm restart are also checked in `make test` by tests/unit/test_gpu_check.py.
@pytest.mark.slow
async def test_compiled_worker_serves_jobs_and_restarts_from_its_compile_cache(
    stack: Stack, api: inference_pb2_grpc.InferenceStub, no_worker: None, tmp_path: Path
) -> None:
    """The GPU recipe's compile path, run with inductor on this CPU: compiled and warmed at start,
    serving jobs, and a restarted worker taking every compiled graph from the cache."""
    env = {
        "EASEL_WORKER_COMPILE": "default",
        # One bucket keeps the cold compile to one graph (about 30 s on a CPU).
        "EASEL_WORKER_COMPILE_BUCKETS": "2",
        "EASEL_WORKER_COMPILE_CACHE_DIR": str(tmp_path / "compile-cache"),
    }
    before = len(compile_log_lines(stack))
    who = actor("compiled")
    for start in ("cold", "warm"):
        child = spawn_worker(stack, **env)
        await asyncio.to_thread(stack.wait_ready, WORKER, 200.0)
        lines = compile_log_lines(stack)
        assert len(lines) == before + 1, lines
        before += 1
        # e.g. "compiled tiny-sd for 64x64 at batch sizes 2 in 31.2s (compile cache: 0 hits, 1 misses)"
        assert "batch sizes 2 " in lines[-1]
        if start == "cold":
            assert "0 hits" in lines[-1] and "0 misses" not in lines[-1], lines[-1]
        else:
            assert "0 misses" in lines[-1] and "0 hits" not in lines[-1], lines[-1]
        # Three images: a batch of two and one padded to two, on the compiled UNet.
        job = await api.SubmitJob(job_request(who, steps=2, n=3, seed=77))
        done = await wait_status(api, who, job.id, timeout=60)
        assert done.status == "completed" and len(done.images) == 3, done
        child.stop(15.0)
    assert any((tmp_path / "compile-cache").iterdir())


def runs(stack: Stack) -> float:
    """Pipeline calls the worker has finished (easel_inference_run_seconds observations)."""
    text = metrics(stack)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("easel_inference_run_seconds_count")
    )


async def test_next_batch_generates_while_the_last_one_is_still_being_delivered(
    stack: Stack, api: inference_pb2_grpc.InferenceStub, no_worker: None
) -> None:
    """The GPU does not wait for the gallery: with one job per fetch and the gallery frozen, the
    first job's images cannot be stored, and the second job is generated meanwhile."""
    spawn_worker(stack, EASEL_WORKER_BATCH_MAX="1")
    await asyncio.to_thread(stack.wait_ready, WORKER)
    gallery = stack.children["gallery"]
    who = actor("overlap")
    # One job first, so the worker's gallery channel is connected: a call on it then waits for the
    # frozen gallery (a new connection would fail at once, and the job would just be retried).
    first = await api.SubmitJob(job_request(who, steps=2, prompt="pier"))
    assert (await wait_status(api, who, first.id)).status == "completed"
    gallery.signal(signal.SIGSTOP)
    try:
        jobs = [await api.SubmitJob(job_request(who, steps=2, prompt=f"pier {i}")) for i in range(2)]
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(runs, stack) < 3:
            assert time.monotonic() < deadline, "the second job was not generated while the first waited"
            await asyncio.sleep(0.1)
        for job in jobs:
            while True:  # the api follows the events a moment later
                status = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=job.id))
                if status.status != "queued" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert status.status == "running", status  # generated, not yet stored
    finally:
        gallery.signal(signal.SIGCONT)
    for job in jobs:
        done = await wait_status(api, who, job.id, timeout=90)
        assert done.status == "completed" and len(done.images) == 1, done
