"""Settings of the gallery service, all from `EASEL_*` environment variables."""

from __future__ import annotations

from pydantic import Field

from services.common.blobstore import BlobStoreSettings
from services.common.config import DatabaseSettings


class GallerySettings(DatabaseSettings, BlobStoreSettings):
    grpc_port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9102, ge=0, le=65535)

    # Uploads (init images and masks). The pixel limit is also Pillow's MAX_IMAGE_PIXELS in this
    # process: an image over twice the limit is refused as a decompression bomb before decoding.
    gallery_max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, le=60 * 1024 * 1024)
    gallery_max_upload_pixels: int = Field(default=4096 * 4096, ge=64 * 64)
    # Longest side of the WebP thumbnail made once, when an image is stored.
    gallery_thumb_size: int = Field(default=384, ge=32, le=2048)
    gallery_thumb_quality: int = Field(default=80, ge=1, le=100)
    # Bytes per ImageChunk message of ReadImage.
    gallery_read_chunk_bytes: int = Field(default=128 * 1024, ge=4096, le=4 * 1024 * 1024)
    # Images decoded at once; each can take width x height x 4 bytes of memory.
    gallery_image_workers: int = Field(default=2, ge=1, le=64)
    gallery_page_size: int = Field(default=30, ge=1, le=200)
    gallery_max_page_size: int = Field(default=100, ge=1, le=1000)
    # How often the stored-images and stored-bytes gauges are refreshed from the database.
    gallery_stats_interval_s: float = Field(default=60.0, gt=0)
