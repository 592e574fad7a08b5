"""Gallery metrics. Labels stay bounded: kinds, sizes and error codes, never ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

IMAGES_ADDED = Counter(
    "easel_gallery_images_added",
    "Image records created, by kind (generated or upload).",
    ["kind"],
)
BLOB_BYTES_WRITTEN = Counter(
    "easel_gallery_blob_bytes_written",
    "Bytes written to the object store for new content, by size (original or thumb).",
    ["size"],
)
DEDUPLICATED = Counter(
    "easel_gallery_deduplicated_images",
    "Image records whose bytes were already in the object store, so nothing was written.",
)
REPLAYED = Counter(
    "easel_gallery_replayed_images",
    "Images of a redelivered job that were already stored and were returned as they were.",
)
READS = Counter(
    "easel_gallery_reads",
    "ReadImage streams started, by size (original or thumb).",
    ["size"],
)
READ_BYTES = Counter(
    "easel_gallery_read_bytes",
    "Bytes streamed by ReadImage, by size (original or thumb).",
    ["size"],
)
REJECTED = Counter(
    "easel_gallery_rejected_images",
    "Images refused on write, by error code.",
    ["code"],
)
BLOBS_DELETED = Counter(
    "easel_gallery_blobs_deleted",
    "Originals removed from the object store after their last record was deleted.",
)
BLOB_DELETE_FAILURES = Counter(
    "easel_gallery_blob_delete_failures",
    "Object deletions that failed; the bytes stay behind as orphans until a sweep removes them.",
)
IMAGES_STORED = Gauge(
    "easel_gallery_images_stored",
    "Image records in the gallery (refreshed periodically).",
)
BLOBS_STORED = Gauge(
    "easel_gallery_blobs_stored",
    "Distinct originals in the object store (refreshed periodically).",
)
BYTES_STORED = Gauge(
    "easel_gallery_bytes_stored",
    "Bytes in the object store, originals and thumbnails (refreshed periodically).",
)
