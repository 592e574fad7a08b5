"""The easel.gallery.v1.Gallery gRPC service: image records, bytes, sharing, likes, search, moderation."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import secrets
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import asyncpg
import grpc
from google.protobuf.message import Message

from easel.gallery.v1 import gallery_pb2, gallery_pb2_grpc
from services.common import limits
from services.common.blobstore import BlobNotFoundError, BlobStore
from services.common.errors import EaselError, invalid, not_found, unavailable
from services.common.text import check_message

from . import cursor, metrics
from .access import (
    VISIBILITIES,
    Viewer,
    admin_required,
    can_change,
    can_view,
    image_not_found,
    not_image_owner,
    sign_in_required,
)
from .content import ContentStore, NewRecord
from .imaging import (
    Limits,
    PreparedImage,
    check_upload_size,
    configure_pillow,
    prepare_generated,
    prepare_upload,
)
from .records import FROM_IMAGES, ImageRecord, image_columns, token_hash
from .settings import GallerySettings

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

MAX_IMAGES_PER_JOB = 64
MAX_PARAMS_BYTES = 64 * 1024
MAX_TITLE = limits.TITLE_MAX_CHARS
MAX_TAGS = limits.TAGS_MAX
MAX_TAG = limits.TAG_MAX_CHARS
MAX_REASON = limits.REASON_MAX_CHARS
MAX_QUERY = limits.SEARCH_MAX_CHARS
PURPOSES = ("init", "mask")
KINDS = limits.IMAGE_KINDS


def _clean_text(value: str) -> str:
    """Drops control characters (they break logs and layouts) and surrounding space."""
    return "".join(c for c in value if unicodedata.category(c) != "Cc").strip()


def _params(text: str) -> str:
    if not text.strip():
        return "{}"

    def no_constants(name: str) -> float:
        raise ValueError(name)

    try:
        value = json.loads(text, parse_constant=no_constants)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise invalid(
            "invalid_params_json",
            'params_json must be a JSON object such as {"prompt": "..."}.',
            "params_json",
        )
    normal = json.dumps(value, ensure_ascii=False)
    if len(normal.encode()) > MAX_PARAMS_BYTES:
        raise invalid(
            "params_too_large", f"params_json may be at most {MAX_PARAMS_BYTES} bytes.", "params_json"
        )
    if "\\u0000" in normal:  # Postgres jsonb cannot hold NUL characters
        raise invalid("invalid_params_json", "params_json must not contain NUL characters.", "params_json")
    return normal


def _tags(values: list[str]) -> list[str]:
    out: list[str] = []
    for raw in values:
        tag = " ".join(_clean_text(raw).lower().split()).lstrip("#")
        if not tag:
            continue
        if len(tag) > MAX_TAG:
            raise invalid(
                "tag_too_long", f"Tags may be at most {MAX_TAG} characters; shorten {tag[:20]!r}.", "tags"
            )
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise invalid("too_many_tags", f"An image may have at most {MAX_TAGS} tags; remove some.", "tags")
    return out


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


R = TypeVar("R")
Req = TypeVar("Req", bound=Message)


def text_checked(
    method: Callable[[Any, Req, Context], Awaitable[R]],
) -> Callable[[Any, Req, Context], Awaitable[R]]:
    """Refuses a request holding a NUL character in any string (400 invalid_field naming it) before
    the method runs: Postgres cannot store one. The gateway refuses them first; this is the store's
    own guard for any other caller."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Context) -> R:
        check_message(request)
        return await method(self, request, context)

    return wrapper


class GalleryService(gallery_pb2_grpc.GalleryServicer):
    def __init__(self, pool: asyncpg.Pool, store: BlobStore, settings: GallerySettings) -> None:
        self.pool = pool
        self.store = store
        self.settings = settings
        self.content = ContentStore(pool, store)
        self.limits = Limits(
            max_bytes=settings.gallery_max_upload_bytes,
            max_pixels=settings.gallery_max_upload_pixels,
            thumb_size=settings.gallery_thumb_size,
            thumb_quality=settings.gallery_thumb_quality,
        )
        configure_pillow(settings.gallery_max_upload_pixels)
        self._decoding = asyncio.Semaphore(settings.gallery_image_workers)

    # -- helpers --------------------------------------------------------------------------------

    async def _decode(self, fn: Callable[..., PreparedImage], *args: Any) -> PreparedImage:
        async with self._decoding:
            try:
                return await asyncio.to_thread(fn, *args)
            except EaselError as exc:
                metrics.REJECTED.labels(exc.code).inc()
                raise

    async def _fetch(self, image_id: str, viewer: Viewer, share_token: str = "") -> ImageRecord | None:
        iid = _uuid(image_id)
        if iid is None:
            return None
        row = await self.pool.fetchrow(
            f"SELECT {image_columns('$2', '$3')} {FROM_IMAGES} WHERE i.id = $1",
            iid,
            viewer.user_id,
            token_hash(share_token),
        )
        return ImageRecord.from_row(row) if row is not None else None

    async def _visible(self, image_id: str, viewer: Viewer, share_token: str = "") -> ImageRecord:
        record = await self._fetch(image_id, viewer, share_token)
        if record is None or not can_view(
            viewer, record.owner_id, record.visibility, record.hidden, record.via_share
        ):
            raise image_not_found()
        return record

    async def _changeable(self, image_id: str, viewer: Viewer) -> ImageRecord:
        record = await self._visible(image_id, viewer)
        if not can_change(viewer, record.owner_id):
            raise not_image_owner()
        return record

    async def _reload(self, image_id: uuid.UUID, viewer: Viewer) -> gallery_pb2.Image:
        record = await self._fetch(str(image_id), viewer)
        if record is None:  # deleted between the write and this read
            raise image_not_found()
        return record.to_proto()

    @staticmethod
    async def _lock_live(conn: Any, image_id: uuid.UUID, mode: str = "KEY SHARE") -> None:
        """Locks the image row for the rest of the transaction, or answers image_not_found when it
        is gone. Writes that point at an image (likes, reports, share links) take this first: between
        the visibility check and the insert the owner may have deleted it, and the insert would then
        break the foreign key; holding the lock makes a concurrent delete wait for this transaction
        (and its cascade then removes what was just written)."""
        if mode not in ("KEY SHARE", "NO KEY UPDATE"):
            raise ValueError(mode)
        found = await conn.fetchval(f"SELECT true FROM images WHERE id = $1 FOR {mode}", image_id)  # nosec B608
        if not found:
            raise image_not_found()

    def _limit(self, requested: int) -> int:
        if requested < 0:
            raise invalid("invalid_limit", "limit must be a positive number of items.", "limit")
        return min(requested or self.settings.gallery_page_size, self.settings.gallery_max_page_size)

    async def _page(
        self,
        listing: str,
        where: list[str],
        args: list[object],
        viewer: Viewer,
        limit: int,
        after: str,
        order: str = "newest",
        rank_query: str | None = None,
    ) -> gallery_pb2.ListImagesResponse:
        """One page of a keyset-paginated listing, newest (or most liked, or most relevant) first.
        `where` conditions refer to `args` as $3, $4, ...; $1 is the viewer (for liked_by_actor) and
        $2 the limit. The page asks for one row more than it returns, to know whether more follow."""
        params: list[object] = [viewer.user_id, limit + 1, *args]

        def arg(value: object, cast: str = "") -> str:
            params.append(value)
            return f"${len(params)}{cast}"

        conditions = list(where)
        rank = "0::float8"
        if rank_query is not None:
            tsquery = f"websearch_to_tsquery('english', {arg(rank_query, '::text')})"
            rank = f"ts_rank(i.document, {tsquery})::float8"
            conditions.append(f"i.document @@ {tsquery}")
        key_parts = ["i.created_at", "i.id"]
        lead_types: tuple[type, ...] = ()
        if order == "most_liked":
            key_parts.insert(0, "i.like_count")
            lead_types = (int,)
        elif order == "relevance":
            key_parts.insert(0, rank)
            lead_types = (float,)
        if after:
            values, last_id = cursor.decode_with_id(after, listing, (*lead_types, int))
            try:
                created = cursor.from_micros(int(str(values[-1])))
            except OverflowError:
                raise invalid(
                    "invalid_cursor",
                    "The page cursor is not valid for this listing; start again from the first page.",
                    "cursor",
                ) from None
            bound = [arg(v, "::float8" if order == "relevance" else "::bigint") for v in values[:-1]]
            bound += [arg(created, "::timestamptz"), arg(last_id, "::uuid")]
            conditions.append(f"({', '.join(key_parts)}) < ({', '.join(bound)})")
        sql = (
            f"SELECT {image_columns('$1')}, {rank} AS rank {FROM_IMAGES} "
            f"WHERE {' AND '.join(conditions) or 'true'} "
            f"ORDER BY {', '.join(part + ' DESC' for part in key_parts)} LIMIT $2"
        )
        rows = await self.pool.fetch(sql, *params)
        more = len(rows) > limit
        rows = rows[:limit]
        response = gallery_pb2.ListImagesResponse(items=[ImageRecord.from_row(r).to_proto() for r in rows])
        if more and rows:
            last = rows[-1]
            key: list[object] = []
            if order == "most_liked":
                key.append(int(last["like_count"]))
            elif order == "relevance":
                key.append(float(last["rank"]))
            key += [cursor.micros(last["created_at"]), str(last["id"])]
            response.next_cursor = cursor.encode(listing, key)
        return response

    # -- writes from workers and uploads ----------------------------------------------------------

    @text_checked
    async def AddImages(
        self, request: gallery_pb2.AddImagesRequest, context: Context
    ) -> gallery_pb2.AddImagesResponse:
        job_id = request.job_id.strip()
        owner_id = request.owner_id.strip()
        if not job_id:
            raise invalid("missing_job_id", "AddImages needs the job_id the images belong to.", "job_id")
        if not owner_id:
            raise invalid("missing_owner", "AddImages needs the owner_id of the job.", "owner_id")
        if not request.images:
            raise invalid("no_images", "AddImages needs at least one image.", "images")
        if len(request.images) > MAX_IMAGES_PER_JOB:
            raise invalid("too_many_images", f"At most {MAX_IMAGES_PER_JOB} images per call.", "images")
        indexes = [img.index for img in request.images]
        if len(set(indexes)) != len(indexes) or min(indexes) < 0:
            raise invalid("invalid_image_index", "Image indexes must be distinct and not negative.", "images")
        params = [_params(img.params_json) for img in request.images]

        existing = {
            row["idx"]
            for row in await self.pool.fetch(
                "SELECT idx FROM images WHERE job_id = $1 AND idx = ANY($2::int[])", job_id, indexes
            )
        }
        # Decode every new image before writing any, so a bad one leaves the job untouched.
        todo = [(img, p) for img, p in zip(request.images, params, strict=True) if img.index not in existing]
        prepared = [await self._decode(prepare_generated, img.png, self.limits) for img, _ in todo]
        metrics.REPLAYED.inc(len(existing))
        for (img, p), image in zip(todo, prepared, strict=True):
            await self.content.add(
                image,
                NewRecord(
                    owner_id=owner_id,
                    owner_username=request.owner_username,
                    kind="generated",
                    job_id=job_id,
                    index=img.index,
                    params_json=p,
                ),
            )
        rows = await self.pool.fetch(
            f"SELECT {image_columns('$3')} {FROM_IMAGES} WHERE i.job_id = $1 AND i.idx = ANY($2::int[])",
            job_id,
            indexes,
            owner_id,
        )
        by_index = {row["idx"]: ImageRecord.from_row(row).to_proto() for row in rows}
        return gallery_pb2.AddImagesResponse(images=[by_index[i] for i in indexes if i in by_index])

    @text_checked
    async def UploadImage(
        self, request: gallery_pb2.UploadImageRequest, context: Context
    ) -> gallery_pb2.Image:
        viewer = Viewer.of(request.actor)
        if not viewer.signed_in:
            raise sign_in_required("upload images")
        purpose = request.purpose.strip() or "init"
        if purpose not in PURPOSES:
            raise invalid("invalid_purpose", 'purpose must be "init" or "mask".', "purpose")
        try:
            # Checked before queueing for a decoding slot: an oversized upload is refused at once.
            check_upload_size(request.data, self.limits)
        except EaselError as exc:
            metrics.REJECTED.labels(exc.code).inc()
            raise
        image = await self._decode(prepare_upload, request.data, purpose, self.limits)
        title = _clean_text(request.filename.replace("\\", "/").rsplit("/", 1)[-1])[:MAX_TITLE]
        image_id = await self.content.add(
            image,
            NewRecord(
                owner_id=viewer.user_id,
                owner_username=viewer.username,
                kind="upload",
                purpose=purpose,
                params_json="{}",
                title=title,
            ),
        )
        if image_id is None:  # uploads have no job id, so they never collide; this is a bug if seen
            raise RuntimeError("an upload collided with an existing (job_id, index)")
        return await self._reload(image_id, viewer)

    # -- reads --------------------------------------------------------------------------------------

    @text_checked
    async def GetImage(self, request: gallery_pb2.GetImageRequest, context: Context) -> gallery_pb2.Image:
        viewer = Viewer.of(request.actor)
        return (await self._visible(request.image_id, viewer, request.share_token)).to_proto()

    async def ReadImage(
        self, request: gallery_pb2.ReadImageRequest, context: Context
    ) -> AsyncIterator[gallery_pb2.ImageChunk]:
        size = request.size.strip() or "original"
        if size not in ("original", "thumb"):
            raise invalid("invalid_size", 'size must be "original" or "thumb".', "size")
        viewer = Viewer.of(request.actor)
        record = await self._visible(request.image_id, viewer, request.share_token)
        if size == "thumb":
            key, content_type, total = record.thumb_key, "image/webp", record.thumb_bytes
            etag = f"{record.sha256}-thumb"
        else:
            key, content_type, total = record.object_key, record.content_type, record.size_bytes
            etag = record.sha256
        metrics.READS.labels(size).inc()
        first = True
        chunks = self.store.iter_chunks(key, self.settings.gallery_read_chunk_bytes)
        try:
            # aclosing: a reader that hangs up releases the file or S3 connection at once, not at GC.
            async with contextlib.aclosing(chunks):
                async for data in chunks:
                    metrics.READ_BYTES.labels(size).inc(len(data))
                    if first:
                        first = False
                        yield gallery_pb2.ImageChunk(
                            data=data, content_type=content_type, etag=etag, total_size=total
                        )
                    else:
                        yield gallery_pb2.ImageChunk(data=data)
        except BlobNotFoundError:
            # Deleted between the lookup and the read: an ordinary race, answered as a missing image.
            if await self._fetch(str(record.id), viewer) is None:
                raise image_not_found() from None
            log.error("image bytes missing from the store", extra={"image_id": str(record.id), "key": key})
            raise unavailable(
                "image_unavailable", "The image file cannot be read right now; try again later."
            ) from None
        if first:  # an empty object still answers with its headers
            yield gallery_pb2.ImageChunk(content_type=content_type, etag=etag, total_size=total)

    @text_checked
    async def ListImages(
        self, request: gallery_pb2.ListImagesRequest, context: Context
    ) -> gallery_pb2.ListImagesResponse:
        viewer = Viewer.of(request.actor)
        if not viewer.signed_in:
            raise sign_in_required("see your images")
        kind = request.kind.strip()
        if kind and kind not in KINDS:
            raise invalid("invalid_kind", 'kind must be empty, "generated" or "upload".', "kind")
        where = ["i.owner_id = $3"]
        args: list[object] = [viewer.user_id]
        if kind:
            where.append("i.kind = $4")
            args.append(kind)
        else:
            # Masks are inputs of inpainting jobs, not pictures: the default listing leaves them
            # out; asking for kind "upload" still finds them (to delete them).
            where.append("i.purpose <> 'mask'")
        return await self._page(
            f"mine:{kind}", where, args, viewer, self._limit(request.limit), request.cursor
        )

    @text_checked
    async def ListPublic(
        self, request: gallery_pb2.ListPublicRequest, context: Context
    ) -> gallery_pb2.ListImagesResponse:
        viewer = Viewer.of(request.actor)
        order = request.order.strip() or "newest"
        if order not in ("newest", "most_liked"):
            raise invalid("invalid_order", 'order must be "newest" or "most_liked".', "order")
        return await self._page(
            f"public:{order}",
            ["i.visibility = 'public'", "NOT i.hidden"],
            [],
            viewer,
            self._limit(request.limit),
            request.cursor,
            order=order,
        )

    @text_checked
    async def Search(
        self, request: gallery_pb2.SearchRequest, context: Context
    ) -> gallery_pb2.ListImagesResponse:
        viewer = Viewer.of(request.actor)
        query = " ".join(_clean_text(request.query).split())
        if not query:
            raise invalid("empty_query", "Type a few words to search for.", "query")
        if len(query) > MAX_QUERY:
            raise invalid("query_too_long", f"Search for at most {MAX_QUERY} characters.", "query")
        args: list[object] = []
        if request.only_mine:
            if not viewer.signed_in:
                raise sign_in_required("search your images")
            where, args = ["i.owner_id = $3"], [viewer.user_id]
        elif viewer.signed_in:
            where = ["((i.visibility = 'public' AND NOT i.hidden) OR i.owner_id = $3)"]
            args = [viewer.user_id]
        else:
            where = ["i.visibility = 'public'", "NOT i.hidden"]
        # The cursor names the query by a short hash: it stays small and only works for this query.
        digest = hashlib.sha256(query.encode()).hexdigest()[:16]
        listing = f"search:{int(request.only_mine)}:{digest}"
        return await self._page(
            listing,
            where,
            args,
            viewer,
            self._limit(request.limit),
            request.cursor,
            order="relevance",
            rank_query=query,
        )

    # -- owner actions ------------------------------------------------------------------------------

    @text_checked
    async def UpdateImage(
        self, request: gallery_pb2.UpdateImageRequest, context: Context
    ) -> gallery_pb2.Image:
        viewer = Viewer.of(request.actor)
        record = await self._changeable(request.image_id, viewer)
        sets: list[str] = []
        args: list[object] = [record.id]
        if request.HasField("visibility"):
            visibility = request.visibility.strip().lower()
            if visibility not in VISIBILITIES:
                raise invalid(
                    "invalid_visibility", "visibility must be private, unlisted or public.", "visibility"
                )
            args.append(visibility)
            sets.append(f"visibility = ${len(args)}")
        if request.HasField("title"):
            title = _clean_text(request.title)
            if len(title) > MAX_TITLE:
                raise invalid("title_too_long", f"Titles may be at most {MAX_TITLE} characters.", "title")
            args.append(title)
            sets.append(f"title = ${len(args)}")
        if request.set_tags:
            args.append(_tags(list(request.tags)))
            sets.append(f"tags = ${len(args)}")
        if sets:
            # Only constant column names and placeholder numbers go into the text; values are arguments.
            sql = f"UPDATE images SET {', '.join(sets)}, updated_at = clock_timestamp() WHERE id = $1"  # nosec B608
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(sql, *args)
                if request.HasField("visibility") and args[1] == "private":
                    # Going private ends every link for good: sharing again, or going unlisted or
                    # public later, must not bring back links the owner meant to stop.
                    await conn.execute(
                        "UPDATE share_links SET revoked_at = now() "
                        "WHERE image_id = $1 AND revoked_at IS NULL",
                        record.id,
                    )
        return await self._reload(record.id, viewer)

    @text_checked
    async def DeleteImage(
        self, request: gallery_pb2.DeleteImageRequest, context: Context
    ) -> gallery_pb2.DeleteImageResponse:
        viewer = Viewer.of(request.actor)
        record = await self._changeable(request.image_id, viewer)
        if not await self.content.delete(record.id):
            raise image_not_found()
        return gallery_pb2.DeleteImageResponse()

    @text_checked
    async def CreateShareLink(
        self, request: gallery_pb2.CreateShareLinkRequest, context: Context
    ) -> gallery_pb2.ShareLink:
        viewer = Viewer.of(request.actor)
        record = await self._changeable(request.image_id, viewer)
        if record.hidden:
            raise EaselError(
                "image_hidden",
                "A moderator hid this image, so it cannot be shared; contact an administrator.",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        token = secrets.token_urlsafe(24)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._lock_live(conn, record.id, "NO KEY UPDATE")
            created = await conn.fetchval(
                "INSERT INTO share_links (token_hash, image_id, created_by) VALUES ($1, $2, $3) "
                "RETURNING created_at",
                token_hash(token),
                record.id,
                viewer.user_id,
            )
            # Sharing is what the owner asked for: a private image becomes unlisted, so the link
            # works; a public one stays public.
            await conn.execute(
                "UPDATE images SET visibility = 'unlisted', updated_at = clock_timestamp() "
                "WHERE id = $1 AND visibility = 'private'",
                record.id,
            )
        link = gallery_pb2.ShareLink(token=token, image_id=str(record.id))
        link.created_at.FromDatetime(created)
        return link

    @text_checked
    async def RevokeShareLink(
        self, request: gallery_pb2.RevokeShareLinkRequest, context: Context
    ) -> gallery_pb2.RevokeShareLinkResponse:
        viewer = Viewer.of(request.actor)
        record = await self._changeable(request.image_id, viewer)
        if request.token:
            found = await self.pool.fetchval(
                "UPDATE share_links SET revoked_at = coalesce(revoked_at, now()) "
                "WHERE token_hash = $1 AND image_id = $2 RETURNING true",
                token_hash(request.token),
                record.id,
            )
            if not found:
                raise not_found("share_link_not_found", "No such share link for this image.")
        else:
            await self.pool.execute(
                "UPDATE share_links SET revoked_at = now() WHERE image_id = $1 AND revoked_at IS NULL",
                record.id,
            )
        return gallery_pb2.RevokeShareLinkResponse()

    @text_checked
    async def ResolveShareLink(
        self, request: gallery_pb2.ResolveShareLinkRequest, context: Context
    ) -> gallery_pb2.Image:
        missing = not_found(
            "share_link_not_found",
            "This share link does not work (any more); ask the owner of the image for a new one.",
        )
        if not request.token or len(request.token) > 200:
            raise missing
        image_id = await self.pool.fetchval(
            "SELECT image_id FROM share_links WHERE token_hash = $1 AND revoked_at IS NULL",
            token_hash(request.token),
        )
        if image_id is None:
            raise missing
        anonymous = Viewer("", "", False)
        record = await self._fetch(str(image_id), anonymous, request.token)
        if record is None or not can_view(anonymous, record.owner_id, record.visibility, record.hidden, True):
            raise missing
        return record.to_proto()

    # -- community ----------------------------------------------------------------------------------

    @text_checked
    async def Like(self, request: gallery_pb2.LikeRequest, context: Context) -> gallery_pb2.Image:
        return await self._like(request, like=True)

    @text_checked
    async def Unlike(self, request: gallery_pb2.LikeRequest, context: Context) -> gallery_pb2.Image:
        return await self._like(request, like=False)

    async def _like(self, request: gallery_pb2.LikeRequest, like: bool) -> gallery_pb2.Image:
        viewer = Viewer.of(request.actor)
        if not viewer.signed_in:
            raise sign_in_required("like images")
        record = await self._visible(request.image_id, viewer)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._lock_live(conn, record.id, "NO KEY UPDATE")
            if like:
                changed = await conn.fetchval(
                    "INSERT INTO likes (image_id, user_id) VALUES ($1, $2) "
                    "ON CONFLICT DO NOTHING RETURNING true",
                    record.id,
                    viewer.user_id,
                )
            else:
                changed = await conn.fetchval(
                    "DELETE FROM likes WHERE image_id = $1 AND user_id = $2 RETURNING true",
                    record.id,
                    viewer.user_id,
                )
            if changed:
                await conn.execute(
                    "UPDATE images SET like_count = like_count + $2 WHERE id = $1",
                    record.id,
                    1 if like else -1,
                )
        return await self._reload(record.id, viewer)

    @text_checked
    async def Report(
        self, request: gallery_pb2.ReportRequest, context: Context
    ) -> gallery_pb2.ReportResponse:
        viewer = Viewer.of(request.actor)
        if not viewer.signed_in:
            raise sign_in_required("report images")
        reason = _clean_text(request.reason)
        if len(reason) > MAX_REASON:
            raise invalid("reason_too_long", f"Say it in at most {MAX_REASON} characters.", "reason")
        record = await self._visible(request.image_id, viewer)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._lock_live(conn, record.id)
            await conn.execute(
                "INSERT INTO reports (image_id, reporter_id, reason) VALUES ($1, $2, $3) "
                "ON CONFLICT (image_id, reporter_id) DO UPDATE SET reason = EXCLUDED.reason, "
                "created_at = now(), resolved_at = NULL",
                record.id,
                viewer.user_id,
                reason,
            )
        return gallery_pb2.ReportResponse()

    @text_checked
    async def Hide(self, request: gallery_pb2.HideRequest, context: Context) -> gallery_pb2.Image:
        viewer = Viewer.of(request.actor)
        if not viewer.is_admin:
            # Do not tell a non-admin whether the id exists.
            if not viewer.signed_in:
                raise sign_in_required("moderate images")
            raise admin_required()
        record = await self._visible(request.image_id, viewer)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE images SET hidden = $2, updated_at = clock_timestamp() WHERE id = $1",
                record.id,
                request.hidden,
            )
            if request.hidden:
                await conn.execute(
                    "UPDATE reports SET resolved_at = now() WHERE image_id = $1 AND resolved_at IS NULL",
                    record.id,
                )
        return await self._reload(record.id, viewer)

    # -- housekeeping -------------------------------------------------------------------------------

    async def refresh_stats(self) -> None:
        images = await self.pool.fetchval("SELECT count(*) FROM images")
        blobs = await self.pool.fetchval("SELECT count(*) FROM blobs")
        size = await self.pool.fetchval("SELECT coalesce(sum(size_bytes + thumb_bytes), 0) FROM blobs")
        metrics.IMAGES_STORED.set(images)
        metrics.BLOBS_STORED.set(blobs)
        metrics.BYTES_STORED.set(float(size))

    async def run_stats(self) -> None:
        """Keeps the stored-images and stored-bytes gauges fresh until cancelled."""
        while True:
            try:
                await self.refresh_stats()
            except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
                log.warning("could not refresh gallery stats: %s", exc)
            interval = self.settings.gallery_stats_interval_s
            await asyncio.sleep(interval if math.isfinite(interval) else 60.0)
