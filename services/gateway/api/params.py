"""Parameters several operations share, declared once for the document and the checks."""

from __future__ import annotations

from services.common import limits

from ..registry import Param

IMAGE_ID = Param("image_id", "path", "Image id.")
JOB_ID = Param("job_id", "path", "Job id.")
KEY_ID = Param("key_id", "path", "API key id.")
SHARE_TOKEN = Param("token", "path", "Share token.")
LIMIT = Param("limit", "query", "Page size.", "integer", minimum=1, maximum=limits.PAGE_SIZE_MAX)
CURSOR = Param("cursor", "query", "`next_cursor` from the previous page.", default="")
SIZE = Param("size", "query", "Which rendition.", default="original", choices=("original", "thumb"))
IF_NONE_MATCH = Param("If-None-Match", "header", "An ETag from an earlier answer: 304 if unchanged.")
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    "Repeat a request safely: the same key answers with the same job.",
    max_length=limits.IDEMPOTENCY_KEY_MAX_CHARS,
    code="invalid_idempotency_key",
    default="",
)
LAST_EVENT_ID = Param("Last-Event-ID", "header", "Skip events up to and including this id.")
ORDER = Param("order", "query", "Sort order.", default="newest", choices=("newest", "most_liked"))
QUERY = Param(
    "q",
    "query",
    "Words to find.",
    required=True,
    min_length=1,
    max_length=limits.SEARCH_MAX_CHARS,
    code="query_too_long",
    default="",
)
MINE = Param("mine", "query", "Only my images (needs a credential).", "boolean", default=False)
REVOKE_TOKEN = Param(
    "token",
    "query",
    "Revoke only this link; absent: every link of the image.",
    max_length=limits.SHARE_TOKEN_MAX_CHARS,
    default="",
)
PAGED = (LIMIT, CURSOR)

# The error statuses operations document, by what they do.
READ = (401, 503)
LIST = (400, 401, 503)
ONE = (401, 404, 503)
CHANGE = (401, 403, 404, 503)
BODY = (400, 401, 403, 415, 503)
