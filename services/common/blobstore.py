"""Object storage for image bytes: a local folder on a laptop, S3 (or MinIO) in a cluster.

Keys are relative, slash-separated paths made of a small safe alphabet (the gallery uses
content-addressed keys such as `sha256/ab/ab12....png`), so a key can never escape the store's
root folder or surprise an S3 listing. Both stores are async: the blocking work (file I/O, the
synchronous `minio` client) runs in worker threads, never on the event loop.

Only gallery uses this module (ARCHITECTURE.md: it is the only component that touches the store).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .config import SettingsError

DEFAULT_CHUNK_SIZE = 128 * 1024
MAX_KEY_LENGTH = 512

# Segments start with a letter or digit, so no segment is "." or "..", hidden, or a temp file.
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_KEY_RE = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT})*$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._/-]*$")


class BlobKeyError(ValueError):
    """A key that could escape the store or that some store cannot hold."""


class BlobNotFoundError(LookupError):
    """No object under that key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no blob under key {key!r}")
        self.key = key


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise BlobKeyError(f"blob key must be 1..{MAX_KEY_LENGTH} characters")
    if ".." in key or not _KEY_RE.match(key):
        raise BlobKeyError(f"blob key {key!r} has a character or segment that is not allowed")
    return key


def check_prefix(prefix: str) -> str:
    if (
        len(prefix) > MAX_KEY_LENGTH
        or ".." in prefix
        or prefix.startswith("/")
        or not _PREFIX_RE.match(prefix)
    ):
        raise BlobKeyError(f"blob prefix {prefix!r} has a character or segment that is not allowed")
    return prefix


@runtime_checkable
class BlobStore(Protocol):
    """What the gallery needs from an object store. Every method is safe to call concurrently."""

    async def ensure_ready(self) -> None:
        """Creates the folder or bucket if missing; a store that cannot be reached stops the process."""

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Stores `data` under `key`, replacing what was there; readers see old or new, never half."""

    async def get(self, key: str) -> bytes:
        """The whole object; `BlobNotFoundError` if there is none."""

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncGenerator[bytes, None]:
        """The object in chunks of at most `chunk_size` bytes, for streaming without holding it all.
        Close it (`contextlib.aclosing`) when stopping early, to release the file or connection."""

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Removes the object; deleting a missing key is not an error."""

    async def list_keys(self, prefix: str = "") -> list[str]:
        """Every key that starts with `prefix`, sorted (for tests and garbage collection)."""

    async def close(self) -> None: ...


class FilesystemBlobStore:
    """Objects as files under `root`; writes go to a temp file on the same disk, then `os.replace`."""

    _TMP = ".tmp"  # not a valid key segment, so it never shows up as a key

    def __init__(self, root: str | Path, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*check_key(key).split("/"))
        # check_key already rules this out; a second look costs nothing and guards future edits.
        if self.root not in path.parents:
            raise BlobKeyError(f"blob key {key!r} leaves the store")
        return path

    async def ensure_ready(self) -> None:
        def make() -> None:
            (self.root / self._TMP).mkdir(parents=True, exist_ok=True)

        try:
            await asyncio.to_thread(make)
        except OSError as exc:
            raise SettingsError(
                "EASEL_BLOB_DIR", f"cannot create {self.root} ({exc}); point it at a writable folder"
            ) from None

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        target = self._path(key)
        await asyncio.to_thread(self._write, target, data)

    def _write(self, target: Path, data: bytes) -> None:
        tmp_dir = self.root / self._TMP
        tmp_dir.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFoundError(key) from None

    async def iter_chunks(
        self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFoundError(key) from None
        try:
            while chunk := await asyncio.to_thread(f.read, chunk_size):
                yield chunk
        finally:
            f.close()

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await asyncio.to_thread(path.unlink, True)

    async def list_keys(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)

        def walk() -> list[str]:
            keys = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if d != self._TMP]
                rel = Path(dirpath).relative_to(self.root)
                for name in filenames:
                    key = (rel / name).as_posix() if rel.parts else name
                    if key.startswith(prefix) and _KEY_RE.match(key):
                        keys.append(key)
            return sorted(keys)

        return await asyncio.to_thread(walk)

    async def close(self) -> None:
        return None


class S3BlobStore:
    """Objects in an S3 bucket through the (blocking) `minio` client, run in worker threads."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        import certifi
        import urllib3
        from minio import Minio

        self.endpoint = endpoint
        self.bucket = bucket
        # minio's default pool waits five minutes to connect; a store that is down should say so fast.
        self._http = urllib3.PoolManager(
            timeout=urllib3.util.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=32,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(
            endpoint,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=secure,
            region=region or None,
            http_client=self._http,
        )

    def __repr__(self) -> str:
        return f"S3BlobStore({self.endpoint!r}, bucket={self.bucket!r})"

    @staticmethod
    def _missing(exc: Exception) -> bool:
        from minio.error import S3Error

        return isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NotFound", "ResourceNotFound")

    async def ensure_ready(self) -> None:
        def make() -> None:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)

        try:
            await asyncio.to_thread(make)
        except Exception as exc:
            from minio.error import S3Error

            # A bucket created by a replica starting at the same moment is fine.
            if isinstance(exc, S3Error) and exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise SettingsError(
                "EASEL_S3_ENDPOINT",
                f"cannot use bucket {self.bucket!r} at {self.endpoint} ({type(exc).__name__}: {exc}); "
                "check EASEL_S3_ENDPOINT, EASEL_S3_ACCESS_KEY, EASEL_S3_SECRET_KEY and EASEL_S3_BUCKET",
            ) from None

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        check_key(key)
        await asyncio.to_thread(
            self.client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type or "application/octet-stream",
        )

    async def get(self, key: str) -> bytes:
        check_key(key)

        def read() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        try:
            return await asyncio.to_thread(read)
        except Exception as exc:
            if self._missing(exc):
                raise BlobNotFoundError(key) from None
            raise

    async def iter_chunks(
        self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        check_key(key)
        try:
            response: Any = await asyncio.to_thread(self.client.get_object, self.bucket, key)
        except Exception as exc:
            if self._missing(exc):
                raise BlobNotFoundError(key) from None
            raise
        try:
            chunks: Iterator[bytes] = response.stream(chunk_size)
            while chunk := await asyncio.to_thread(next, chunks, b""):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def exists(self, key: str) -> bool:
        check_key(key)
        try:
            await asyncio.to_thread(self.client.stat_object, self.bucket, key)
            return True
        except Exception as exc:
            if self._missing(exc):
                return False
            raise

    async def delete(self, key: str) -> None:
        check_key(key)
        # S3 answers a delete of a missing key with success, which is the semantics we want.
        await asyncio.to_thread(self.client.remove_object, self.bucket, key)

    async def list_keys(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)

        def names() -> list[str]:
            objects = self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
            return sorted(str(o.object_name) for o in objects if o.object_name)

        return await asyncio.to_thread(names)

    async def close(self) -> None:
        self._http.clear()


class BlobStoreSettings(BaseSettings):
    """Where image bytes go. Mixed into the settings of the service that owns the store."""

    model_config = SettingsConfigDict(env_prefix="EASEL_", extra="ignore", frozen=True)

    blob_dir: str = ".run/blobs"
    # S3 (or MinIO) is used when an endpoint is set: `host:port`, or a URL whose scheme sets secure.
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = Field(default="easel-images", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    s3_secure: bool = False
    s3_region: str = ""


def blobstore_from_settings(settings: BlobStoreSettings) -> BlobStore:
    """S3 when `EASEL_S3_ENDPOINT` is set, the folder `EASEL_BLOB_DIR` otherwise. Does no I/O yet:
    call `await store.ensure_ready()` before use."""
    endpoint = settings.s3_endpoint.strip()
    if not endpoint:
        if not settings.blob_dir.strip():
            raise SettingsError("EASEL_BLOB_DIR", "must not be empty; name a folder for image bytes")
        return FilesystemBlobStore(settings.blob_dir)
    secure = settings.s3_secure
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise SettingsError(
                "EASEL_S3_ENDPOINT", "must be host:port or http(s)://host:port, without a path"
            )
        endpoint, secure = parts.netloc, parts.scheme == "https"
    elif "/" in endpoint:
        raise SettingsError("EASEL_S3_ENDPOINT", "must be host:port or http(s)://host:port, without a path")
    return S3BlobStore(
        endpoint,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_bucket,
        secure=secure,
        region=settings.s3_region or None,
    )


__all__ = [
    "BlobKeyError",
    "BlobNotFoundError",
    "BlobStore",
    "BlobStoreSettings",
    "FilesystemBlobStore",
    "S3BlobStore",
    "blobstore_from_settings",
    "check_key",
]
