"""Nothing done twice, nothing thrown away, a hung worker noticed (issue 18, finding 9).

Real processes throughout: gallery and inference api from the module's stack, one or two workers
started by each test, JetStream from the session's NATS. Jobs are small (tiny-sd) and the ack
window short (3 s), so a lost or paused delivery comes back within seconds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import nats
import pytest
from nats.js.api import DeliverPolicy

from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from easel.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference.messages import JobEventMessage
from services.local.infra import free_port
from services.local.stack import DEFS, Child, Ports, Stack
from tests.integration.test_inference_worker import (
    WORKER,
    actor,
    job_request,
    metric,
    runs,
    spawn_worker,
    wait_status,
)

pytestmark = pytest.mark.timeout(240)

JOBS = 'easel_inference_worker_jobs_total{{model="tiny-sd",outcome="{}"}}'
IMAGES = 'easel_inference_images_generated_total{kind="txt2img",model="tiny-sd"}'


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, postgres_url: str, nats_url: str
) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("worker-reliability-stack")
    s = Stack(
        run_dir,
        models_dir,
        ports=Ports.free(),
        database_url=postgres_url,
        nats_url=nats_url,
        log_dir=run_dir / "logs",
        grace=15.0,
        extra_env={
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
def workers(stack: Stack) -> Iterator[list[Child]]:
    """Workers a test starts besides the stack's own; all of them (and the gallery) are running
    again and then stopped after it."""
    extra: list[Child] = []
    yield extra
    for child in [stack.children.get(WORKER), *extra]:
        if child is not None and child.alive:
            child.signal(signal.SIGCONT)
            child.stop(15.0)
    gallery = stack.children["gallery"]
    if gallery.alive:
        gallery.signal(signal.SIGCONT)


@pytest.fixture(scope="module")
async def api(stack: Stack) -> AsyncIterator[inference_pb2_grpc.InferenceStub]:
    async with grpc.aio.insecure_channel(stack.target("inference-api")) as ch:
        yield inference_pb2_grpc.InferenceStub(ch)


@pytest.fixture(scope="module")
async def gallery(stack: Stack) -> AsyncIterator[gallery_pb2_grpc.GalleryStub]:
    async with grpc.aio.insecure_channel(stack.target("gallery")) as ch:
        yield gallery_pb2_grpc.GalleryStub(ch)


def get(port: int, path: str) -> int:
    """HTTP status of a worker's status endpoint; 0 while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def ready(port: int, child: Child, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(get, port, "/readyz") != 200:
        assert child.alive and time.monotonic() < deadline, "the worker did not become ready"
        await asyncio.sleep(0.1)


async def until(port: int, series: str, at_least: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = metric(await asyncio.to_thread(scrape, port), series)
        if value >= at_least or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def job_events(nats_url: str, job_id: str) -> list[JobEventMessage]:
    """Every event of the job on the events stream, in order."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(
            f"easel.events.job.{job_id}", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        found: list[JobEventMessage] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                break
            found.append(JobEventMessage.decode(msg.data))
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def test_a_redelivered_finished_job_is_acked_without_work(
    stack: Stack, api: inference_pb2_grpc.InferenceStub, nats_url: str, workers: list[Child]
) -> None:
    """The job's message coming back after it completed (a lost ack) is acked, not run again."""
    spawn_worker(stack)
    port = stack.ports.metrics[WORKER]
    await asyncio.to_thread(stack.wait_ready, WORKER)
    nc = await nats.connect(nats_url)
    try:
        published: list[nats.aio.msg.Msg] = []

        async def seen(msg: nats.aio.msg.Msg) -> None:
            published.append(msg)

        # A plain subscription sees the api's publish of the work message as JetStream stores it.
        await nc.subscribe("easel.jobs.tiny-sd.>", cb=seen)
        who = actor("again")
        job = await api.SubmitJob(job_request(who, steps=2, prompt="a lighthouse"))
        done = await wait_status(api, who, job.id)
        assert done.status == "completed" and len(done.images) == 1
        original = next(m for m in published if json.loads(m.data)["job_id"] == job.id)
        generated = await asyncio.to_thread(runs, stack)
        finished = metric(await asyncio.to_thread(scrape, port), JOBS.format("finished"))

        # The same message once more (another msg id, so JetStream stores it).
        await nc.jetstream().publish(
            original.subject, original.data, headers={"Nats-Msg-Id": f"{job.id}.redelivered"}
        )
        assert await until(port, JOBS.format("finished"), finished + 1, 30) == finished + 1
        assert await asyncio.to_thread(runs, stack) == generated
        info = await nc.jetstream().consumer_info("EASEL_JOBS", "worker-tiny-sd")
        assert info.num_ack_pending == 0 and info.num_pending == 0, info
    finally:
        await nc.close()
    events = await job_events(nats_url, job.id)
    assert [e.type for e in events].count("running") == 1, [e.type for e in events]
    assert [e.type for e in events].count("completed") == 1
    again = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=job.id))
    assert again.status == "completed" and [i.id for i in again.images] == [i.id for i in done.images]


async def test_a_brief_gallery_outage_is_retried_with_the_images_in_hand(
    stack: Stack, api: inference_pb2_grpc.InferenceStub, workers: list[Child]
) -> None:
    """The gallery frozen (SIGSTOP) from mid-generation until the worker has had to retry its
    hand-off, and 4 s more (past the 3 s ack window): the worker keeps the message alive and retries
    with the images in hand; the job completes from one generation, never sent back to the queue."""
    spawn_worker(stack, EASEL_RPC_TIMEOUT_S="1")  # each AddImages waits at most 3 s
    port = stack.ports.metrics[WORKER]
    await asyncio.to_thread(stack.wait_ready, WORKER)
    gallery = stack.children["gallery"]
    who = actor("outage")
    # A first job connects the worker's gallery channel: later calls then wait on the frozen gallery.
    first = await api.SubmitJob(job_request(who, steps=2, prompt="a harbour at dawn"))
    assert (await wait_status(api, who, first.id)).status == "completed"
    generated = await asyncio.to_thread(runs, stack)
    retried = metric(await asyncio.to_thread(scrape, port), JOBS.format("retried"))

    job = await api.SubmitJob(job_request(who, steps=12, n=2, prompt="a harbour"))
    stream = api.WatchJob(inference_pb2.WatchJobRequest(actor=who, job_id=job.id), timeout=120)
    async for event in stream:
        if event.type in ("progress", "completed"):
            break
    assert event.type == "progress", "the job finished before the gallery could be stopped"
    stream.cancel()
    gallery.signal(signal.SIGSTOP)
    try:
        # Frozen until the worker has tried the hand-off and waited past its ack window since.
        assert await until(port, "easel_inference_worker_handoff_retries_total", 1, 120) >= 1
        await asyncio.sleep(4)
        during = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=job.id))
        assert during.status == "running", during
    finally:
        gallery.signal(signal.SIGCONT)
    done = await wait_status(api, who, job.id, timeout=60)
    assert done.status == "completed" and len(done.images) == 2, done
    text = await asyncio.to_thread(scrape, port)
    assert await asyncio.to_thread(runs, stack) == generated + 1  # generated once
    assert metric(text, JOBS.format("retried")) == retried  # never sent back to the queue
    assert metric(text, "easel_inference_worker_handoff_retries_total") >= 1


async def test_a_paused_worker_whose_job_went_elsewhere_stores_nothing(
    stack: Stack,
    api: inference_pb2_grpc.InferenceStub,
    gallery: gallery_pb2_grpc.GalleryStub,
    nats_url: str,
    workers: list[Child],
) -> None:
    """A worker frozen (SIGSTOP) past its ack window: the job goes to a second worker, which
    completes it; the first, resumed, finds its claim taken and drops the job (no second image set,
    no second completion)."""
    first = spawn_worker(stack)
    first_port = stack.ports.metrics[WORKER]
    await asyncio.to_thread(stack.wait_ready, WORKER)
    who = actor("paused")
    # Long enough that the pause lands mid-generation on an idle machine too (64x64 at 12 steps ended
    # before its progress event was read).
    job = await api.SubmitJob(job_request(who, steps=30, n=2, width=128, height=128, prompt="a quarry"))
    stream = api.WatchJob(inference_pb2.WatchJobRequest(actor=who, job_id=job.id), timeout=120)
    async for event in stream:
        if event.type == "progress" and event.job.step >= 2:
            first.signal(signal.SIGSTOP)
            break
    stream.cancel()
    assert event.type == "progress"
    paused_at = time.monotonic()

    second_port = free_port()
    second = Child(
        DEFS[WORKER],
        {**stack.env_for(WORKER), "EASEL_METRICS_PORT": str(second_port)},
        stack.log_dir / f"{WORKER}-second.log" if stack.log_dir else None,
    )
    workers.append(second)
    second.start()
    await ready(second_port, second)
    done = await wait_status(api, who, job.id, timeout=120)
    assert done.status == "completed" and len(done.images) == 2
    assert time.monotonic() - paused_at > 3  # past the ack window

    first.signal(signal.SIGCONT)
    dropped = await until(first_port, JOBS.format("superseded"), 1, 30)
    text = await asyncio.to_thread(scrape, first_port)
    assert dropped == 1, text
    assert metric(text, IMAGES) == 0 and metric(text, JOBS.format("completed")) == 0

    mine = await gallery.ListImages(gallery_pb2.ListImagesRequest(actor=who, limit=50))
    assert sorted(i.index for i in mine.items) == [0, 1]
    assert {i.id for i in mine.items} == {i.id for i in done.images}
    events = await job_events(nats_url, job.id)
    completions = [e for e in events if e.type == "completed"]
    assert len(completions) == 1 and completions[0].attempt == 2, [(e.type, e.attempt) for e in events]
    # After the second delivery started, the first said nothing that counts: at most a progress
    # event from the step it was on when it woke up, before its heartbeat found the claim taken.
    second_started = next(i for i, e in enumerate(events) if e.type == "running" and e.attempt == 2)
    late = [e.type for e in events[second_started:] if e.attempt == 1]
    assert set(late) <= {"progress"}, [(e.type, e.attempt) for e in events]


async def test_a_generation_that_stops_advancing_reports_not_live(
    stack: Stack, api: inference_pb2_grpc.InferenceStub, workers: list[Child]
) -> None:
    """The stall limit set below one denoising step of a small job: while it generates, /livez
    answers 503 (and /readyz stays 200); idle before and after, it is live."""
    spawn_worker(stack, EASEL_WORKER_STALL_S="0.02")
    port = stack.ports.metrics[WORKER]
    await asyncio.to_thread(stack.wait_ready, WORKER)
    assert await asyncio.to_thread(get, port, "/livez") == 200
    who = actor("stalled")
    # Steps well over the 0.02 s limit even on an idle CPU (a 64x64 step took about 10 ms).
    job = await api.SubmitJob(job_request(who, steps=6, n=2, width=256, height=256, prompt="a dam"))
    codes: list[tuple[int, int]] = []
    deadline = time.monotonic() + 90
    while True:
        status = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=job.id))
        if status.status == "completed":
            break
        assert time.monotonic() < deadline, status
        live = await asyncio.to_thread(get, port, "/livez")
        codes.append((live, await asyncio.to_thread(get, port, "/readyz")))
        await asyncio.sleep(0.01)
    assert any(live == 503 for live, _ in codes), codes
    assert all(ready_ == 200 for _, ready_ in codes), codes
    assert await asyncio.to_thread(get, port, "/livez") == 200
