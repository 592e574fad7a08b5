"""A `.safetensors` file dropped into `models/checkpoints/` while the studio runs is imported by the
worker, listed by the job api and served, with no restart (A1111's habit), over real processes, real
Postgres and NATS JetStream. Its removal takes it off the list.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from easel.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference.ldm_export import export_sd_checkpoint
from services.inference.singlefile import sha256_of
from services.local.stack import Ports, Stack
from tests.integration.test_inference_api import TERMINAL, actor, txt2img, wait_status
from tests.stacks import create_database

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A volume of its own (the import writes into it) holding tiny-sd only."""
    own = tmp_path_factory.mktemp("drop-in-volume")
    shutil.copytree(models_dir / "tiny-sd", own / "tiny-sd")
    return own


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, volume: Path, postgres_url: str) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("drop-in-stack")
    s = Stack(
        run_dir,
        volume,
        ports=Ports.free(),
        database_url=create_database(postgres_url, "drop_in"),
        nats_url=None,  # its own NATS: another stack's workers must not take these jobs
        log_dir=run_dir / "logs",
        grace=10.0,
        extra_env={
            "EASEL_WORKER_MODELS_REFRESH_S": "1",
            "EASEL_MODELS_REFRESH_S": "1",
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


async def listed(api: inference_pb2_grpc.InferenceStub) -> set[str]:
    resp = await api.ListModels(inference_pb2.ListModelsRequest())
    return {m.name for m in resp.models}


async def wait_listed(api: inference_pb2_grpc.InferenceStub, name: str, present: bool) -> float:
    started = time.monotonic()
    while (name in await listed(api)) != present:
        assert time.monotonic() - started < 60, f"{name} {'never appeared' if present else 'stayed'}"
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def test_a_dropped_file_is_served_without_a_restart_and_its_removal_unlists_it(
    api: inference_pb2_grpc.InferenceStub, volume: Path, tmp_path: Path
) -> None:
    assert await listed(api) == {"tiny-sd"}
    made = export_sd_checkpoint(volume / "tiny-sd", tmp_path / "Dropped Model.safetensors")
    (volume / "checkpoints").mkdir(exist_ok=True)
    # Copied in under a dot name and renamed, as a careful copy does: never seen half written.
    partial = volume / "checkpoints" / ".Dropped Model.safetensors.part"
    shutil.copy(made, partial)
    partial.rename(volume / "checkpoints" / "Dropped Model.safetensors")
    seconds = await wait_listed(api, "dropped-model", present=True)
    assert seconds < 30
    info = {m.name: m for m in (await api.ListModels(inference_pb2.ListModelsRequest())).models}
    assert info["dropped-model"].sha256 == sha256_of(made) and not info["tiny-sd"].sha256
    assert info["dropped-model"].max_steps == info["tiny-sd"].max_steps > 0

    who = actor("dropper")
    job = await api.SubmitJob(txt2img(who, model="dropped-model", steps=2, n=1))
    done = await wait_status(api, who, job.id, TERMINAL, timeout=120)
    assert done.status == "completed", done.error_message
    assert len(done.images) == 1

    (volume / "checkpoints" / "Dropped Model.safetensors").unlink()
    await wait_listed(api, "dropped-model", present=False)
    assert not (volume / "dropped-model").exists()
