"""Both blob stores against real backends: a temp folder, and moto's S3 server over HTTP."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from services.common.blobstore import (
    BlobKeyError,
    BlobNotFoundError,
    BlobStore,
    BlobStoreSettings,
    FilesystemBlobStore,
    S3BlobStore,
    blobstore_from_settings,
)
from services.common.config import SettingsError
from services.local.infra import free_port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["fs", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str, unique: str
) -> AsyncIterator[BlobStore]:
    blobs: BlobStore
    if request.param == "fs":
        blobs = FilesystemBlobStore(tmp_path / "blobs")
    else:
        blobs = S3BlobStore(s3_endpoint, "testing", "testing", f"blobs-{unique}", region="us-east-1")
    await blobs.ensure_ready()
    await blobs.ensure_ready()  # a second start finds the folder or bucket and keeps it
    yield blobs
    await blobs.close()


async def test_put_get_exists_delete(store: BlobStore) -> None:
    key = "sha256/ab/abcdef.png"
    assert not await store.exists(key)
    await store.put(key, b"first", "image/png")
    assert await store.exists(key)
    assert await store.get(key) == b"first"
    await store.put(key, b"second version", "image/png")
    assert await store.get(key) == b"second version"
    await store.delete(key)
    assert not await store.exists(key)
    await store.delete(key)  # deleting what is gone is fine
    with pytest.raises(BlobNotFoundError):
        await store.get(key)


async def test_iter_chunks_streams_the_whole_object(store: BlobStore) -> None:
    data = os.urandom(300_000)
    await store.put("big/blob.bin", data, "application/octet-stream")
    chunks = [c async for c in store.iter_chunks("big/blob.bin", chunk_size=65_536)]
    assert b"".join(chunks) == data
    assert len(chunks) >= 5 and all(len(c) <= 65_536 for c in chunks)
    with pytest.raises(BlobNotFoundError):
        async for _ in store.iter_chunks("big/missing.bin"):
            pass


async def test_list_keys_by_prefix(store: BlobStore) -> None:
    for key in ("thumb/aa/1.webp", "sha256/aa/1.png", "sha256/bb/2.png"):
        await store.put(key, b"x", "image/png")
    assert await store.list_keys("sha256/") == ["sha256/aa/1.png", "sha256/bb/2.png"]
    assert await store.list_keys("thumb/") == ["thumb/aa/1.webp"]
    assert len(await store.list_keys()) == 3


@pytest.mark.parametrize(
    "key",
    [
        "../escape",
        "a/../../etc/passwd",
        "/abs/path",
        "a//b",
        "a/./b",
        ".hidden",
        "a b",
        "a\\b",
        "é",
        "",
        "a/",
    ],
)
async def test_unsafe_keys_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(BlobKeyError):
        await store.put(key, b"x", "image/png")
    with pytest.raises(BlobKeyError):
        await store.get(key)


async def test_concurrent_writers_leave_one_complete_value(store: BlobStore) -> None:
    values = [bytes([i]) * 50_000 for i in range(8)]
    await asyncio.gather(*(store.put("race/key", v, "application/octet-stream") for v in values))
    assert await store.get("race/key") in values


async def test_filesystem_store_writes_atomically_and_stays_inside_its_root(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "root")
    await store.ensure_ready()
    await store.put("a/b.png", b"data", "image/png")
    assert (tmp_path / "root" / "a" / "b.png").read_bytes() == b"data"
    # The temp file of a finished write is gone, and temp files never show up as keys.
    assert list((tmp_path / "root" / ".tmp").iterdir()) == []
    (tmp_path / "root" / ".tmp" / "stray.part").write_bytes(b"half")
    assert await store.list_keys() == ["a/b.png"]
    assert not (tmp_path / "escape").exists()


def test_settings_choose_the_store(tmp_path: Path) -> None:
    fs = blobstore_from_settings(BlobStoreSettings(blob_dir=str(tmp_path)))
    assert isinstance(fs, FilesystemBlobStore) and fs.root == tmp_path.resolve()
    s3 = blobstore_from_settings(
        BlobStoreSettings(s3_endpoint="https://minio.example:9000", s3_bucket="pics")
    )
    assert isinstance(s3, S3BlobStore)
    assert s3.endpoint == "minio.example:9000" and s3.bucket == "pics"
    with pytest.raises(SettingsError) as exc:
        blobstore_from_settings(BlobStoreSettings(s3_endpoint="http://host:9000/some/path"))
    assert exc.value.setting == "EASEL_S3_ENDPOINT"


async def test_unreachable_s3_stops_with_the_setting_named() -> None:
    store = S3BlobStore(
        f"127.0.0.1:{free_port()}", "k", "s", "nothing-here", region="us-east-1", connect_timeout_s=0.5
    )
    with pytest.raises(SettingsError) as exc:
        await store.ensure_ready()
    assert exc.value.setting == "EASEL_S3_ENDPOINT"
    await store.close()
