"""Faults injected into a whole running studio, each test named after the promise it checks.

One stack for the module, with its own Postgres and its own NATS (the tests stop and restart both).
Each test leaves the stack as it found it: every service up, one worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import nats
import pytest
import pytest_asyncio
from nats.js.api import DeliverPolicy

from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from services.inference.messages import JobEventMessage
from services.local.infra import free_port
from services.local.stack import DEFS, Child, Stack, http_ok

from .client import (
    TERMINAL,
    User,
    body_of,
    get_job,
    png_bytes,
    read_events,
    register,
    submit,
    wait_job,
    wait_ready,
)
from .conftest import NO_REQUEST_RATE_LIMITS, make_stack

pytestmark = pytest.mark.timeout(300)

WORKER = "inference-worker"
SERVICES = ("auth", "gallery", "inference-api", "inference-worker", "gateway")
# A job that takes a few seconds on a CPU: long enough to act while it runs.
LONG = {"width": 128, "height": 128, "steps": 40, "n": 2}
# Long enough to stop a service mid-generation, short enough for a loaded 2-core machine.
# Long enough (about 3 s on an idle 2-core CPU) that a fault lands mid-generation, short enough for a
# loaded machine: a 64x64 job of 12 steps finished in 0.3 s, between two polls.
SHORT = {"steps": 30, "n": 2, "width": 128, "height": 128}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("faults-stack"),
        models_dir,
        database_url=None,  # its own Postgres: one test restarts it
        extra_env={
            "EASEL_WORKER_MODELS": "tiny-sd",
            # A job whose worker died comes back to the queue after this long.
            "EASEL_WORKER_ACK_WAIT_S": "3",
            "EASEL_SHUTDOWN_GRACE_S": "20",
            "EASEL_RESULT_CACHE": "false",
            # The SIGTERM tests keep a steady stream of calls going from one user on purpose.
            **NO_REQUEST_RATE_LIMITS,
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(autouse=True)
def all_up(stack: Stack) -> Iterator[None]:
    """Every test starts and ends with all infrastructure and services running (restarting what a
    failed test left down, so one failure does not cascade)."""
    _restore(stack)
    yield
    _restore(stack)


def _restore(stack: Stack) -> None:
    for server in (stack.postgres, stack.nats):
        assert server is not None
        if server.proc is None or server.proc.poll() is not None:
            server.start()
    for name in SERVICES:
        child = stack.children.get(name)
        if child is None or not child.alive:
            stack.start_one(name)
    # The gateway's channels to a restarted service reconnect within a couple of seconds.
    deadline = time.monotonic() + 30
    while not http_ok(f"{stack.gateway_url}/readyz"):
        assert time.monotonic() < deadline, "the stack did not become ready again"
        time.sleep(0.1)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def http_m() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def user(stack: Stack, http_m: aiohttp.ClientSession) -> User:
    return await register(http_m, stack.gateway_url, prefix="fault")


# --- helpers -------------------------------------------------------------------------------------


async def job_events(stack: Stack, job_id: str) -> list[JobEventMessage]:
    """Every event of the job kept on the EASEL_EVENTS stream (progress ones are not kept)."""
    nc = await nats.connect(stack.nats_url)
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
    finally:
        await nc.close()
    return found


async def images_of_job(http: aiohttp.ClientSession, user: User, job_id: str) -> list[dict[str, Any]]:
    async with http.get(f"{user.base}/api/v1/images?limit=100", headers=user.bearer) as resp:
        assert resp.status == 200, await body_of(resp)
        items: list[dict[str, Any]] = (await resp.json())["items"]
    return [i for i in items if i["job_id"] == job_id]


async def assert_completed_once(
    stack: Stack, http: aiohttp.ClientSession, user: User, job: dict[str, Any], n: int
) -> list[JobEventMessage]:
    """The job completed with n images, each stored exactly once, and one completed event."""
    assert job["status"] == "completed", job
    assert sorted(i["index"] for i in job["images"]) == list(range(n)), job["images"]
    stored = await images_of_job(http, user, job["id"])
    assert sorted(i["params"]["index"] for i in stored) == list(range(n)), stored
    assert {i["id"] for i in stored} == {i["id"] for i in job["images"]}
    events = await job_events(stack, job["id"])
    assert [e.type for e in events].count("completed") == 1, [e.type for e in events]
    return events


def metric(url: str, series: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as resp:  # nosec B310 - loopback
        for line in resp.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_running(
    http: aiohttp.ClientSession, user: User, job_id: str, min_step: int = 1, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await get_job(http, user, job_id)
        assert status == 200, body
        if body["status"] == "running" and body["progress"]["step"] >= min_step:
            return
        assert body["status"] not in TERMINAL, f"job ended before the fault was injected: {body}"
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def wait_readyz(http: aiohttp.ClientSession, base: str, want: int, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{base}/readyz") as resp:
                last = (resp.status, await body_of(resp))
                if resp.status == want:
                    return last[1]
        except aiohttp.ClientError as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz never answered {want} within {timeout}s; last: {last}")


def spawn_second_worker(stack: Stack, tmp: Path) -> tuple[Child, int]:
    port = free_port()
    env = {**stack.env_for(WORKER), "EASEL_METRICS_PORT": str(port)}
    child = Child(DEFS[WORKER], env, stack.log_dir / "inference-worker-b.log" if stack.log_dir else None)
    child.start()
    deadline = time.monotonic() + 120
    while not http_ok(f"http://127.0.0.1:{port}/readyz"):
        assert child.alive and time.monotonic() < deadline, "second worker did not become ready"
        time.sleep(0.1)
    return child, port


async def resume(
    http: aiohttp.ClientSession, user: User, job_id: str, last: str, timeout: float = 20
) -> list[Any]:
    """Reconnects to the job's event stream with Last-Event-ID, as a client does after a restart:
    a 503 (a service still coming back) is retried. The events after `last`; [] when the job had
    already ended (204)."""
    url = f"{user.base}/api/v1/jobs/{job_id}/events"
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url, headers={**user.bearer, "Last-Event-ID": last}) as resp:
            if resp.status == 204:
                return []
            if resp.status == 200:
                events, _ = await read_events(resp)
                return events
            answer = await body_of(resp)
            assert resp.status == 503 and time.monotonic() < deadline, (resp.status, answer)
        await asyncio.sleep(0.5)


class Traffic:
    """Ordinary calls in a loop while a service stops, recording every answer.

    A service stopping gracefully may answer 503 (with its `<service>_unavailable` code) to calls
    that arrive once it no longer accepts them; it must never answer 500 or cut a call short."""

    def __init__(self, http: aiohttp.ClientSession, calls: list[tuple[str, str, User | None]]) -> None:
        self.http = http
        self.calls = calls
        self.answers: list[tuple[str, int, Any]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _loop(self, method: str, url: str, user: User | None) -> None:
        while not self._stop.is_set():
            try:
                async with self.http.request(method, url, headers=user.bearer if user else {}) as resp:
                    body = await resp.read()
                    self.answers.append((url, resp.status, body[:300]))
            except aiohttp.ClientError as exc:
                self.answers.append((url, -1, repr(exc)))
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(*c)) for c in self.calls for _ in range(2)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def bad(self, allowed_503_codes: set[str]) -> list[tuple[str, int, Any]]:
        out = []
        for url, status, body in self.answers:
            if status in (200, 204):
                continue
            if status == 503:
                try:
                    code = json.loads(body)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = None
                if code in allowed_503_codes:
                    continue
            out.append((url, status, body))
        return out


# --- the faults ----------------------------------------------------------------------------------


async def test_worker_killed_mid_job_job_completes_once_on_another_worker(
    stack: Stack, http_m: aiohttp.ClientSession, user: User, tmp_path: Path
) -> None:
    second, _ = await asyncio.to_thread(spawn_second_worker, stack, tmp_path)
    workers = {stack.children[WORKER].proc.pid: stack.children[WORKER], second.proc.pid: second}  # type: ignore[union-attr]
    try:
        # Who runs it: the worker named in the job's "running" event (host:pid). Listening starts
        # before the job exists, so no event can slip past.
        nc = await nats.connect(stack.nats_url)
        killed_pid = 0
        try:
            sub = await nc.subscribe("easel.events.job.*")
            await nc.flush()
            job = await submit(http_m, user, "a lighthouse in a gale", **LONG)
            deadline = time.monotonic() + 90
            runner_pid = 0
            while not killed_pid:
                assert time.monotonic() < deadline, "the job never made progress"
                try:
                    msg = await sub.next_msg(timeout=5)
                except nats.errors.TimeoutError:
                    continue
                event = JobEventMessage.decode(msg.data)
                if event.job_id != job["id"]:
                    continue
                assert event.type not in TERMINAL, f"the job ended before the kill: {event}"
                if event.type == "running":
                    runner_pid = int(event.worker.rsplit(":", 1)[1])
                if event.type == "progress" and event.step >= 2 and runner_pid:
                    os.kill(runner_pid, signal.SIGKILL)
                    killed_pid = runner_pid
        finally:
            await nc.close()
        assert killed_pid in workers
        await asyncio.to_thread(workers[killed_pid].wait, 10)
        survivor = next(pid for pid in workers if pid != killed_pid)

        done = await wait_job(http_m, user, job["id"], timeout=120)
        events = await assert_completed_once(stack, http_m, user, done, LONG["n"])
        running = [e for e in events if e.type == "running"]
        assert {e.attempt for e in running} == {1, 2}, [(e.attempt, e.worker) for e in running]
        second_run = next(e for e in running if e.attempt == 2)
        assert int(second_run.worker.rsplit(":", 1)[1]) == survivor
        completed = next(e for e in events if e.type == "completed")
        assert int(completed.worker.rsplit(":", 1)[1]) == survivor
    finally:
        if second.alive:
            await asyncio.to_thread(second.stop, 20)


async def test_nats_restart_loses_no_queued_job(
    stack: Stack, http_m: aiohttp.ClientSession, user: User
) -> None:
    assert stack.nats is not None
    # No worker: the jobs wait in the stream while NATS restarts.
    assert await asyncio.to_thread(stack.children[WORKER].stop, 20) == 0
    queued = [await submit(http_m, user, f"queued through a restart {i}") for i in range(4)]
    assert all(j["status"] == "queued" for j in queued)

    await asyncio.to_thread(stack.nats.stop)
    # While NATS is down: reading works (Postgres), submitting is refused with 503 or, when the
    # client's reconnect beats the publish timeout, accepted. Never a 500.
    status, body = await get_job(http_m, user, queued[0]["id"])
    assert status == 200 and body["status"] == "queued", body
    async with http_m.post(
        f"{user.base}/api/v1/generations",
        json={"prompt": "sent while the queue is down", "steps": 2},
        headers=user.bearer,
    ) as resp:
        during = await body_of(resp)
        assert resp.status in (202, 503), (resp.status, during)
        if resp.status == 503:
            assert during["error"]["code"] == "queue_unavailable", during
        else:
            queued.append(during["job"])
    await asyncio.to_thread(stack.nats.start)
    await wait_ready(http_m, user.base)

    await asyncio.to_thread(stack.start_one, WORKER)
    for job in queued:
        done = await wait_job(http_m, user, job["id"], timeout=120)
        assert done["status"] == "completed", done
        assert len(done["images"]) == 1

    # Connections that lived through the restart work too: the worker's pull consumer, the api's
    # event applier, the gateway's watch streams.
    await asyncio.to_thread(stack.nats.stop)
    await asyncio.to_thread(stack.nats.start)
    await wait_ready(http_m, user.base)
    later = await submit(http_m, user, "after the second restart")
    url = f"{user.base}/api/v1/jobs/{later['id']}/events"
    async with http_m.get(url, headers=user.bearer) as resp:
        assert resp.status == 200, await body_of(resp)
        events, _ = await read_events(resp)
    assert events and events[-1].event == "completed", events
    assert (await wait_job(http_m, user, later["id"], timeout=60))["status"] == "completed"


async def test_postgres_restart_not_ready_then_recovers_without_losing_jobs(
    stack: Stack, http_m: aiohttp.ClientSession, user: User
) -> None:
    assert stack.postgres is not None
    accepted = [await submit(http_m, user, f"through a database restart {i}", steps=20) for i in range(3)]
    before = {name: stack.children[name].proc.pid for name in SERVICES}  # type: ignore[union-attr]
    await asyncio.to_thread(stack.postgres.stop)
    try:
        body = await wait_readyz(http_m, user.base, 503, timeout=20)
        assert body["error"]["code"] == "not_ready", body
        assert set(body["services"]) == {"auth", "gallery", "inference"}
        # Each of the three notices within a few seconds (they check every second).
        deadline = time.monotonic() + 15
        while not all(v != "SERVING" for v in body["services"].values()):
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.2)
            body = await wait_readyz(http_m, user.base, 503, timeout=5)
        # Calls that need the database answer 503 with a code, never 500.
        for path in ("/api/v1/images", f"/api/v1/jobs/{accepted[0]['id']}", "/api/v1/auth/me"):
            async with http_m.get(f"{user.base}{path}", headers=user.bearer) as resp:
                answer = await body_of(resp)
                assert resp.status == 503, (path, resp.status, answer)
                assert answer["error"]["code"].endswith("_unavailable"), (path, answer)
    finally:
        await asyncio.to_thread(stack.postgres.start)
    await wait_readyz(http_m, user.base, 200, timeout=30)
    # Recovered by themselves: the same processes, none restarted.
    assert {name: stack.children[name].proc.pid for name in SERVICES} == before  # type: ignore[union-attr]
    for job in accepted:
        done = await wait_job(http_m, user, job["id"], timeout=120, tolerate=(503,))
        assert done["status"] == "completed", done
    fresh = await submit(http_m, user, "after the database came back")
    assert (await wait_job(http_m, user, fresh["id"], timeout=60))["status"] == "completed"


async def test_gallery_down_when_worker_finishes_worker_retries_the_handoff_and_image_arrives_once(
    stack: Stack, http_m: aiohttp.ClientSession, user: User
) -> None:
    """The worker keeps a finished generation while the gallery is away: it retries the hand-off
    with the images in hand (the message kept alive) instead of giving the job back to be generated
    again; one generation, one image set, one completion."""
    handoff = "easel_inference_worker_handoff_retries_total"
    retried = 'easel_inference_worker_jobs_total{model="tiny-sd",outcome="retried"}'
    metrics_url = stack.metrics_url(WORKER)
    before = await asyncio.to_thread(metric, metrics_url, handoff)
    given_back = await asyncio.to_thread(metric, metrics_url, retried)
    job = await submit(http_m, user, "a heron at dawn", **SHORT)
    await wait_running(http_m, user, job["id"], min_step=2)
    await asyncio.to_thread(stack.kill, "gallery", signal.SIGKILL)
    # The worker finishes generating, cannot store the images, and tries again with them.
    deadline = time.monotonic() + 120
    while await asyncio.to_thread(metric, metrics_url, handoff) <= before:
        assert time.monotonic() < deadline, "the worker never retried the hand-off"
        await asyncio.sleep(0.2)
    status, body = await get_job(http_m, user, job["id"])
    assert status == 200 and body["status"] not in TERMINAL, body
    await asyncio.to_thread(stack.start_one, "gallery")

    done = await wait_job(http_m, user, job["id"], timeout=120)
    events = await assert_completed_once(stack, http_m, user, done, SHORT["n"])
    assert {e.attempt for e in events if e.type == "running"} == {1}  # generated once
    assert await asyncio.to_thread(metric, metrics_url, retried) == given_back


async def test_gateway_killed_during_progress_stream_client_resumes_with_last_event_id(
    stack: Stack, http_m: aiohttp.ClientSession, user: User
) -> None:
    job = await submit(http_m, user, "a comet over the sea", **LONG)
    url = f"{user.base}/api/v1/jobs/{job['id']}/events"
    seen: list[Any] = []

    async def on_event(event: Any) -> None:
        seen.append(event)
        if event.event == "progress" and len(seen) >= 3 and stack.children["gateway"].alive:
            await asyncio.to_thread(stack.kill, "gateway", signal.SIGKILL)

    try:
        async with http_m.get(url, headers=user.bearer) as resp:
            assert resp.status == 200
            await read_events(resp, on_event)
    except aiohttp.ClientError:
        pass  # the connection died with the gateway (events it had sent may still be read first)
    assert not stack.children["gateway"].alive
    last = seen[-1].id
    await asyncio.to_thread(stack.start_one, "gateway")

    events = await resume(http_m, user, job["id"], last)
    ids = [int(e.id) for e in events if e.id]
    assert all(i > int(last) for i in ids), (last, ids)  # nothing seen twice
    assert ids == sorted(set(ids))
    if seen[-1].event == "completed" or not events:
        # It ended before the client came back: the reconnect is told so (204), as EventSource expects.
        assert events == [], events
        final = (await get_job(http_m, user, job["id"]))[1]
    else:
        assert events[-1].event == "completed", [e.event for e in events]
        final = json.loads(events[-1].data or "{}")
    assert final["status"] == "completed" and len(final["images"]) == LONG["n"], final


# --- SIGTERM: each service finishes what it has in hand and exits 0 ------------------------------


async def test_sigterm_worker_finishes_the_job_in_hand_and_exits_0(
    stack: Stack, http_m: aiohttp.ClientSession, user: User
) -> None:
    job = await submit(http_m, user, "an orchard in spring", **LONG)
    await wait_running(http_m, user, job["id"], min_step=2)
    child = stack.children[WORKER]
    pid = child.proc.pid  # type: ignore[union-attr]
    child.signal(signal.SIGTERM)
    assert await asyncio.to_thread(child.wait, 60) == 0
    done = await wait_job(http_m, user, job["id"], timeout=30)
    events = await assert_completed_once(stack, http_m, user, done, LONG["n"])
    # Finished by the worker that was stopping, on its first delivery.
    assert {(e.attempt, int(e.worker.rsplit(":", 1)[1])) for e in events if e.type == "running"} == {(1, pid)}


@pytest.mark.parametrize("service", ["auth", "gallery"])
async def test_sigterm_auth_and_gallery_answer_every_call_and_exit_0(
    stack: Stack, http_m: aiohttp.ClientSession, user: User, service: str
) -> None:
    done = await wait_job(http_m, user, (await submit(http_m, user, "a garden"))["id"])
    image = done["images"][0]
    base = user.base
    calls: list[tuple[str, str, User | None]] = [
        ("GET", f"{base}/api/v1/auth/me", user),
        ("GET", f"{base}/api/v1/images/{image['id']}", user),
        ("GET", f"{base}/api/v1/images/{image['id']}/file", user),
        ("GET", f"{base}/api/v1/images?limit=50", user),
    ]
    traffic = Traffic(http_m, calls)
    traffic.start()
    await asyncio.sleep(0.5)
    child = stack.children[service]
    child.signal(signal.SIGTERM)
    code = await asyncio.to_thread(child.wait, 30)
    await asyncio.sleep(0.3)
    await traffic.stop()
    assert code == 0, f"{service} exited with {code}"
    allowed = {"auth_unavailable", "gallery_unavailable"}
    assert not traffic.bad(allowed), traffic.bad(allowed)[:5]
    assert sum(1 for _, s, _ in traffic.answers if s == 200) > 0

    await asyncio.to_thread(stack.start_one, service)
    await wait_ready(http_m, base)
    after = Traffic(http_m, calls)
    after.start()
    await asyncio.sleep(0.5)
    await after.stop()
    assert after.answers and all(s == 200 for _, s, _ in after.answers), after.bad(set())[:5]


def _big_png() -> bytes:
    """A 4096x4096 PNG (the most pixels gallery takes): seconds of decoding and re-encoding."""
    import io

    from PIL import Image

    gradient = Image.linear_gradient("L").resize((4096, 4096))
    out = io.BytesIO()
    Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient)).save(
        out, "PNG", compress_level=1
    )
    return out.getvalue()


async def test_sigterm_gallery_finishes_an_upload_in_flight(
    stack: Stack, http_m: aiohttp.ClientSession, user: User
) -> None:
    data = await asyncio.to_thread(_big_png)
    actor = common_pb2.Actor(user_id=user.user_id, username=user.username, role="user")
    async with grpc.aio.insecure_channel(
        stack.target("gallery"), options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = gallery_pb2_grpc.GalleryStub(channel)
        # Four at once: gallery decodes two at a time, so some are surely in hand when it stops.
        uploads = [
            asyncio.ensure_future(
                stub.UploadImage(
                    gallery_pb2.UploadImageRequest(
                        actor=actor, data=data, filename=f"big{i}.png", purpose="init"
                    ),
                    timeout=120,
                )
            )
            for i in range(4)
        ]
        await asyncio.sleep(0.5)
        assert not all(u.done() for u in uploads), "every upload finished before the stop"
        stack.children["gallery"].signal(signal.SIGTERM)
        images = await asyncio.gather(*uploads)  # each completes: none is cut off
    assert await asyncio.to_thread(stack.children["gallery"].wait, 60) == 0
    await asyncio.to_thread(stack.start_one, "gallery")
    await wait_ready(http_m, user.base)
    for image in images:
        async with http_m.get(f"{user.base}/api/v1/images/{image.id}", headers=user.bearer) as resp:
            record = await resp.json()
            assert resp.status == 200 and (record["width"], record["height"]) == (4096, 4096), record


async def test_sigterm_inference_api_ends_watches_cleanly_and_no_job_is_lost(
    stack: Stack, http_m: aiohttp.ClientSession, user: User
) -> None:
    running = await submit(http_m, user, "a violin on a chair", **LONG)
    queued = [await submit(http_m, user, f"waiting behind {i}", steps=3) for i in range(2)]
    url = f"{user.base}/api/v1/jobs/{running['id']}/events"
    await wait_running(http_m, user, running["id"], min_step=1)
    traffic = Traffic(http_m, [("GET", f"{user.base}/api/v1/jobs?limit=10", user)])
    traffic.start()

    signalled: list[bool] = []

    async def stop_api(event: Any) -> None:
        if event.event == "progress" and not signalled:  # once, as an orchestrator does
            signalled.append(True)
            stack.children["inference-api"].signal(signal.SIGTERM)

    async with http_m.get(url, headers=user.bearer) as resp:
        assert resp.status == 200
        # The stream ends (not cut): inference tells watchers to reconnect elsewhere.
        events, _ = await read_events(resp, stop_api)
    code = await asyncio.to_thread(stack.children["inference-api"].wait, 30)
    await traffic.stop()
    assert code == 0
    assert not traffic.bad({"inference_unavailable"}), traffic.bad({"inference_unavailable"})[:5]
    last = [e.id for e in events if e.id][-1]

    await asyncio.to_thread(stack.start_one, "inference-api")
    rest = await resume(http_m, user, running["id"], last)
    assert not rest or rest[-1].event == "completed", rest  # [] : it ended during the restart
    assert all(int(e.id) > int(last) for e in rest if e.id)
    for job in [running, *queued]:
        done = await wait_job(http_m, user, job["id"], timeout=120)
        assert done["status"] == "completed", done


async def test_sigterm_gateway_finishes_an_upload_in_flight_ends_streams_and_exits_0(
    stack: Stack, http_m: aiohttp.ClientSession, user: User
) -> None:
    source = png_bytes(128, 128)
    job = await submit(http_m, user, "a bridge in fog", **LONG)
    url = f"{user.base}/api/v1/jobs/{job['id']}/events"
    await wait_running(http_m, user, job["id"], min_step=1)
    gateway = stack.children["gateway"]

    async def slow_body() -> AsyncIterator[bytes]:
        # A multipart upload that takes a second to arrive: in flight when SIGTERM comes.
        head = (
            b'--b\r\nContent-Disposition: form-data; name="kind"\r\n\r\nvariation\r\n'
            b'--b\r\nContent-Disposition: form-data; name="steps"\r\n\r\n2\r\n'
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        yield head
        await asyncio.sleep(0.3)
        gateway.signal(signal.SIGTERM)
        for i in range(0, len(source), 512):
            await asyncio.sleep(0.02)
            yield source[i : i + 512]
        yield b"\r\n--b--\r\n"

    async def upload() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as own:
            async with own.post(
                f"{user.base}/api/v1/edits",
                data=slow_body(),
                headers={**user.bearer, "Content-Type": "multipart/form-data; boundary=b"},
            ) as resp:
                return resp.status, await body_of(resp)

    async def watch() -> tuple[list[Any], list[str]]:
        async with http_m.get(url, headers=user.bearer) as resp:
            assert resp.status == 200
            return await read_events(resp)

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    status, answer = await upload()
    events, comments = await watching
    code = await asyncio.to_thread(gateway.wait, 30)
    assert code == 0
    assert status == 202, answer  # the request in flight was finished, not dropped
    if events[-1].event not in TERMINAL:
        assert "server restarting" in comments  # ended on purpose: the client reconnects
    last = [e.id for e in events if e.id][-1]

    await asyncio.to_thread(stack.start_one, "gateway")
    edit = await wait_job(http_m, user, answer["job"]["id"], timeout=120)
    assert edit["status"] == "completed", edit
    rest = await resume(http_m, user, job["id"], last)
    assert not rest or rest[-1].event == "completed", rest
    assert (await wait_job(http_m, user, job["id"]))["status"] == "completed"
