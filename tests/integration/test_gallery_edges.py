"""Gallery edge cases from the second security round: deleting an image others like, report or share;
share links that must stay dead; NUL characters refused by the store itself; masks kept out of listings.

Real gRPC, a real Postgres, the folder blob store (the store-level behaviour is covered for both stores
in test_gallery_service.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2
from services.common.errors import EaselError
from tests.integration.test_gallery_service import (
    ANON,
    OWNER,
    Gallery,
    add,
    call,
    error_of,
    png,
    start_gallery,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
async def gallery(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gallery]:
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    tmp = tmp_path_factory.mktemp("gallery-edges")
    name = f"gallery_edges_{random.randbytes(4).hex()}"
    async for g in start_gallery(postgres_url, tmp, "fs", "", name):
        yield g
    Image.MAX_IMAGE_PIXELS = before


def fan(unique: str, n: int) -> common_pb2.Actor:
    return common_pb2.Actor(user_id=f"fan-{unique}-{n}", username=f"fan{n}", role="user")


async def publish(g: Gallery, image_id: str, visibility: str = "public") -> gallery_pb2.Image:
    return await call(
        g.stub.UpdateImage(
            gallery_pb2.UpdateImageRequest(actor=OWNER, image_id=image_id, visibility=visibility)
        )
    )


async def share(g: Gallery, image_id: str) -> str:
    link = await call(
        g.stub.CreateShareLink(gallery_pb2.CreateShareLinkRequest(actor=OWNER, image_id=image_id))
    )
    return str(link.token)


async def resolves(g: Gallery, token: str) -> bool:
    try:
        await call(g.stub.ResolveShareLink(gallery_pb2.ResolveShareLinkRequest(token=token)))
    except EaselError as exc:
        assert exc.code == "share_link_not_found", exc
        return False
    return True


async def readable_with(g: Gallery, image_id: str, token: str) -> bool:
    request = gallery_pb2.GetImageRequest(actor=ANON, image_id=image_id, share_token=token)
    try:
        await call(g.stub.GetImage(request))
    except EaselError as exc:
        assert exc.code == "image_not_found", exc
        return False
    return True


# --- finding 4: deleting an image that others like, report or share ---------------------------------


async def test_delete_an_image_that_others_like_report_and_share(gallery: Gallery, unique: str) -> None:
    g = gallery
    (img,) = await add(g, f"del-{unique}", [png(f"d{unique}", (8, 8))])
    await publish(g, img.id)
    for n in range(3):
        await call(g.stub.Like(gallery_pb2.LikeRequest(actor=fan(unique, n), image_id=img.id)))
        await call(
            g.stub.Report(gallery_pb2.ReportRequest(actor=fan(unique, n), image_id=img.id, reason="x"))
        )
    await share(g, img.id)
    await call(g.stub.DeleteImage(gallery_pb2.DeleteImageRequest(actor=OWNER, image_id=img.id)))
    for table in ("likes", "reports", "share_links"):
        left = await g.pool.fetchval(f"SELECT count(*) FROM {table} WHERE image_id = $1::uuid", img.id)  # nosec B608
        assert left == 0, table


async def test_delete_racing_likes_reports_and_shares_never_fails_inside(
    gallery: Gallery, unique: str
) -> None:
    """Others like, report and share the image while its owner deletes it: every call answers either
    success or image_not_found, never an internal error (a foreign-key violation before the fix)."""
    g = gallery
    for round_ in range(8):
        (img,) = await add(g, f"race-{unique}-{round_}", [png(f"r{unique}{round_}", (8, 8))])
        await publish(g, img.id)
        calls: list[Any] = []
        for n in range(6):
            who = fan(unique, n)
            calls.append(g.stub.Like(gallery_pb2.LikeRequest(actor=who, image_id=img.id)))
            calls.append(g.stub.Report(gallery_pb2.ReportRequest(actor=who, image_id=img.id, reason="r")))
        calls += [
            g.stub.CreateShareLink(gallery_pb2.CreateShareLinkRequest(actor=OWNER, image_id=img.id))
            for _ in range(3)
        ]
        calls.insert(
            len(calls) // 2, g.stub.DeleteImage(gallery_pb2.DeleteImageRequest(actor=OWNER, image_id=img.id))
        )
        results = await asyncio.gather(*(call(c) for c in calls), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                assert isinstance(result, EaselError), repr(result)
                assert (result.code, result.status) == ("image_not_found", grpc.StatusCode.NOT_FOUND), result
        assert await g.pool.fetchval("SELECT count(*) FROM images WHERE id = $1::uuid", img.id) == 0
        for table in ("likes", "reports", "share_links"):
            left = await g.pool.fetchval(f"SELECT count(*) FROM {table} WHERE image_id = $1::uuid", img.id)  # nosec B608
            assert left == 0, table


# --- finding 5: old share links stay dead -----------------------------------------------------------


@pytest.mark.parametrize("again", ["share", "unlisted", "public"])
async def test_going_private_ends_old_share_links_for_good(gallery: Gallery, unique: str, again: str) -> None:
    g = gallery
    (img,) = await add(g, f"links-{again}-{unique}", [png(f"s{again}{unique}", (8, 8))])
    old = await share(g, img.id)
    assert await resolves(g, old) and await readable_with(g, img.id, old)
    await publish(g, img.id, "private")
    assert not await resolves(g, old)
    new = ""
    if again == "share":
        new = await share(g, img.id)
    else:
        await publish(g, img.id, again)
    assert not await resolves(g, old), f"the old link came back after {again}"
    if again != "public":  # a public image is readable by anyone, link or not
        assert not await readable_with(g, img.id, old)
    if new:
        assert await resolves(g, new) and await readable_with(g, img.id, new)


# --- defence in depth: the store refuses NUL characters ---------------------------------------------


async def test_nul_characters_are_refused_by_the_gallery(gallery: Gallery, unique: str) -> None:
    g = gallery
    (img,) = await add(g, f"nul-{unique}", [png(f"n{unique}", (8, 8))])
    await publish(g, img.id)
    requests: list[tuple[Any, str]] = [
        (
            g.stub.UpdateImage(gallery_pb2.UpdateImageRequest(actor=OWNER, image_id=img.id, title="a\x00b")),
            "title",
        ),
        (
            g.stub.UpdateImage(
                gallery_pb2.UpdateImageRequest(
                    actor=OWNER, image_id=img.id, tags=["ok", "b\x00d"], set_tags=True
                )
            ),
            "tags",
        ),
        (
            g.stub.Report(gallery_pb2.ReportRequest(actor=fan(unique, 0), image_id=img.id, reason="\x00")),
            "reason",
        ),
        (g.stub.Search(gallery_pb2.SearchRequest(actor=OWNER, query="fox\x00"), timeout=10), "query"),
        (
            g.stub.UploadImage(
                gallery_pb2.UploadImageRequest(
                    actor=OWNER, data=png(f"u{unique}", (8, 8)), filename="a\x00.png"
                )
            ),
            "filename",
        ),
        (
            g.stub.AddImages(
                gallery_pb2.AddImagesRequest(
                    job_id=f"nul-job-{unique}",
                    owner_id="u-owner",
                    owner_username="own\x00er",
                    images=[gallery_pb2.NewImage(index=0, png=png(f"j{unique}", (8, 8)))],
                )
            ),
            "owner_username",
        ),
        (
            g.stub.AddImages(
                gallery_pb2.AddImagesRequest(
                    job_id=f"nul\x00job-{unique}",
                    owner_id="u-owner",
                    images=[gallery_pb2.NewImage(index=0, png=png(f"k{unique}", (8, 8)))],
                )
            ),
            "job_id",
        ),
    ]
    for request, field in requests:
        error = await error_of(request)
        assert (error.code, error.field, error.status) == (
            "invalid_field",
            field,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), error
    # Nothing was written by the refused calls.
    again = await call(g.stub.GetImage(gallery_pb2.GetImageRequest(actor=OWNER, image_id=img.id)))
    assert again.title == "" and list(again.tags) == []


# --- masks stay out of the default listing ----------------------------------------------------------


async def test_default_listing_leaves_out_masks(gallery: Gallery, unique: str) -> None:
    g = gallery
    actor = common_pb2.Actor(user_id=f"u-masks-{unique}", username="masks", role="user")
    (made,) = await add(g, f"masks-{unique}", [png(f"mm{unique}", (8, 8))], owner=actor.user_id)
    init = await call(
        g.stub.UploadImage(
            gallery_pb2.UploadImageRequest(actor=actor, data=png(f"i{unique}", (8, 8)), purpose="init")
        )
    )
    mask = await call(
        g.stub.UploadImage(
            gallery_pb2.UploadImageRequest(actor=actor, data=png(f"m{unique}", (8, 8)), purpose="mask")
        )
    )
    listed = await call(g.stub.ListImages(gallery_pb2.ListImagesRequest(actor=actor, limit=50)))
    ids = {i.id for i in listed.items}
    assert made.id in ids and init.id in ids
    assert mask.id not in ids
    uploads = await call(
        g.stub.ListImages(gallery_pb2.ListImagesRequest(actor=actor, limit=50, kind="upload"))
    )
    assert mask.id in {i.id for i in uploads.items}  # asked for by kind: still there to find and delete
