"""The gallery's resources, opened in order and closed in reverse: blob store, database, service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from services.common.blobstore import blobstore_from_settings
from services.common.db import database

from .service import GalleryService
from .settings import GallerySettings

SCHEMA = "gallery"
MIGRATIONS = Path(__file__).parent / "migrations"


@asynccontextmanager
async def open_gallery(settings: GallerySettings) -> AsyncIterator[GalleryService]:
    """A ready service: the store reachable (bucket or folder created), the schema migrated."""
    async with AsyncExitStack() as stack:
        store = blobstore_from_settings(settings)
        await store.ensure_ready()
        stack.push_async_callback(store.close)
        pool = await stack.enter_async_context(
            database(settings.database_url, SCHEMA, MIGRATIONS, settings.db_pool_min, settings.db_pool_max)
        )
        yield GalleryService(pool, store, settings)
