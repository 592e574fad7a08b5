"""SD 3.5 and Flux.1 jobs end to end: gallery, inference api and a worker serving tiny-sd3 and
tiny-flux as real processes, with real Postgres and NATS JetStream.

Each kind (txt2img, img2img, inpaint) makes PNGs of the requested size that record their
parameters, and an image made in a batch of two is the image made alone from its seed.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from easel.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference.pngmeta import read_png_params
from services.local.stack import Ports, Stack
from tests.integration.test_inference_api import TERMINAL, actor, read_image, wait_status

pytestmark = pytest.mark.timeout(300)

MODELS = ("tiny-sd3", "tiny-flux")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, postgres_url: str, nats_url: str
) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("flow-worker-stack")
    s = Stack(
        run_dir,
        models_dir,
        ports=Ports.free(),
        database_url=postgres_url,
        nats_url=nats_url,
        log_dir=run_dir / "logs",
        grace=10.0,
        extra_env={"EASEL_WORKER_MODELS": ",".join(MODELS), "EASEL_SHUTDOWN_GRACE_S": "5"},
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


async def _upload(
    gallery: gallery_pb2_grpc.GalleryStub, who: object, image: Image.Image, purpose: str
) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    resp = await gallery.UploadImage(
        gallery_pb2.UploadImageRequest(
            actor=who, data=buf.getvalue(), filename=f"{purpose}.png", purpose=purpose
        )
    )
    return str(resp.id)


@pytest.mark.parametrize("model", MODELS)
async def test_every_kind_completes_and_batched_equals_alone(
    api: inference_pb2_grpc.InferenceStub, gallery: gallery_pb2_grpc.GalleryStub, model: str
) -> None:
    who = actor(f"flow-{model}")
    rng = np.random.default_rng(3)
    init_id = await _upload(
        gallery, who, Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)), "init"
    )
    mask = Image.new("L", (80, 64), 0)
    mask.paste(255, (16, 16, 64, 48))
    mask_id = await _upload(gallery, who, mask, "mask")
    extra = {
        "txt2img": {"width": 80, "height": 64},
        "img2img": {"init_image_id": init_id, "strength": 0.7, "has_strength": True},
        "inpaint": {
            "init_image_id": init_id,
            "mask_image_id": mask_id,
            "strength": 0.9,
            "has_strength": True,
        },
    }
    for kind, params in extra.items():

        async def run(n: int, seed: int, kind: str = kind, params: dict[str, object] = params) -> list[bytes]:
            job = await api.SubmitJob(
                inference_pb2.SubmitJobRequest(
                    actor=who,
                    kind=kind,
                    model=model,
                    params=inference_pb2.GenerationParams(
                        prompt="a red cat", steps=2, n=n, seed=seed, **params
                    ),
                )
            )
            done = await wait_status(api, who, job.id, TERMINAL, timeout=180)
            assert done.status == "completed", f"{model} {kind}: {done.error_code} {done.error_message}"
            return [await read_image(gallery, who, image.id) for image in done.images]

        pair = await run(2, 40)
        [alone] = await run(1, 41)
        for data in pair:
            with Image.open(io.BytesIO(data)) as png:
                assert png.size == (80, 64), (model, kind, png.size)
            meta = read_png_params(data)
            assert meta["model"] == model and meta["kind"] == kind and meta["steps"] == 2
        seeds = [read_png_params(d)["seed"] for d in pair]
        assert read_png_params(alone)["seed"] == seeds[1] == 41 and seeds[0] == 40
        with Image.open(io.BytesIO(pair[1])) as a, Image.open(io.BytesIO(alone)) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"{model} {kind}: batched differs from alone"
