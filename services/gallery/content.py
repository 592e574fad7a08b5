"""Content-addressed bytes shared between image records, without orphans or dangling records.

Invariant: a `blobs` row exists only while its bytes are in the object store. Adding writes the
bytes before the row commits; deleting removes the row (when its last record goes) before the
bytes. Both hold a Postgres advisory lock on the content hash for the whole sequence, so a delete
of the last reference and an add of the same bytes can never interleave. If the store fails after a
row is gone, the bytes stay behind as an orphan (never a record without bytes); `sweep_orphans`
removes those.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from services.common.blobstore import BlobStore

from . import metrics
from .imaging import PreparedImage

log = logging.getLogger(__name__)

# Advisory locks in the two-int4 key space, first key fixed, so they never meet the single-bigint
# locks (schema migrations) or another service's locks.
_LOCK_SPACE = 0x45474C59  # "EGLY"


def _lock_key(sha256: str) -> int:
    return int.from_bytes(bytes.fromhex(sha256[:8]), "big", signed=True)


@asynccontextmanager
async def content_lock(conn: PoolConnectionProxy[Record], sha256: str) -> AsyncIterator[None]:
    """Held across database and store work; a dropped connection releases it by itself."""
    await conn.execute("SELECT pg_advisory_lock($1::int, $2::int)", _LOCK_SPACE, _lock_key(sha256))
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1::int, $2::int)", _LOCK_SPACE, _lock_key(sha256))


@dataclass(frozen=True)
class NewRecord:
    owner_id: str
    owner_username: str
    kind: str
    purpose: str = ""
    job_id: str | None = None
    index: int = 0
    params_json: str = "{}"
    title: str = ""


class _AlreadyThere(Exception):
    """Rolls back a transaction whose (job_id, index) another delivery has just written."""


class ContentStore:
    def __init__(self, pool: asyncpg.Pool, store: BlobStore) -> None:
        self.pool = pool
        self.store = store

    async def add(self, image: PreparedImage, record: NewRecord) -> uuid.UUID | None:
        """Stores the bytes (once per content) and a new record pointing at them. Returns the new
        record's id, or None when (job_id, index) was already recorded: then nothing changes."""
        image_id = uuid.uuid4()
        async with self.pool.acquire() as conn, content_lock(conn, image.sha256):
            try:
                async with conn.transaction():
                    new_blob = await conn.fetchval(
                        """
                        INSERT INTO blobs (sha256, object_key, thumb_key, content_type, size_bytes,
                                           thumb_bytes, width, height)
                        VALUES ($1, $2, $3, 'image/png', $4, $5, $6, $7)
                        ON CONFLICT (sha256) DO NOTHING
                        RETURNING true
                        """,
                        image.sha256,
                        image.original_key,
                        image.thumb_key,
                        len(image.png),
                        len(image.thumb),
                        image.width,
                        image.height,
                    )
                    inserted = await conn.fetchval(
                        """
                        INSERT INTO images (id, owner_id, owner_username, kind, purpose, job_id, idx,
                                            blob_sha256, params, title)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10)
                        ON CONFLICT (job_id, idx) WHERE job_id IS NOT NULL DO NOTHING
                        RETURNING id
                        """,
                        image_id,
                        record.owner_id,
                        record.owner_username,
                        record.kind,
                        record.purpose,
                        record.job_id,
                        record.index,
                        image.sha256,
                        record.params_json,
                        record.title,
                    )
                    if inserted is None:
                        raise _AlreadyThere
                    if new_blob:
                        # Thumbnail first: once the original exists, so must everything derived from it.
                        await self.store.put(image.thumb_key, image.thumb, "image/webp")
                        await self.store.put(image.original_key, image.png, "image/png")
                        metrics.BLOB_BYTES_WRITTEN.labels("thumb").inc(len(image.thumb))
                        metrics.BLOB_BYTES_WRITTEN.labels("original").inc(len(image.png))
                    else:
                        metrics.DEDUPLICATED.inc()
            except _AlreadyThere:
                return None
        metrics.IMAGES_ADDED.labels(record.kind).inc()
        return image_id

    async def delete(self, image_id: uuid.UUID) -> bool:
        """Deletes the record, and its bytes when no other record shares them. False if it was gone."""
        async with self.pool.acquire() as conn:
            sha = await conn.fetchval("SELECT blob_sha256 FROM images WHERE id = $1", image_id)
            if sha is None:
                return False
            async with content_lock(conn, sha):
                async with conn.transaction():
                    deleted = await conn.fetchval(
                        "DELETE FROM images WHERE id = $1 RETURNING blob_sha256", image_id
                    )
                    if deleted is None:
                        return False
                    gone = await conn.fetchrow(
                        """
                        DELETE FROM blobs WHERE sha256 = $1
                          AND NOT EXISTS (SELECT 1 FROM images WHERE blob_sha256 = $1)
                        RETURNING object_key, thumb_key
                        """,
                        sha,
                    )
                if gone is not None:
                    await self._remove_bytes(sha, [gone["object_key"], gone["thumb_key"]])
        return True

    async def _remove_bytes(self, sha: str, keys: list[str]) -> None:
        try:
            for key in keys:
                await self.store.delete(key)
            metrics.BLOBS_DELETED.inc()
        except Exception:
            # The record is already gone; leftover bytes are an orphan for the sweep, not an error
            # for the user who deleted the image.
            metrics.BLOB_DELETE_FAILURES.inc()
            log.exception("could not delete image bytes", extra={"sha256": sha})

    async def sweep_orphans(self) -> list[str]:
        """Deletes stored objects that no `blobs` row accounts for; returns their keys."""
        removed: list[str] = []
        for prefix in ("sha256/", "thumb/"):
            for key in await self.store.list_keys(prefix):
                name = key.rsplit("/", 1)[-1]
                sha = name.split(".", 1)[0]
                if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                    continue
                async with self.pool.acquire() as conn, content_lock(conn, sha):
                    known = await conn.fetchval(
                        "SELECT true FROM blobs WHERE sha256 = $1 AND (object_key = $2 OR thumb_key = $2)",
                        sha,
                        key,
                    )
                    if not known:
                        await self.store.delete(key)
                        removed.append(key)
        if removed:
            log.info("orphan blobs removed", extra={"count": len(removed)})
        return removed
