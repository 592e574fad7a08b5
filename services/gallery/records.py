"""Image records as the database holds them, and their proto form."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from easel.gallery.v1 import gallery_pb2


def token_hash(token: str) -> str:
    """Share tokens are stored hashed; an empty token hashes to nothing that can match."""
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


_PLACEHOLDER = re.compile(r"\$[0-9]+")


def image_columns(liked_by: str, share_token_hash: str | None = None) -> str:
    """The SELECT list of an image joined with its blob. `liked_by` and `share_token_hash` are
    placeholders ("$2") for the viewer's user id and the hash of the share token they hold."""
    for placeholder in (liked_by, share_token_hash or "$0"):
        if not _PLACEHOLDER.fullmatch(placeholder):
            raise ValueError(f"not a query placeholder: {placeholder!r}")
    # Only placeholders (checked above) are formatted into the SQL text.
    shared = (
        "EXISTS (SELECT 1 FROM share_links s WHERE s.image_id = i.id"  # nosec B608
        f" AND s.token_hash = {share_token_hash} AND s.revoked_at IS NULL)"
        if share_token_hash
        else "false"
    )
    liked = f"EXISTS (SELECT 1 FROM likes l WHERE l.image_id = i.id AND l.user_id = {liked_by})"  # nosec B608
    return f"{_COLUMNS}, {liked} AS liked, {shared} AS via_share"


_COLUMNS = (
    "i.id, i.owner_id, i.owner_username, i.kind, i.purpose, i.job_id, i.idx, i.visibility, i.title,"
    " i.tags, i.params::text AS params_json, i.hidden, i.like_count, i.created_at,"
    " b.sha256, b.object_key, b.thumb_key, b.content_type, b.size_bytes, b.thumb_bytes, b.width, b.height"
)

FROM_IMAGES = "FROM images i JOIN blobs b ON b.sha256 = i.blob_sha256"


@dataclass(frozen=True)
class ImageRecord:
    id: uuid.UUID
    owner_id: str
    owner_username: str
    kind: str
    purpose: str
    job_id: str | None
    index: int
    visibility: str
    title: str
    tags: list[str]
    params_json: str
    hidden: bool
    like_count: int
    created_at: datetime
    sha256: str
    object_key: str
    thumb_key: str
    content_type: str
    size_bytes: int
    thumb_bytes: int
    width: int
    height: int
    liked: bool
    via_share: bool

    @classmethod
    def from_row(cls, row: Any) -> ImageRecord:
        return cls(
            id=row["id"],
            owner_id=row["owner_id"],
            owner_username=row["owner_username"],
            kind=row["kind"],
            purpose=row["purpose"],
            job_id=row["job_id"],
            index=row["idx"],
            visibility=row["visibility"],
            title=row["title"],
            tags=list(row["tags"]),
            params_json=row["params_json"],
            hidden=row["hidden"],
            like_count=row["like_count"],
            created_at=row["created_at"],
            sha256=row["sha256"],
            object_key=row["object_key"],
            thumb_key=row["thumb_key"],
            content_type=row["content_type"],
            size_bytes=row["size_bytes"],
            thumb_bytes=row["thumb_bytes"],
            width=row["width"],
            height=row["height"],
            liked=row["liked"],
            via_share=row["via_share"],
        )

    def to_proto(self) -> gallery_pb2.Image:
        msg = gallery_pb2.Image(
            id=str(self.id),
            owner_id=self.owner_id,
            owner_username=self.owner_username,
            visibility=self.visibility,
            title=self.title,
            tags=self.tags,
            width=self.width,
            height=self.height,
            content_type=self.content_type,
            size_bytes=self.size_bytes,
            etag=self.sha256,
            params_json=self.params_json,
            job_id=self.job_id or "",
            index=self.index,
            kind=self.kind,
            like_count=self.like_count,
            liked_by_actor=self.liked,
            hidden=self.hidden,
        )
        msg.created_at.FromDatetime(self.created_at)
        return msg
