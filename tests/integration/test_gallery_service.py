"""The gallery over real gRPC, with a real Postgres and both blob stores (a folder and moto's S3)."""

from __future__ import annotations

import asyncio
import io
import random
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image
from prometheus_client import REGISTRY

from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from services.common.blobstore import BlobStore
from services.common.errors import EaselError
from services.common.grpc_client import channel, user_errors
from services.common.grpc_server import GrpcServer
from services.gallery.app import open_gallery
from services.gallery.service import GalleryService
from services.gallery.settings import GallerySettings
from services.local.infra import free_port
from tests.stacks import new_database

T = TypeVar("T")

OWNER = common_pb2.Actor(user_id="u-owner", username="owner", role="user")
OTHER = common_pb2.Actor(user_id="u-other", username="other", role="user")
ADMIN = common_pb2.Actor(user_id="u-admin", username="admin", role="admin")
ANON = common_pb2.Actor()


@dataclass
class Gallery:
    stub: gallery_pb2_grpc.GalleryAsyncStub
    service: GalleryService
    store: BlobStore
    pool: asyncpg.Pool
    settings: GallerySettings


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def pillow_limit() -> Iterator[None]:
    # The service sets Pillow's process-wide bomb limit; give other test modules theirs back.
    before = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = before


async def start_gallery(
    postgres_url: str, tmp: Path, store_kind: str, s3_endpoint: str, name: str
) -> AsyncIterator[Gallery]:
    extra: dict[str, Any] = {"blob_dir": str(tmp / "blobs")}
    if store_kind == "s3":
        extra = {
            "s3_endpoint": f"http://{s3_endpoint}",
            "s3_access_key": "testing",
            "s3_secret_key": "testing",
            "s3_bucket": name.replace("_", "-"),
            "s3_region": "us-east-1",
        }
    settings = GallerySettings(
        database_url=await new_database(postgres_url, name),
        grpc_port=0,
        metrics_port=0,
        gallery_max_upload_bytes=512 * 1024,
        gallery_thumb_size=64,
        gallery_read_chunk_bytes=16 * 1024,
        db_pool_max=5,
        **extra,
    )
    async with open_gallery(settings) as service:
        server = GrpcServer("gallery", settings)
        server.add(gallery_pb2_grpc.add_GalleryServicer_to_server, service, "easel.gallery.v1.Gallery")
        port = await server.start()
        ch = channel(f"127.0.0.1:{port}", "gallery", 10.0)
        try:
            yield Gallery(gallery_pb2_grpc.GalleryStub(ch), service, service.store, service.pool, settings)  # type: ignore[arg-type]
        finally:
            await ch.close()
            await server.server.stop(0)


@pytest.fixture(scope="module", params=["fs", "s3"])
async def any_store(
    request: pytest.FixtureRequest,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
    pillow_limit: None,
) -> AsyncIterator[Gallery]:
    tmp = tmp_path_factory.mktemp(f"gallery-{request.param}")
    name = f"gallery_{request.param}_{random.randbytes(4).hex()}"
    async for g in start_gallery(postgres_url, tmp, request.param, s3_endpoint, name):
        yield g


@pytest.fixture(scope="module")
async def gallery(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, pillow_limit: None
) -> AsyncIterator[Gallery]:
    tmp = tmp_path_factory.mktemp("gallery-main")
    async for g in start_gallery(
        postgres_url, tmp, "fs", s3_endpoint, f"gallery_main_{random.randbytes(4).hex()}"
    ):
        yield g


def png(seed: int | str, size: tuple[int, int] = (24, 16)) -> bytes:
    rnd = random.Random(str(seed))
    im = Image.frombytes("RGB", size, rnd.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


async def call(coro: Awaitable[T]) -> T:
    with user_errors("gallery"):
        return await coro


async def error_of(coro: Awaitable[Any]) -> EaselError:
    with pytest.raises(EaselError) as exc:
        await call(coro)
    return exc.value


async def add(
    g: Gallery, job: str, images: list[bytes], owner: str = "u-owner", prompt: str = "a red fox"
) -> list[gallery_pb2.Image]:
    response = await call(
        g.stub.AddImages(
            gallery_pb2.AddImagesRequest(
                job_id=job,
                owner_id=owner,
                owner_username=owner.removeprefix("u-"),
                images=[
                    gallery_pb2.NewImage(
                        index=i, png=data, params_json=f'{{"prompt": "{prompt}", "seed": {i}}}'
                    )
                    for i, data in enumerate(images)
                ],
            )
        )
    )
    return list(response.images)


async def read(
    g: Gallery, image_id: str, actor: common_pb2.Actor = OWNER, size: str = "", token: str = ""
) -> tuple[bytes, list[gallery_pb2.ImageChunk]]:
    chunks: list[gallery_pb2.ImageChunk] = []
    with user_errors("gallery"):
        request = gallery_pb2.ReadImageRequest(actor=actor, image_id=image_id, size=size, share_token=token)
        async for chunk in g.stub.ReadImage(request):
            chunks.append(chunk)
    return b"".join(c.data for c in chunks), chunks


async def keys_for(g: Gallery, sha: str) -> list[str]:
    return [k for k in await g.store.list_keys() if sha in k]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- store-level behaviour, against both stores ------------------------------------------------------


async def test_redelivered_job_adds_nothing_new(any_store: Gallery, unique: str) -> None:
    g = any_store
    first = await add(g, f"job-{unique}", [png(f"{unique}-0"), png(f"{unique}-1")])
    assert [img.index for img in first] == [0, 1]
    assert all(img.kind == "generated" and img.visibility == "private" for img in first)
    keys_before = await g.store.list_keys()
    # A worker that died after writing redelivers; its second run may even render different bytes.
    again = await add(g, f"job-{unique}", [png(f"{unique}-0-rerun"), png(f"{unique}-1")])
    assert [(i.id, i.etag) for i in again] == [(i.id, i.etag) for i in first]
    assert await g.store.list_keys() == keys_before
    count = await g.pool.fetchval("SELECT count(*) FROM images WHERE job_id = $1", f"job-{unique}")
    assert count == 2
    # A partial redelivery plus a new index adds only the new one.
    more = await add(g, f"job-{unique}", [png(f"{unique}-0"), png(f"{unique}-1"), png(f"{unique}-2")])
    assert [i.id for i in more[:2]] == [i.id for i in first] and more[2].index == 2
    assert len(await g.store.list_keys()) == len(keys_before) + 2


async def test_same_bytes_stored_once_and_deleted_with_the_last_reference(
    any_store: Gallery, unique: str
) -> None:
    g = any_store
    data = png(f"shared-{unique}", (40, 30))
    (a,) = await add(g, f"a-{unique}", [data])
    (b,) = await add(g, f"b-{unique}", [data], owner="u-other")
    assert a.id != b.id and a.etag == b.etag
    assert sorted(await keys_for(g, a.etag)) == [
        f"sha256/{a.etag[:2]}/{a.etag}.png",
        f"thumb/{a.etag[:2]}/{a.etag}.webp",
    ]
    await call(g.stub.DeleteImage(gallery_pb2.DeleteImageRequest(actor=OWNER, image_id=a.id)))
    assert len(await keys_for(g, a.etag)) == 2  # the other record still needs them
    body, _ = await read(g, b.id, OTHER)
    assert body == data
    await call(g.stub.DeleteImage(gallery_pb2.DeleteImageRequest(actor=OTHER, image_id=b.id)))
    assert await keys_for(g, a.etag) == []
    assert await g.pool.fetchval("SELECT count(*) FROM blobs WHERE sha256 = $1", a.etag) == 0
    err = await error_of(g.stub.GetImage(gallery_pb2.GetImageRequest(actor=OTHER, image_id=b.id)))
    assert err.code == "image_not_found" and err.status == grpc.StatusCode.NOT_FOUND
    # Stored again after all references went: the bytes come back.
    (c,) = await add(g, f"c-{unique}", [data])
    assert (await read(g, c.id))[0] == data


async def test_read_image_streams_original_and_thumbnail(any_store: Gallery, unique: str) -> None:
    g = any_store
    data = png(f"big-{unique}", (160, 120))  # ~57 KB of noise: several 16 KiB chunks
    (img,) = await add(g, f"read-{unique}", [data])
    reads_before = metric("easel_gallery_reads_total", size="thumb")
    body, chunks = await read(g, img.id)
    assert body == data and len(chunks) >= 3
    assert (chunks[0].content_type, chunks[0].etag, chunks[0].total_size) == (
        "image/png",
        img.etag,
        len(data),
    )
    assert all(not c.content_type for c in chunks[1:])
    thumb, tchunks = await read(g, img.id, size="thumb")
    assert tchunks[0].content_type == "image/webp" and tchunks[0].total_size == len(thumb)
    im = Image.open(io.BytesIO(thumb))
    assert im.format == "WEBP" and max(im.size) == 64
    assert metric("easel_gallery_reads_total", size="thumb") == reads_before + 1
    err = await error_of(read(g, img.id, size="huge"))
    assert err.code == "invalid_size"


async def test_upload_is_checked_and_stored(any_store: Gallery, unique: str) -> None:
    g = any_store
    actor = common_pb2.Actor(user_id=f"u-up-{unique}", username="uploader", role="user")
    keys_before = await g.store.list_keys()

    async def upload_error(data: bytes) -> str:
        request = gallery_pb2.UploadImageRequest(actor=actor, data=data, filename="x.png", purpose="init")
        err = await error_of(g.stub.UploadImage(request))
        assert err.status == grpc.StatusCode.INVALID_ARGUMENT
        return err.code

    assert await upload_error(png_header(60_000, 60_000)) == "decompression_bomb"
    assert await upload_error(b"#!/bin/sh\necho this is a script, not a picture\n") == "not_an_image"
    assert await upload_error(random.randbytes(600 * 1024)) == "image_too_large"
    assert await upload_error(png_header(5000, 4000)) == "image_too_many_pixels"
    assert await upload_error(b"GIF89a" + b"\0" * 100) == "unsupported_image_format"
    assert await g.store.list_keys() == keys_before
    assert await g.pool.fetchval("SELECT count(*) FROM images WHERE owner_id = $1", actor.user_id) == 0

    jpeg = io.BytesIO()
    Image.new("RGB", (30, 20), "red").save(jpeg, "JPEG", exif=b"Exif\0\0MM\0*\0\0\0\x08\0\0")
    image = await call(
        g.stub.UploadImage(
            gallery_pb2.UploadImageRequest(actor=actor, data=jpeg.getvalue(), filename="../../photo.jpg")
        )
    )
    assert (image.kind, image.content_type, image.width, image.height) == ("upload", "image/png", 30, 20)
    assert image.title == "photo.jpg" and image.owner_id == actor.user_id and not image.job_id
    body, _ = await read(g, image.id, actor)
    assert Image.open(io.BytesIO(body)).format == "PNG"
    anon = await error_of(
        g.stub.UploadImage(gallery_pb2.UploadImageRequest(actor=ANON, data=jpeg.getvalue()))
    )
    assert anon.code == "sign_in_required"


# -- permissions, listings and community features (folder store) ------------------------------------


async def test_visibility_matrix(gallery: Gallery, unique: str) -> None:
    g = gallery
    private, unlisted, public, revoked = await add(
        g, f"vis-{unique}", [png(f"v{unique}{i}") for i in range(4)]
    )
    link = await call(
        g.stub.CreateShareLink(gallery_pb2.CreateShareLinkRequest(actor=OWNER, image_id=unlisted.id))
    )
    # Sharing a private image makes it unlisted; the owner can make it private again, and then the
    # link must stop working.
    private_link = await call(
        g.stub.CreateShareLink(gallery_pb2.CreateShareLinkRequest(actor=OWNER, image_id=private.id))
    )
    await call(
        g.stub.UpdateImage(
            gallery_pb2.UpdateImageRequest(actor=OWNER, image_id=private.id, visibility="private")
        )
    )
    await call(
        g.stub.UpdateImage(
            gallery_pb2.UpdateImageRequest(actor=OWNER, image_id=public.id, visibility="public")
        )
    )
    revoked_link = await call(
        g.stub.CreateShareLink(gallery_pb2.CreateShareLinkRequest(actor=OWNER, image_id=revoked.id))
    )
    await call(
        g.stub.RevokeShareLink(
            gallery_pb2.RevokeShareLinkRequest(actor=OWNER, image_id=revoked.id, token=revoked_link.token)
        )
    )
    tokens = {
        private.id: private_link.token,
        unlisted.id: link.token,
        public.id: "",
        revoked.id: revoked_link.token,
    }

    async def visible(actor: common_pb2.Actor, image: gallery_pb2.Image, with_token: bool) -> bool:
        token = tokens[image.id] if with_token else ""
        try:
            got = await call(
                g.stub.GetImage(
                    gallery_pb2.GetImageRequest(actor=actor, image_id=image.id, share_token=token)
                )
            )
        except EaselError as exc:
            assert (exc.code, exc.status) == ("image_not_found", grpc.StatusCode.NOT_FOUND)
            # ReadImage answers exactly as GetImage does.
            assert (await error_of(read(g, image.id, actor, "thumb", token))).code == "image_not_found"
            return False
        assert got.id == image.id
        body, _ = await read(g, image.id, actor, "thumb", token)
        assert body
        return True

    viewers = {
        "owner": (OWNER, False),
        "other user": (OTHER, False),
        "anonymous": (ANON, False),
        "share-link holder": (ANON, True),
        "signed-in share-link holder": (OTHER, True),
        "admin": (ADMIN, False),
    }
    images = {"private": private, "unlisted": unlisted, "public": public, "unlisted, link revoked": revoked}
    answers = {
        who: {what: await visible(actor, image, tok) for what, image in images.items()}
        for who, (actor, tok) in viewers.items()
    }
    y, n = True, False
    assert answers == {
        "owner": {"private": y, "unlisted": y, "public": y, "unlisted, link revoked": y},
        "other user": {"private": n, "unlisted": n, "public": y, "unlisted, link revoked": n},
        "anonymous": {"private": n, "unlisted": n, "public": y, "unlisted, link revoked": n},
        "share-link holder": {"private": n, "unlisted": y, "public": y, "unlisted, link revoked": n},
        "signed-in share-link holder": {
            "private": n,
            "unlisted": y,
            "public": y,
            "unlisted, link revoked": n,
        },
        "admin": {"private": y, "unlisted": y, "public": y, "unlisted, link revoked": y},
    }
    # A token opens only its own image.
    wrong = await error_of(
        g.stub.GetImage(gallery_pb2.GetImageRequest(actor=ANON, image_id=revoked.id, share_token=link.token))
    )
    assert wrong.code == "image_not_found"
    resolved = await call(g.stub.ResolveShareLink(gallery_pb2.ResolveShareLinkRequest(token=link.token)))
    assert resolved.id == unlisted.id and resolved.visibility == "unlisted"
    for dead in (private_link.token, revoked_link.token, "made-up-token"):
        err = await error_of(g.stub.ResolveShareLink(gallery_pb2.ResolveShareLinkRequest(token=dead)))
        assert err.code == "share_link_not_found"
    community = await call(g.stub.ListPublic(gallery_pb2.ListPublicRequest(actor=ANON, limit=100)))
    listed = {i.id for i in community.items}
    assert public.id in listed and not listed & {private.id, unlisted.id, revoked.id}


async def test_only_owner_or_admin_changes_an_image(gallery: Gallery, unique: str) -> None:
    g = gallery
    mine, public = await add(g, f"perm-{unique}", [png(f"p{unique}a"), png(f"p{unique}b")])
    await call(
        g.stub.UpdateImage(
            gallery_pb2.UpdateImageRequest(actor=OWNER, image_id=public.id, visibility="public")
        )
    )
    update = gallery_pb2.UpdateImageRequest(actor=OTHER, image_id=public.id, title="mine now")
    assert (await error_of(g.stub.UpdateImage(update))).code == "not_image_owner"
    hidden_from_other = gallery_pb2.UpdateImageRequest(actor=OTHER, image_id=mine.id, title="x")
    assert (await error_of(g.stub.UpdateImage(hidden_from_other))).code == "image_not_found"
    delete = gallery_pb2.DeleteImageRequest(actor=ANON, image_id=public.id)
    assert (await error_of(g.stub.DeleteImage(delete))).code == "not_image_owner"

    changed = await call(
        g.stub.UpdateImage(
            gallery_pb2.UpdateImageRequest(
                actor=OWNER,
                image_id=mine.id,
                title="  Fox at dawn ",
                set_tags=True,
                tags=["Fox", "#dawn", "fox", " "],
            )
        )
    )
    assert (changed.title, list(changed.tags), changed.visibility) == (
        "Fox at dawn",
        ["fox", "dawn"],
        "private",
    )
    bad = gallery_pb2.UpdateImageRequest(actor=OWNER, image_id=mine.id, visibility="friends")
    err = await error_of(g.stub.UpdateImage(bad))
    assert (err.code, err.field) == ("invalid_visibility", "visibility")
    too_many = gallery_pb2.UpdateImageRequest(
        actor=OWNER, image_id=mine.id, set_tags=True, tags=[str(i) for i in range(30)]
    )
    assert (await error_of(g.stub.UpdateImage(too_many))).code == "too_many_tags"
    # A refused update changed nothing.
    again = await call(g.stub.GetImage(gallery_pb2.GetImageRequest(actor=OWNER, image_id=mine.id)))
    assert (again.title, list(again.tags), again.visibility) == ("Fox at dawn", ["fox", "dawn"], "private")

    await call(g.stub.DeleteImage(gallery_pb2.DeleteImageRequest(actor=ADMIN, image_id=public.id)))
    assert await keys_for(g, public.etag) == []
    gone = await error_of(g.stub.DeleteImage(gallery_pb2.DeleteImageRequest(actor=OWNER, image_id=public.id)))
    assert gone.code == "image_not_found"


async def test_pagination_returns_every_image_once_while_new_ones_arrive(
    gallery: Gallery, unique: str
) -> None:
    g = gallery
    owner = f"u-pager-{unique}"
    actor = common_pb2.Actor(user_id=owner, username="pager", role="user")
    existing = await add(g, f"page-{unique}", [png(f"pg{unique}{i}", (8, 8)) for i in range(23)], owner=owner)
    expected = {i.id for i in existing}
    stop = asyncio.Event()
    added: list[str] = []

    async def keep_adding() -> None:
        n = 0
        while not stop.is_set():
            new = await add(g, f"page-new-{unique}-{n}", [png(f"new{unique}{n}", (8, 8))], owner=owner)
            added.extend(i.id for i in new)
            n += 1

    writer = asyncio.create_task(keep_adding())
    seen: list[str] = []
    cursor = ""
    pages = 0
    try:
        while True:
            page = await call(
                g.stub.ListImages(gallery_pb2.ListImagesRequest(actor=actor, limit=4, cursor=cursor))
            )
            seen.extend(i.id for i in page.items)
            pages += 1
            await asyncio.sleep(0.01)  # let the writer in between pages
            if not page.next_cursor:
                break
            cursor = page.next_cursor
    finally:
        stop.set()
        await writer
    assert added, "the writer never ran alongside the pager"
    assert len(seen) == len(set(seen)), "an image was returned twice"
    assert expected <= set(seen), "an image was skipped"
    assert set(seen) - expected <= set(added)
    assert pages >= 6
    # Newest first, and the next listing starts with what arrived meanwhile.
    first = await call(g.stub.ListImages(gallery_pb2.ListImagesRequest(actor=actor, limit=1)))
    assert first.items[0].id == added[-1]
    bad = await error_of(g.stub.ListImages(gallery_pb2.ListImagesRequest(actor=actor, cursor="garbage")))
    assert bad.code == "invalid_cursor"
    other_listing = await call(g.stub.ListPublic(gallery_pb2.ListPublicRequest(actor=actor, limit=1)))
    if other_listing.next_cursor:
        crossed = gallery_pb2.ListImagesRequest(actor=actor, cursor=other_listing.next_cursor)
        assert (await error_of(g.stub.ListImages(crossed))).code == "invalid_cursor"
    anon = await error_of(g.stub.ListImages(gallery_pb2.ListImagesRequest(actor=ANON)))
    assert anon.code == "sign_in_required"


async def test_likes_and_most_liked(gallery: Gallery, unique: str) -> None:
    g = gallery
    owner = f"u-liked-{unique}"
    imgs = await add(g, f"likes-{unique}", [png(f"l{unique}{i}", (8, 8)) for i in range(3)], owner=owner)
    owner_actor = common_pb2.Actor(user_id=owner, role="user")
    for img in imgs:
        await call(
            g.stub.UpdateImage(
                gallery_pb2.UpdateImageRequest(actor=owner_actor, image_id=img.id, visibility="public")
            )
        )
    fans = [common_pb2.Actor(user_id=f"fan-{unique}-{n}", role="user") for n in range(3)]
    for fan in fans:
        liked = await call(g.stub.Like(gallery_pb2.LikeRequest(actor=fan, image_id=imgs[1].id)))
    await call(g.stub.Like(gallery_pb2.LikeRequest(actor=fans[0], image_id=imgs[2].id)))
    twice = await call(g.stub.Like(gallery_pb2.LikeRequest(actor=fans[0], image_id=imgs[1].id)))
    assert liked.like_count == 3 and twice.like_count == 3 and twice.liked_by_actor
    view = await call(g.stub.GetImage(gallery_pb2.GetImageRequest(actor=OTHER, image_id=imgs[1].id)))
    assert view.like_count == 3 and not view.liked_by_actor
    unliked = await call(g.stub.Unlike(gallery_pb2.LikeRequest(actor=fans[2], image_id=imgs[1].id)))
    assert unliked.like_count == 2 and not unliked.liked_by_actor

    order: list[str] = []
    cursor = ""
    while True:
        page = await call(
            g.stub.ListPublic(
                gallery_pb2.ListPublicRequest(actor=fans[0], order="most_liked", limit=2, cursor=cursor)
            )
        )
        order += [i.id for i in page.items]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert len(order) == len(set(order))
    mine = [i for i in order if i in {x.id for x in imgs}]
    assert mine == [imgs[1].id, imgs[2].id, imgs[0].id]
    anon = await error_of(g.stub.Like(gallery_pb2.LikeRequest(actor=ANON, image_id=imgs[0].id)))
    assert anon.code == "sign_in_required"
    bad = await error_of(g.stub.ListPublic(gallery_pb2.ListPublicRequest(order="random")))
    assert bad.code == "invalid_order"


async def test_search_over_prompt_title_and_tags(gallery: Gallery, unique: str) -> None:
    g = gallery
    word = f"zebra{unique}"
    a, b, c = await add(
        g, f"search-{unique}", [png(f"s{unique}{i}", (8, 8)) for i in range(3)], prompt=f"a {word} at sunset"
    )
    (d,) = await add(
        g, f"search-other-{unique}", [png(f"s{unique}d", (8, 8))], owner="u-other", prompt="a plain horse"
    )
    await call(
        g.stub.UpdateImage(gallery_pb2.UpdateImageRequest(actor=OWNER, image_id=a.id, visibility="public"))
    )
    await call(
        g.stub.UpdateImage(
            gallery_pb2.UpdateImageRequest(
                actor=OWNER, image_id=b.id, visibility="public", title=f"{word} portrait"
            )
        )
    )
    await call(
        g.stub.UpdateImage(
            gallery_pb2.UpdateImageRequest(
                actor=OTHER, image_id=d.id, visibility="public", set_tags=True, tags=[word]
            )
        )
    )

    async def search(
        actor: common_pb2.Actor, query: str, only_mine: bool = False, limit: int = 1
    ) -> list[str]:
        ids: list[str] = []
        cursor = ""
        while True:
            page = await call(
                g.stub.Search(
                    gallery_pb2.SearchRequest(
                        actor=actor, query=query, only_mine=only_mine, limit=limit, cursor=cursor
                    )
                )
            )
            ids += [i.id for i in page.items]
            if not page.next_cursor:
                return ids
            cursor = page.next_cursor

    anonymous = await search(ANON, word)
    assert len(anonymous) == len(set(anonymous)) == 3
    assert set(anonymous) == {a.id, b.id, d.id}  # c is private
    assert anonymous[0] == b.id  # a title match outranks a prompt match
    assert set(await search(OWNER, word, limit=10)) == {a.id, b.id, c.id, d.id}
    assert set(await search(OWNER, f"{word} sunset", only_mine=True)) == {a.id, b.id, c.id}
    assert await search(ANON, f"nothing{unique}") == []
    assert (
        await error_of(g.stub.Search(gallery_pb2.SearchRequest(actor=ANON, query="  ")))
    ).code == "empty_query"


async def test_report_and_admin_hide(gallery: Gallery, unique: str) -> None:
    g = gallery
    (img,) = await add(g, f"mod-{unique}", [png(f"m{unique}", (8, 8))])
    await call(
        g.stub.UpdateImage(gallery_pb2.UpdateImageRequest(actor=OWNER, image_id=img.id, visibility="public"))
    )
    await call(g.stub.Report(gallery_pb2.ReportRequest(actor=OTHER, image_id=img.id, reason="spam")))
    assert (
        await g.pool.fetchval(
            "SELECT count(*) FROM reports WHERE image_id = $1::uuid AND resolved_at IS NULL", img.id
        )
        == 1
    )
    refused = await error_of(g.stub.Hide(gallery_pb2.HideRequest(actor=OTHER, image_id=img.id, hidden=True)))
    assert (refused.code, refused.status) == ("admin_required", grpc.StatusCode.PERMISSION_DENIED)
    hidden = await call(g.stub.Hide(gallery_pb2.HideRequest(actor=ADMIN, image_id=img.id, hidden=True)))
    assert hidden.hidden
    assert (
        await error_of(g.stub.GetImage(gallery_pb2.GetImageRequest(actor=OTHER, image_id=img.id)))
    ).code == "image_not_found"
    assert (await call(g.stub.GetImage(gallery_pb2.GetImageRequest(actor=OWNER, image_id=img.id)))).hidden
    community = await call(g.stub.ListPublic(gallery_pb2.ListPublicRequest(limit=100)))
    assert img.id not in {i.id for i in community.items}
    share = gallery_pb2.CreateShareLinkRequest(actor=OWNER, image_id=img.id)
    assert (await error_of(g.stub.CreateShareLink(share))).code == "image_hidden"
    assert (
        await g.pool.fetchval(
            "SELECT count(*) FROM reports WHERE image_id = $1::uuid AND resolved_at IS NULL", img.id
        )
        == 0
    )
    shown = await call(g.stub.Hide(gallery_pb2.HideRequest(actor=ADMIN, image_id=img.id, hidden=False)))
    assert not shown.hidden
    assert (
        await call(g.stub.GetImage(gallery_pb2.GetImageRequest(actor=OTHER, image_id=img.id)))
    ).id == img.id


async def test_bad_worker_requests_are_refused_whole(gallery: Gallery, unique: str) -> None:
    g = gallery

    async def add_error(images: list[gallery_pb2.NewImage], job: str = f"bad-{unique}") -> str:
        request = gallery_pb2.AddImagesRequest(job_id=job, owner_id="u-owner", images=images)
        return (await error_of(g.stub.AddImages(request))).code

    good = gallery_pb2.NewImage(index=0, png=png(f"bad{unique}", (8, 8)))
    assert await add_error([good, gallery_pb2.NewImage(index=1, png=b"not a png")]) == "not_a_png"
    assert (
        await add_error([good, gallery_pb2.NewImage(index=1, png=png_header(30_000, 30_000))])
        == "decompression_bomb"
    )
    assert (
        await add_error([gallery_pb2.NewImage(index=0, png=good.png, params_json="[1, 2]")])
        == "invalid_params_json"
    )
    assert await add_error([good, gallery_pb2.NewImage(index=0, png=good.png)]) == "invalid_image_index"
    assert await add_error([good], job="") == "missing_job_id"
    # Nothing of the refused calls was stored: the good image in them left no record.
    assert await g.pool.fetchval("SELECT count(*) FROM images WHERE job_id = $1", f"bad-{unique}") == 0
    missing = await error_of(g.stub.GetImage(gallery_pb2.GetImageRequest(actor=ADMIN, image_id="not-a-uuid")))
    assert missing.code == "image_not_found"


async def test_orphan_sweep_and_stats(gallery: Gallery, unique: str) -> None:
    g = gallery
    (img,) = await add(g, f"sweep-{unique}", [png(f"sw{unique}", (8, 8))])
    orphan = "sha256/00/" + "0" * 62 + "ff.png"
    await g.store.put(orphan, b"left behind by a failed delete", "image/png")
    removed = await g.service.content.sweep_orphans()
    assert removed == [orphan]
    assert len(await keys_for(g, img.etag)) == 2
    await g.service.refresh_stats()
    images = await g.pool.fetchval("SELECT count(*) FROM images")
    assert metric("easel_gallery_images_stored") == images > 0
    assert metric("easel_gallery_bytes_stored") > 0


async def test_concurrent_adds_and_deletes_of_the_same_bytes_leave_no_orphans_or_dangling(
    any_store: Gallery, unique: str
) -> None:
    g = any_store
    data = png(f"race-{unique}", (8, 8))
    (seed,) = await add(g, f"race-seed-{unique}", [data])
    live = [seed.id]
    for round_ in range(6):
        # Delete every live record while new records of the same bytes are being added.
        deletes = [
            call(g.stub.DeleteImage(gallery_pb2.DeleteImageRequest(actor=OWNER, image_id=i))) for i in live
        ]
        adds = [add(g, f"race-{unique}-{round_}-{n}", [data]) for n in range(2)]
        results = await asyncio.gather(*deletes, *adds)
        live = [img.id for batch in results[len(deletes) :] for img in batch]
        for image_id in live:
            body, _ = await read(g, image_id)
            assert body == data
    sha = seed.etag
    assert len(await keys_for(g, sha)) == 2
    for image_id in live:
        await call(g.stub.DeleteImage(gallery_pb2.DeleteImageRequest(actor=OWNER, image_id=image_id)))
    assert await keys_for(g, sha) == []
    assert await g.pool.fetchval("SELECT count(*) FROM blobs WHERE sha256 = $1", sha) == 0
