"""`python -m services.gallery` as a real process: settings from the environment, S3 (moto) for the
bytes, health, metrics, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from moto.server import ThreadedMotoServer
from PIL import Image

from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from services.common.errors import EaselError
from services.common.grpc_client import channel, user_errors
from services.local.infra import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


def gallery_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_")}
    env.update(values)
    return env


async def test_process_serves_and_stops_on_sigterm(
    postgres_url: str, s3_endpoint: str, tmp_path: Path, unique: str
) -> None:
    db = f"gallery_proc_{unique}"
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    grpc_port, metrics_port = free_port(), free_port()
    env = gallery_env(
        EASEL_DATABASE_URL=postgres_url.rsplit("/", 1)[0] + "/" + db,
        EASEL_GRPC_PORT=str(grpc_port),
        EASEL_METRICS_PORT=str(metrics_port),
        EASEL_S3_ENDPOINT=s3_endpoint,
        EASEL_S3_ACCESS_KEY="testing",
        EASEL_S3_SECRET_KEY="testing",
        EASEL_S3_BUCKET=f"proc-{unique}",
        EASEL_S3_REGION="us-east-1",
        EASEL_SHUTDOWN_GRACE_S="5",
    )
    log = open(tmp_path / "gallery.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gallery"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    ch = channel(f"127.0.0.1:{grpc_port}", "gallery", 5.0)
    try:
        health = health_pb2_grpc.HealthStub(ch)
        for _ in range(200):
            assert proc.poll() is None, (tmp_path / "gallery.log").read_text()
            try:
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(service="easel.gallery.v1.Gallery"), timeout=1
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except Exception:
                pass
            await asyncio.sleep(0.1)
        else:
            pytest.fail("gallery never became healthy: " + (tmp_path / "gallery.log").read_text())

        stub = gallery_pb2_grpc.GalleryStub(ch)
        rnd = random.Random(unique)
        buf = io.BytesIO()
        Image.frombytes("RGB", (32, 32), rnd.randbytes(32 * 32 * 3)).save(buf, "PNG")
        new = gallery_pb2.NewImage(index=0, png=buf.getvalue(), params_json='{"prompt": "owl"}')
        with user_errors("gallery"):
            added = await stub.AddImages(
                gallery_pb2.AddImagesRequest(job_id=f"job-{unique}", owner_id="u-1", images=[new])
            )
        (image,) = added.images
        assert image.params_json == '{"prompt": "owl"}'

        # Private by default: an anonymous reader gets not-found, the owner gets the bytes.
        with pytest.raises(EaselError) as exc, user_errors("gallery"):
            async for _ in stub.ReadImage(gallery_pb2.ReadImageRequest(image_id=image.id)):
                pass
        assert exc.value.code == "image_not_found"
        owner = common_pb2.Actor(user_id="u-1", username="one", role="user")
        request = gallery_pb2.ReadImageRequest(image_id=image.id, actor=owner)
        with user_errors("gallery"):
            chunks = [c async for c in stub.ReadImage(request)]
        assert b"".join(c.data for c in chunks) == buf.getvalue()

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        body = await asyncio.to_thread(scrape)
        assert 'easel_gallery_images_added_total{kind="generated"} 1.0' in body
        assert 'easel_gallery_reads_total{size="original"} 1.0' in body

        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
        assert code == 0, (tmp_path / "gallery.log").read_text()
        assert '"stopped"' in (tmp_path / "gallery.log").read_text()
    finally:
        await ch.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_bad_setting_stops_with_one_line_naming_it() -> None:
    env = gallery_env(EASEL_GALLERY_MAX_UPLOAD_BYTES="lots", EASEL_METRICS_PORT="0", EASEL_GRPC_PORT="0")
    done = subprocess.run(
        [sys.executable, "-m", "services.gallery"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "EASEL_GALLERY_MAX_UPLOAD_BYTES" in lines[0]
    assert "Traceback" not in done.stderr.decode()
