"""The inference job API end to end: gallery, inference api and a worker as real processes.

Real Postgres and NATS JetStream (session fixtures), real gRPC, the bundled tiny models on CPU. The
module's worker serves tiny-sd only, so tiny-sdxl jobs stay queued until a test starts a worker for it.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from easel.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.db import connect_pool
from services.inference.api.store import JobStore, NewJob
from services.inference.api.validation import ModelCatalog, normalize
from services.inference.pngmeta import read_png_params
from services.local.infra import free_port
from services.local.stack import DEFS, Child, Ports, Stack, http_ok

pytestmark = pytest.mark.timeout(240)

TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, postgres_url: str, nats_url: str
) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("inference-api-stack")
    s = Stack(
        run_dir,
        models_dir,
        ports=Ports.free(),
        database_url=postgres_url,
        nats_url=nats_url,
        log_dir=run_dir / "logs",
        grace=10.0,
        extra_env={
            "EASEL_WORKER_MODELS": "tiny-sd",
            "EASEL_WORKER_ACK_WAIT_S": "5",
            "EASEL_JOBS_IN_FLIGHT_LIMIT": "3",
            "EASEL_JOBS_PER_DAY_LIMIT": "6",
            "EASEL_SHUTDOWN_GRACE_S": "5",
        },
    )
    try:
        s.start(["gallery", "inference-api", "inference-worker"])
        yield s
    finally:
        s.stop()


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


def txt2img(
    who: common_pb2.Actor, model: str = "tiny-sd", key: str = "", **params: Any
) -> inference_pb2.SubmitJobRequest:
    p = {"prompt": "a lighthouse at dusk", **params}
    return inference_pb2.SubmitJobRequest(
        actor=who,
        kind="txt2img",
        model=model,
        params=inference_pb2.GenerationParams(**p),
        idempotency_key=key,
    )


def error_code(exc: grpc.aio.AioRpcError) -> str:
    return str(dict(exc.trailing_metadata() or ()).get("easel-error-code", ""))


def error_field(exc: grpc.aio.AioRpcError) -> str:
    return str(dict(exc.trailing_metadata() or ()).get("easel-error-field", ""))


async def watch(
    api: inference_pb2_grpc.InferenceStub, who: common_pb2.Actor, job_id: str, timeout: float = 90
) -> list[inference_pb2.JobEvent]:
    events: list[inference_pb2.JobEvent] = []
    call = api.WatchJob(inference_pb2.WatchJobRequest(actor=who, job_id=job_id), timeout=timeout)
    async for event in call:
        events.append(event)
    return events


async def wait_status(
    api: inference_pb2_grpc.InferenceStub,
    who: common_pb2.Actor,
    job_id: str,
    statuses: set[str],
    timeout: float = 60,
) -> inference_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job: inference_pb2.Job = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=job_id))
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")
        await asyncio.sleep(0.1)


async def read_image(gallery: gallery_pb2_grpc.GalleryStub, who: common_pb2.Actor, image_id: str) -> bytes:
    data = bytearray()
    async for chunk in gallery.ReadImage(
        gallery_pb2.ReadImageRequest(actor=who, image_id=image_id), timeout=10
    ):
        data.extend(chunk.data)
    return bytes(data)


def metric_value(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{", 1)[0] != name:
            continue
        if labels and not all(f'{k}="{v}"' in series for k, v in labels.items()):
            continue
        total += float(value)
    return total


def start_extra_worker(stack: Stack, models: str, name: str) -> tuple[Child, int]:
    """A second worker process beside the stack's own, serving `models`."""
    port = free_port()
    env = stack.env_for("inference-worker")
    env.update({"EASEL_WORKER_MODELS": models, "EASEL_METRICS_PORT": str(port)})
    assert stack.log_dir is not None
    child = Child(DEFS["inference-worker"], env, stack.log_dir / f"{name}.log")
    child.start()
    deadline = time.monotonic() + 120
    while not http_ok(f"http://127.0.0.1:{port}/readyz"):
        assert child.alive, f"{name} exited with {child.proc and child.proc.returncode}"
        assert time.monotonic() < deadline, f"{name} not ready"
        time.sleep(0.1)
    return child, port


# --- the happy path --------------------------------------------------------------------------------


async def test_txt2img_completes_with_progress_and_images_in_gallery(
    api: inference_pb2_grpc.InferenceStub, gallery: gallery_pb2_grpc.GalleryStub
) -> None:
    who = actor("painter")
    # Big enough (a second or two) that the watch below starts before the job ends.
    job = await api.SubmitJob(txt2img(who, width=256, height=248, steps=30, n=2, negative_prompt="fog"))
    assert job.status == "queued" and job.id
    params = json.loads(job.params_json)
    # Defaults and the random seed are filled in and recorded.
    assert params["seed"] >= 0 and params["sampler"] == "euler" and params["steps"] == 30
    assert params["guidance"] == 7.5

    events = await watch(api, who, job.id)
    types = [e.type for e in events]
    assert types[0] in ("queued", "running", "progress"), types
    assert "progress" in types, types
    assert types[-1] == "completed", types
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    steps_seen = [e.job.step for e in events if e.type == "progress"]
    assert steps_seen == sorted(steps_seen) and 1 <= steps_seen[0] <= 30
    final = events[-1].job
    assert final.status == "completed" and final.step == final.steps == 30
    assert [i.index for i in final.images] == [0, 1]
    assert final.HasField("started_at") and final.HasField("finished_at")

    # The stored row says the same as the stream did.
    got = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=job.id))
    assert got.status == "completed" and [i.id for i in got.images] == [i.id for i in final.images]

    for ref in final.images:
        record = await gallery.GetImage(gallery_pb2.GetImageRequest(actor=who, image_id=ref.id))
        assert record.owner_id == who.user_id and record.job_id == job.id and record.index == ref.index
        data = await read_image(gallery, who, ref.id)
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.size == (256, 248)
        meta = read_png_params(data)
        assert meta["prompt"] == "a lighthouse at dusk" and meta["negative_prompt"] == "fog"
        assert meta["seed"] == params["seed"] + ref.index and meta["steps"] == 30
        assert meta["model"] == "tiny-sd" and meta["width"] == 256 and meta["height"] == 248


async def test_same_seed_gives_same_pixels_and_the_cache_answers_only_its_owner(
    stack: Stack, api: inference_pb2_grpc.InferenceStub, gallery: gallery_pb2_grpc.GalleryStub
) -> None:
    seed = int(uuid.uuid4().int % 2**31)
    alice, bob = actor("alice"), actor("bob")
    first = await api.SubmitJob(txt2img(alice, seed=seed, steps=6, prompt="a red kite"))
    assert not first.cached
    done = await wait_status(api, alice, first.id, TERMINAL)
    assert done.status == "completed", done.error_message
    hits_before = metric_value(stack.metrics_url("inference-api"), "easel_inference_cache_hits_total")

    # Another user asking for exactly the same is not told (by `cached` or by speed) that someone
    # made it already: their job runs (issue 18, finding 8), and makes the same pixels.
    other = await api.SubmitJob(txt2img(bob, seed=seed, steps=6, prompt="a red kite"))
    assert other.status == "queued" and not other.cached
    other_done = await wait_status(api, bob, other.id, TERMINAL)
    assert other_done.status == "completed" and not other_done.cached
    assert metric_value(stack.metrics_url("inference-api"), "easel_inference_cache_hits_total") == hits_before
    a = await read_image(gallery, alice, done.images[0].id)
    b = await read_image(gallery, bob, other_done.images[0].id)
    assert a == b

    # The owner's own repeat is answered at once, without a worker, into a new job of theirs.
    again = await api.SubmitJob(txt2img(alice, seed=seed, steps=6, prompt="a red kite"))
    assert again.status == "completed" and again.cached
    assert again.id != first.id and len(again.images) == 1
    assert again.images[0].id != done.images[0].id
    record = await gallery.GetImage(gallery_pb2.GetImageRequest(actor=alice, image_id=again.images[0].id))
    assert record.owner_id == alice.user_id and record.job_id == again.id
    assert await read_image(gallery, alice, again.images[0].id) == a
    assert (
        metric_value(stack.metrics_url("inference-api"), "easel_inference_cache_hits_total")
        == hits_before + 1
    )

    # Without an explicit seed nothing is cached: a fresh job runs.
    third = await api.SubmitJob(txt2img(alice, steps=6, prompt="a red kite"))
    assert third.status == "queued" and not third.cached
    assert (await wait_status(api, alice, third.id, TERMINAL)).status == "completed"


async def test_a_race_at_the_daily_limit_leaves_no_image_of_a_refused_job(
    api: inference_pb2_grpc.InferenceStub, gallery: gallery_pb2_grpc.GalleryStub
) -> None:
    """Cached answers racing for the last jobs of the day (6 here): the refused ones store nothing."""
    who = actor("racer")
    seed = int(uuid.uuid4().int % 2**31)
    source = await api.SubmitJob(txt2img(who, seed=seed, steps=2, prompt="a tin robot"))
    assert (await wait_status(api, who, source.id, TERMINAL)).status == "completed"
    for _ in range(3):
        hit = await api.SubmitJob(txt2img(who, seed=seed, steps=2, prompt="a tin robot"))
        assert hit.cached
    # 4 jobs today: 2 more may pass; 4 racing cache hits.
    results = await asyncio.gather(
        *(api.SubmitJob(txt2img(who, seed=seed, steps=2, prompt="a tin robot")) for _ in range(4)),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, inference_pb2.Job)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(accepted) == 2 and len(refused) == 2, results
    assert {error_code(r) for r in refused} == {"daily_job_limit_reached"}
    images = await gallery.ListImages(gallery_pb2.ListImagesRequest(actor=who, limit=50))
    jobs = await api.ListJobs(inference_pb2.ListJobsRequest(actor=who, limit=50))
    assert len(jobs.jobs) == 6
    assert sorted(i.job_id for i in images.items) == sorted(j.id for j in jobs.jobs)


# --- idempotency, validation and ownership -------------------------------------------------------


async def test_retry_queues_a_job_committed_but_never_published(
    api: inference_pb2_grpc.InferenceStub, postgres_url: str, models_dir: Path
) -> None:
    """An api that died between committing a job and publishing it leaves the row queued with no
    message; the client's retry with the same idempotency key must get it generated."""
    who = actor("crashed")
    key = f"key-{uuid.uuid4()}"
    request = txt2img(who, key=key, steps=2, seed=7)
    catalog = ModelCatalog(models_dir)
    norm = normalize(request, await catalog.models(), catalog, 2000)
    pool = await connect_pool(postgres_url, "inference")
    try:
        # Exactly what SubmitJob commits before it publishes.
        row, created, _ = await JobStore(pool, 100, 100).submit(
            NewJob(
                id=str(uuid.uuid4()),
                owner_id=who.user_id,
                owner_username=who.username,
                kind=norm.kind,
                model=norm.model.name,
                params=norm.params,
                request_hash=norm.request_hash,
                idempotency_key=key,
                cache_key=None,
            )
        )
    finally:
        await pool.close()
    assert created and row.status == "queued"
    retried = await api.SubmitJob(request)
    assert retried.id == row.id
    assert (await wait_status(api, who, row.id, TERMINAL, timeout=60)).status == "completed"


async def test_idempotency_key_returns_the_same_job(api: inference_pb2_grpc.InferenceStub) -> None:
    who = actor("retrier")
    key = f"key-{uuid.uuid4()}"
    a = await api.SubmitJob(txt2img(who, key=key, steps=3))
    b = await api.SubmitJob(txt2img(who, key=key, steps=3))
    assert a.id == b.id and a.params_json == b.params_json
    # The same key from another user is another job.
    c = await api.SubmitJob(txt2img(actor("other"), key=key, steps=3))
    assert c.id != a.id
    # The same key with different parameters is refused, not answered with the wrong job.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.SubmitJob(txt2img(who, key=key, steps=4))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_code(err.value) == "idempotency_key_reused"
    jobs = await api.ListJobs(inference_pb2.ListJobsRequest(actor=who))
    assert [j.id for j in jobs.jobs] == [a.id]
    await wait_status(api, who, a.id, TERMINAL)


@pytest.mark.parametrize(
    ("overrides", "status", "code", "field"),
    [
        ({"model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "model_not_found", "model"),
        ({"width": 65}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_size", "width"),
        ({"height": 1024}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_size", "height"),
        ({"steps": 51}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_steps", "steps"),
        ({"sampler": "warp drive"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown_sampler", "sampler"),
        ({"n": 9}, grpc.StatusCode.INVALID_ARGUMENT, "too_many_images", "n"),
        ({"prompt": "  "}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_prompt", "prompt"),
        ({"prompt": "x" * 2001}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_prompt", "prompt"),
        ({"prompt": "a\x00b"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_field", "prompt"),
        ({"negative_prompt": "\x00"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_field", "negative_prompt"),
        ({"kind": "paint"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown_kind", "kind"),
        ({"kind": "img2img"}, grpc.StatusCode.INVALID_ARGUMENT, "missing_init_image", "init_image_id"),
        # The transformer families' own limits, refused at submit (not later by the worker).
        ({"model": "tiny-flux", "width": 72}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_size", "width"),
        (
            {"model": "tiny-flux", "sampler": "dpmpp_2m"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown_sampler",
            "sampler",
        ),
    ],
)
async def test_bad_requests_get_their_own_codes(
    api: inference_pb2_grpc.InferenceStub,
    overrides: dict[str, Any],
    status: grpc.StatusCode,
    code: str,
    field: str,
) -> None:
    params = {k: v for k, v in overrides.items() if k not in ("model", "kind")}
    req = txt2img(actor("typo"), model=str(overrides.get("model", "tiny-sd")), **params)
    req.kind = str(overrides.get("kind", "txt2img"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.SubmitJob(req)
    assert err.value.code() == status
    assert error_code(err.value) == code
    assert error_field(err.value) == field
    if code == "model_not_found":
        assert "tiny-sd" in (err.value.details() or "")  # names what is installed


async def test_signed_out_callers_are_refused(api: inference_pb2_grpc.InferenceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.SubmitJob(txt2img(common_pb2.Actor()))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_code(err.value) == "sign_in_required"


async def test_missing_init_image_is_refused_at_submit(api: inference_pb2_grpc.InferenceStub) -> None:
    who = actor("editor")
    req = inference_pb2.SubmitJobRequest(
        actor=who,
        kind="img2img",
        model="tiny-sd",
        params=inference_pb2.GenerationParams(prompt="make it blue", init_image_id=str(uuid.uuid4())),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.SubmitJob(req)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_code(err.value) == "init_image_not_found" and error_field(err.value) == "init_image_id"
    assert not (await api.ListJobs(inference_pb2.ListJobsRequest(actor=who))).jobs


async def upload(gallery: gallery_pb2_grpc.GalleryStub, who: common_pb2.Actor, size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    image = await gallery.UploadImage(
        gallery_pb2.UploadImageRequest(actor=who, data=buf.getvalue(), filename="red.png", purpose="init")
    )
    return str(image.id)


def edit(who: common_pb2.Actor, kind: str, image_id: str, **params: Any) -> inference_pb2.SubmitJobRequest:
    return inference_pb2.SubmitJobRequest(
        actor=who,
        kind=kind,
        model="tiny-sd",
        params=inference_pb2.GenerationParams(prompt="sharper", init_image_id=image_id, **params),
    )


@pytest.mark.parametrize(
    ("size", "code"),
    [((24, 24), "invalid_size"), ((256, 256), "upscale_cannot_grow"), ((256, 64), "upscale_cannot_grow")],
)
async def test_an_upscale_that_cannot_grow_is_refused_at_submit(
    api: inference_pb2_grpc.InferenceStub,
    gallery: gallery_pb2_grpc.GalleryStub,
    size: tuple[int, int],
    code: str,
) -> None:
    who = actor("enlarger")
    image_id = await upload(gallery, who, size)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.SubmitJob(edit(who, "upscale", image_id, steps=2))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(err.value) == code and error_field(err.value) == "init_image_id"
    assert "upscale" in (err.value.details() or "")
    assert not (await api.ListJobs(inference_pb2.ListJobsRequest(actor=who))).jobs


async def test_an_upscale_reports_the_size_it_makes(
    api: inference_pb2_grpc.InferenceStub, gallery: gallery_pb2_grpc.GalleryStub
) -> None:
    who = actor("enlarger")
    image_id = await upload(gallery, who, (200, 100))
    job = await api.SubmitJob(edit(who, "upscale", image_id, steps=2))
    # Twice 200x100, shrunk to the model's max of 256 a side.
    params = json.loads(job.params_json)
    assert (params["width"], params["height"]) == (256, 128)
    done = await wait_status(api, who, job.id, TERMINAL)
    assert done.status == "completed", done.error_message
    with Image.open(io.BytesIO(await read_image(gallery, who, done.images[0].id))) as im:
        assert im.size == (256, 128)


async def test_edit_of_an_uploaded_image_runs_at_its_size(
    api: inference_pb2_grpc.InferenceStub, gallery: gallery_pb2_grpc.GalleryStub
) -> None:
    who = actor("retoucher")
    buf = io.BytesIO()
    Image.new("RGB", (80, 64), (200, 30, 30)).save(buf, format="PNG")
    upload = await gallery.UploadImage(
        gallery_pb2.UploadImageRequest(actor=who, data=buf.getvalue(), filename="red.png", purpose="init")
    )
    job = await api.SubmitJob(
        inference_pb2.SubmitJobRequest(
            actor=who,
            kind="img2img",
            model="tiny-sd",
            params=inference_pb2.GenerationParams(
                prompt="make it blue", init_image_id=upload.id, steps=4, strength=0.5, has_strength=True
            ),
        )
    )
    # The job says the size it makes (it said 0x0: issue 18, finding 10).
    params = json.loads(job.params_json)
    assert (params["width"], params["height"]) == (80, 64)
    done = await wait_status(api, who, job.id, TERMINAL)
    assert done.status == "completed", done.error_message
    assert (json.loads(done.params_json)["width"], json.loads(done.params_json)["height"]) == (80, 64)
    data = await read_image(gallery, who, done.images[0].id)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (80, 64)
    meta = read_png_params(data)
    assert meta["kind"] == "img2img" and meta["init_image_id"] == upload.id and meta["strength"] == 0.5
    # Someone else cannot edit it: the init image is not theirs.
    stranger = actor("stranger")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.SubmitJob(
            inference_pb2.SubmitJobRequest(
                actor=stranger,
                kind="img2img",
                model="tiny-sd",
                params=inference_pb2.GenerationParams(prompt="mine now", init_image_id=upload.id, steps=2),
            )
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_code(err.value) == "init_image_not_found"


async def test_jobs_are_visible_to_their_owner_only(api: inference_pb2_grpc.InferenceStub) -> None:
    owner, other = actor("owner"), actor("snoop")
    ids = [(await api.SubmitJob(txt2img(owner, steps=2, prompt=f"tile {i}"))).id for i in range(3)]
    page1 = await api.ListJobs(inference_pb2.ListJobsRequest(actor=owner, limit=2))
    assert [j.id for j in page1.jobs] == ids[::-1][:2] and page1.next_cursor
    page2 = await api.ListJobs(inference_pb2.ListJobsRequest(actor=owner, limit=2, cursor=page1.next_cursor))
    assert [j.id for j in page2.jobs] == [ids[0]] and not page2.next_cursor
    assert not (await api.ListJobs(inference_pb2.ListJobsRequest(actor=other))).jobs
    for call in (
        api.GetJob(inference_pb2.GetJobRequest(actor=other, job_id=ids[0])),
        api.CancelJob(inference_pb2.CancelJobRequest(actor=other, job_id=ids[0])),
        api.GetJob(inference_pb2.GetJobRequest(actor=owner, job_id="not-a-job")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_code(err.value) == "job_not_found"
    for job_id in ids:
        await wait_status(api, owner, job_id, TERMINAL)


async def test_list_models_marks_the_default(api: inference_pb2_grpc.InferenceStub) -> None:
    resp = await api.ListModels(inference_pb2.ListModelsRequest())
    by_name = {m.name: m for m in resp.models}
    assert set(by_name) == {"tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-flux"}
    assert (by_name["tiny-sd3"].family, by_name["tiny-flux"].family) == ("sd3", "flux")
    assert by_name["tiny-sd"].is_default and not by_name["tiny-sdxl"].is_default
    sd = by_name["tiny-sd"]
    assert sd.family == "sd1" and "txt2img" in sd.kinds and sd.default_width == 64
    assert sd.min_size == 64 and sd.max_size == 256 and "euler" in sd.samplers
    # A flow-matching model lists only the samplers it can use.
    assert set(by_name["tiny-flux"].samplers) == {"euler", "euler_karras"}
    assert "dpmpp_2m" in sd.samplers


# --- queue, limits and cancellation --------------------------------------------------------------


async def test_per_user_limits(api: inference_pb2_grpc.InferenceStub) -> None:
    """In flight 3 and 6 a day (module settings); tiny-sdxl has no worker here, so jobs stay queued."""
    who = actor("busy")

    async def submit(i: int) -> inference_pb2.Job:
        job: inference_pb2.Job = await api.SubmitJob(
            txt2img(who, model="tiny-sdxl", prompt=f"sketch {i}", steps=2)
        )
        return job

    async def cancel(job: inference_pb2.Job) -> None:
        got = await api.CancelJob(inference_pb2.CancelJobRequest(actor=who, job_id=job.id))
        assert got.status == "cancelled"

    first = [await submit(i) for i in range(3)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(3)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_code(err.value) == "too_many_jobs_in_flight"
    assert int(dict(err.value.trailing_metadata() or ()).get("easel-retry-after", "0")) > 0
    for job in first:
        await cancel(job)
    second = [await submit(i) for i in range(3, 6)]
    for job in second:
        await cancel(job)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(6)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_code(err.value) == "daily_job_limit_reached"
    retry_after = int(dict(err.value.trailing_metadata() or ()).get("easel-retry-after", "0"))
    assert 0 < retry_after <= 24 * 3600


async def test_queue_position_and_cancel_of_queued_job(
    stack: Stack, api: inference_pb2_grpc.InferenceStub
) -> None:
    who = actor("patient")
    a = await api.SubmitJob(txt2img(who, model="tiny-sdxl", prompt="first", steps=3))
    b = await api.SubmitJob(txt2img(who, model="tiny-sdxl", prompt="second", steps=3))
    assert a.status == b.status == "queued"
    assert a.position >= 1 and b.position == a.position + 1

    stream = api.WatchJob(inference_pb2.WatchJobRequest(actor=who, job_id=b.id), timeout=120)
    it = stream.__aiter__()
    first = await it.__anext__()
    assert first.type == "queued" and first.job.position == b.position

    cancelled = await api.CancelJob(inference_pb2.CancelJobRequest(actor=who, job_id=a.id))
    # A queued job is cancelled at once.
    assert cancelled.status == "cancelled" and cancelled.position == 0
    moved = await asyncio.wait_for(it.__anext__(), timeout=10)
    assert moved.type == "queued" and moved.job.position == b.position - 1 and moved.seq > first.seq

    # A worker for tiny-sdxl runs b, and skips the cancelled a.
    worker, port = await asyncio.to_thread(start_extra_worker, stack, "tiny-sdxl", "worker-sdxl")
    try:
        rest = [e async for e in stream]
        assert rest[-1].type == "completed" and len(rest[-1].job.images) == 1
        assert [e.seq for e in rest] == sorted({e.seq for e in rest}) and rest[0].seq > moved.seq
        again = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=a.id))
        assert again.status == "cancelled" and not again.images
        url = f"http://127.0.0.1:{port}/metrics"
        assert metric_value(url, "easel_inference_worker_jobs_total", {"outcome": "completed"}) >= 1
        assert metric_value(url, "easel_inference_worker_jobs_total", {"outcome": "cancelled"}) >= 1
        assert metric_value(url, "easel_inference_images_generated_total", {"model": "tiny-sdxl"}) >= 1
    finally:
        await asyncio.to_thread(worker.stop, 10.0)


async def test_cancel_of_running_job_stops_it(
    api: inference_pb2_grpc.InferenceStub, gallery: gallery_pb2_grpc.GalleryStub, stack: Stack
) -> None:
    who = actor("impatient")
    job = await api.SubmitJob(txt2img(who, width=256, height=256, steps=50, n=8, prompt="a vast city"))
    stream = api.WatchJob(inference_pb2.WatchJobRequest(actor=who, job_id=job.id), timeout=120)
    cancel_at: float | None = None
    step_at_cancel = 0
    events: list[inference_pb2.JobEvent] = []
    async for event in stream:
        events.append(event)
        if cancel_at is None and event.type == "progress" and event.job.step >= 2:
            step_at_cancel = event.job.step
            cancel_at = time.monotonic()
            reply = await api.CancelJob(inference_pb2.CancelJobRequest(actor=who, job_id=job.id))
            assert reply.status in ("running", "cancelled")
    assert cancel_at is not None, [e.type for e in events]
    last = events[-1]
    assert last.type == "cancelled" and last.job.status == "cancelled", [e.type for e in events]
    # Stopped between steps: well before the end, and soon after the request.
    assert last.job.step < 50
    assert last.job.step - step_at_cancel <= 10
    assert time.monotonic() - cancel_at < 10
    # Within one step of the worker hearing of it: the step in hand then, from its log line.
    assert stack.log_dir is not None
    heard = [
        json.loads(line)
        for line in (stack.log_dir / "inference-worker.log").read_text().splitlines()
        if line.startswith("{") and job.id in line and "cancel requested" in line
    ]
    assert len(heard) == 1, heard
    assert 0 <= last.job.step - heard[0]["step"] <= 1, (heard[0]["step"], last.job.step)
    got = await api.GetJob(inference_pb2.GetJobRequest(actor=who, job_id=job.id))
    assert got.status == "cancelled" and not got.images
    mine = await gallery.ListImages(gallery_pb2.ListImagesRequest(actor=who))
    assert not mine.items
    # The worker is free again.
    quick = await api.SubmitJob(txt2img(who, steps=2))
    assert (await wait_status(api, who, quick.id, TERMINAL, timeout=30)).status == "completed"


async def test_trace_follows_the_job_into_the_worker(
    stack: Stack, api: inference_pb2_grpc.InferenceStub
) -> None:
    who = actor("traced")
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    job = await api.SubmitJob(txt2img(who, steps=2), metadata=(("traceparent", traceparent),))
    assert (await wait_status(api, who, job.id, TERMINAL)).status == "completed"
    assert stack.log_dir is not None
    for name in ("inference-api", "inference-worker"):
        lines = [
            json.loads(line)
            for line in (stack.log_dir / f"{name}.log").read_text().splitlines()
            if line.startswith("{") and trace_id in line
        ]
        assert any(line.get("job_id") == job.id for line in lines), name


async def test_closed_watch_streams_log_no_context_errors(
    stack: Stack, api: inference_pb2_grpc.InferenceStub
) -> None:
    """A client that stops following a job must not make the api log "Failed to detach context"."""
    who = actor("watcher")
    job = await api.SubmitJob(txt2img(who, model="tiny-sdxl", prompt="never started", steps=2))
    for _ in range(3):
        call = api.WatchJob(inference_pb2.WatchJobRequest(actor=who, job_id=job.id), timeout=30)
        first = await call.read()
        assert first.type == "queued"
        call.cancel()
    await api.CancelJob(inference_pb2.CancelJobRequest(actor=who, job_id=job.id))
    await asyncio.sleep(1.0)
    assert stack.log_dir is not None
    text = (stack.log_dir / "inference-api.log").read_text()
    assert "Failed to detach context" not in text
    assert "Traceback" not in text
