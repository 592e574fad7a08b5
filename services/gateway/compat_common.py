"""What `/api/v1/edits` and the OpenAI- and AUTOMATIC1111-compatible APIs share.

Reading uploads (multipart files, base64 strings) and handing them to gallery, submitting a job and
waiting for it to end, fetching the result bytes, and authenticating callers of the compatible APIs
(their routes are `@no_auth` for the middleware: they speak HTTP Basic and answer errors in their
own shapes, so they check credentials here).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import logging
import re
import secrets
import struct
from collections import OrderedDict

import grpc
from aiohttp import BasicAuth, web
from PIL import Image, ImageOps

from easel.auth.v1 import auth_pb2
from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2
from easel.inference.v1 import inference_pb2
from services.common.errors import EaselError, invalid, unauthenticated, unavailable
from services.common.grpc_client import stream_user_errors, user_errors

from . import textcheck
from .api import uploads
from .api.uploads import file_bytes, is_multipart, read_form
from .api_jobs import SHUTTING_DOWN
from .bodies import JSON_TYPES, Body
from .clients import CLIENTS
from .principal import PRINCIPAL, Principal
from .serialize import TERMINAL
from .serialize import params as job_params
from .urls import client_address, settings_of

log = logging.getLogger(__name__)

# An image and a mask, possibly as base64 inside JSON, need more room than the API's ordinary JSON
# bodies (EASEL_MAX_BODY_BYTES). Gallery still enforces its own per-image limits on each upload.
UPLOAD_MAX_BODY_BYTES = 48 * 1024 * 1024
# Images the gateway itself decodes (masks to convert): refused above this many pixels before any
# pixel data is read, so a small file that claims a huge size cannot exhaust memory.
MAX_DECODE_PIXELS = 4096 * 4096
# How often a sync call re-attaches to a job whose event stream broke (inference restarting).
WATCH_RECONNECTS = 5

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TOKEN = re.compile(r"(ess|esk)_[0-9a-f]{32}_[A-Za-z0-9_-]{43}")

# Failure codes that are the studio's fault, not the request's (the rest describe bad input).
_SERVER_FAILURES = frozenset(
    {"generation_failed", "model_load_failed", "out_of_memory", "images_rejected", "internal"}
)


# --- request bodies -------------------------------------------------------------------------------


def with_upload_limit(request: web.Request) -> web.Request:
    """The request with room for uploads. Use the returned copy only to read the body: the principal
    and request id stay on the original."""
    if request.content.is_eof():
        # Already read (the CSRF check parsed a cookie-authenticated form, or there is no body):
        # the parsed form is kept on the original, so that is the one to read from.
        return request
    limit = max(request.client_max_size, UPLOAD_MAX_BODY_BYTES)
    try:
        return request.clone(client_max_size=limit)
    except RuntimeError:  # read with request.read() already
        return request


async def read_body(request: web.Request, required: bool = True) -> Body:
    """A JSON object body, sent as JSON or without any Content-Type.

    Clients of the compatible APIs send JSON without saying so (Dify's A1111 tool posts `data=`
    without a Content-Type; FastAPI, which A1111 runs on, parses such a body as JSON). Any other
    declared type is refused (415), as FastAPI refuses it: forms and text/plain are what forged
    cross-site posts use."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise invalid("missing_body", "Send a JSON object as the request body.")
        return Body({})
    ctype = request.content_type
    if "Content-Type" in request.headers:
        if ctype not in JSON_TYPES and not ctype.endswith("+json"):
            raise web.HTTPUnsupportedMediaType()
    elif "Origin" in request.headers:
        # A page in a browser can post a body without a Content-Type (a Blob without a type) and
        # the browser may add cached HTTP Basic credentials: only clients outside browsers, which
        # send no Origin, may leave the type out.
        raise web.HTTPUnsupportedMediaType()
    data = textcheck.loads(raw)  # the gateway's one JSON decoder: syntax, numbers, NUL, surrogates
    if not isinstance(data, dict):
        raise invalid("invalid_body", 'The body must be a JSON object, like {"prompt": "..."}.')
    return Body(data)


async def decode_base64(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise invalid("invalid_field", f"'{field}' must be a base64 string.", field=field)
    return await uploads.decode_base64(value, field)


async def encode_base64(data: bytes) -> str:
    if len(data) < 64 * 1024:
        return base64.b64encode(data).decode("ascii")
    return await asyncio.to_thread(lambda: base64.b64encode(data).decode("ascii"))


# --- images the gateway looks into ----------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's header, without decoding it."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def open_image(data: bytes, field: str) -> Image.Image:
    """Decoded pixels of an uploaded file, or the 400 that names `field`. Blocking: call in a thread."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise invalid(
            "decompression_bomb", f"The {field} claims an enormous size; upload an ordinary image.", field
        ) from None
    except Exception:  # Pillow raises many types for files it cannot read
        raise invalid(
            "not_an_image", f"The {field} is not an image; upload a PNG, JPEG or WebP file.", field
        ) from None
    width, height = im.size
    if width * height > MAX_DECODE_PIXELS:
        raise invalid(
            "image_too_large",
            f"The {field} is {width}x{height} pixels; send at most {MAX_DECODE_PIXELS:,} pixels.",
            field,
        )
    try:
        im.load()
    except Exception:
        raise invalid(
            "not_an_image", f"The {field} could not be decoded; upload a PNG, JPEG or WebP file.", field
        ) from None
    return im


def image_size(data: bytes, field: str) -> tuple[int, int]:
    """The size a file says it has (header only). Blocking: call in a thread."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        raise invalid(
            "not_an_image", f"The {field} is not an image; upload a PNG, JPEG or WebP file.", field
        ) from None


def encode_png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def has_alpha(im: Image.Image) -> bool:
    return "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info)


def alpha_of(im: Image.Image) -> Image.Image:
    return im.convert("RGBA").getchannel("A")


def transparent_to_white(alpha: Image.Image) -> Image.Image:
    """Our mask (white = repaint) from an alpha channel where fully transparent means "edit here"."""
    return alpha.point(lambda a: 255 if a == 0 else 0)


def invert(mask: Image.Image) -> Image.Image:
    return ImageOps.invert(mask.convert("L"))


# --- gallery and inference --------------------------------------------------------------------------


def _upload_timeout(request: web.Request) -> float:
    # Decoding and re-encoding a big upload takes longer than an ordinary call.
    return max(30.0, settings_of(request).rpc_timeout_s * 3)


async def upload_image(
    request: web.Request, principal: Principal, data: bytes, filename: str, purpose: str, field: str
) -> str:
    """Stores an init image or mask through gallery (which checks it); its error names `field`."""
    try:
        with user_errors("gallery"):
            img = await request.app[CLIENTS].gallery.UploadImage(
                gallery_pb2.UploadImageRequest(
                    actor=principal.actor, data=data, filename=filename[:200], purpose=purpose
                ),
                timeout=_upload_timeout(request),
            )
    except EaselError as exc:
        if exc.field in (None, "image", "data") and exc.http_status < 500:
            exc.field = field
        raise
    return str(img.id)


async def get_image(
    request: web.Request, principal: Principal, image_id: str, admin_rights: bool = True
) -> gallery_pb2.Image:
    actor = principal.actor
    if not admin_rights:
        actor.role = "user"
    with user_errors("gallery"):
        img: gallery_pb2.Image = await request.app[CLIENTS].gallery.GetImage(
            gallery_pb2.GetImageRequest(actor=actor, image_id=image_id)
        )
    return img


async def read_image(request: web.Request, actor: common_pb2.Actor, image_id: str) -> bytes:
    call = request.app[CLIENTS].gallery.ReadImage(
        gallery_pb2.ReadImageRequest(actor=actor, image_id=image_id, size="original"),
        timeout=_upload_timeout(request),
    )
    data = bytearray()
    try:
        async for chunk in stream_user_errors("gallery", call):
            data.extend(chunk.data)
    finally:
        call.cancel()
    return bytes(data)


async def job_images(request: web.Request, principal: Principal, job: inference_pb2.Job) -> list[bytes]:
    """The PNG bytes of a finished job's images, in index order."""
    refs = sorted(job.images, key=lambda ref: ref.index)
    return list(await asyncio.gather(*(read_image(request, principal.actor, ref.id) for ref in refs)))


async def submit_job(
    request: web.Request,
    principal: Principal,
    kind: str,
    model: str,
    params: inference_pb2.GenerationParams,
    idempotency_key: str = "",
) -> inference_pb2.Job:
    with user_errors("inference"):
        job: inference_pb2.Job = await request.app[CLIENTS].inference.SubmitJob(
            inference_pb2.SubmitJobRequest(
                actor=principal.actor, kind=kind, model=model, params=params, idempotency_key=idempotency_key
            )
        )
    return job


async def list_jobs(request: web.Request, principal: Principal, limit: int = 50) -> list[inference_pb2.Job]:
    with user_errors("inference"):
        found = await request.app[CLIENTS].inference.ListJobs(
            inference_pb2.ListJobsRequest(actor=principal.actor, limit=limit)
        )
    return list(found.jobs)


async def cancel_job(request: web.Request, principal: Principal, job_id: str) -> inference_pb2.Job:
    with user_errors("inference"):
        job: inference_pb2.Job = await request.app[CLIENTS].inference.CancelJob(
            inference_pb2.CancelJobRequest(actor=principal.actor, job_id=job_id)
        )
    return job


async def _watch_until_end(
    request: web.Request, principal: Principal, job_id: str
) -> inference_pb2.Job | None:
    """The job once a terminal event arrives; None when the stream ended before that."""
    call = request.app[CLIENTS].inference.WatchJob(
        inference_pb2.WatchJobRequest(actor=principal.actor, job_id=job_id)
    )
    try:
        async for event in stream_user_errors("inference", call):
            if isinstance(event, inference_pb2.JobEvent) and (
                event.type in TERMINAL or event.job.status in TERMINAL
            ):
                job: inference_pb2.Job = event.job
                return job
    finally:
        call.cancel()
    return None


async def wait_for_job(request: web.Request, principal: Principal, job_id: str) -> inference_pb2.Job:
    """Follows the job (WatchJob) until it completes, fails or is cancelled.

    The compatible APIs answer synchronously, so the HTTP request stays open as long as the job
    takes. A broken event stream (inference restarting) is re-attached a few times; a stopping
    gateway answers 503 at once (the job itself carries on and its images land in the gallery)."""
    stopping = request.app[SHUTTING_DOWN]
    attempt = 0
    while True:
        watch = asyncio.ensure_future(_watch_until_end(request, principal, job_id))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            done, _ = await asyncio.wait({watch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if watch not in done:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, EaselError):
                await watch
            raise unavailable(
                "gateway_restarting",
                "The server is restarting; the job goes on, find its images in your gallery.",
            )
        try:
            job = watch.result()
        except EaselError as exc:
            if exc.http_status < 500 or attempt >= WATCH_RECONNECTS:
                raise
            job = None
        if job is not None:
            return job
        attempt += 1
        if attempt > WATCH_RECONNECTS:
            raise unavailable(
                "inference_unavailable", "Lost track of the job; find its images in your gallery."
            )
        await asyncio.sleep(min(0.5 * attempt, 3.0))


def job_failure(job: inference_pb2.Job) -> EaselError:
    """The error a synchronous caller sees for a job that failed."""
    code = job.error_code or "generation_failed"
    message = job.error_message or "The job failed; try again, and report it if it keeps happening."
    if code in _SERVER_FAILURES or code.endswith(("_unavailable", "_timeout")):
        return EaselError(code, message, grpc.StatusCode.INTERNAL)
    if code.endswith("_not_found"):
        return EaselError(code, message, grpc.StatusCode.NOT_FOUND)
    return invalid(code, message)


def job_cancelled() -> EaselError:
    return EaselError(
        "job_cancelled",
        "The job was cancelled before it finished; submit it again to get images.",
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def job_seeds(job: inference_pb2.Job) -> list[int]:
    """Image i of a job used seed + i (the normalised seed is always in params_json)."""
    p = job_params(job.params_json)
    seed = p.get("seed")
    n = max(len(job.images), 1)
    if isinstance(seed, int) and not isinstance(seed, bool):
        return [seed + i for i in range(n)]
    return []


# --- who is calling ----------------------------------------------------------------------------------


def looks_like_token(value: str) -> bool:
    """A session token (ess_...) or API key (esk_...) rather than a password."""
    return _TOKEN.fullmatch(value) is not None


def _principal(found: auth_pb2.Principal, token: str) -> Principal:
    return Principal(
        user_id=found.user_id,
        username=found.username,
        role=found.role,
        credential_kind=found.credential_kind,
        credential_id=found.credential_id,
        token=token,
        via_cookie=False,
        scopes=tuple(found.scopes),
    )


async def authenticate_token(request: web.Request, token: str) -> Principal:
    with user_errors("auth"):
        found = await request.app[CLIENTS].auth.Authenticate(auth_pb2.AuthenticateRequest(token=token))
    principal = _principal(found, token)
    request[PRINCIPAL] = principal  # for anything downstream that looks (logs, handlers)
    return principal


class LoginCache:
    """Sessions opened for HTTP Basic callers, keyed by a keyed hash of (username, password).

    AUTOMATIC1111 clients send the password with every request. Logging in each time would run the
    (deliberately slow) password hash and open a new session per request. Instead the first request
    logs in through auth - throttled like any login - and later requests with the same pair reuse
    that session, which auth still checks every time: a logout or password change ends it, and the
    next request logs in again. Only a hash of the pair is kept, under a key that lives and dies with
    this process; losing the cache costs one login."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._key = secrets.token_bytes(32)
        self._tokens: OrderedDict[str, str] = OrderedDict()

    def key(self, username: str, password: str) -> str:
        pair = f"{username}\x00{password}".encode()
        return hmac.new(self._key, pair, hashlib.sha256).hexdigest()

    def get(self, key: str) -> str | None:
        token = self._tokens.get(key)
        if token is not None:
            self._tokens.move_to_end(key)
        return token

    def put(self, key: str, token: str) -> None:
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.size:
            self._tokens.popitem(last=False)

    def drop(self, key: str) -> None:
        self._tokens.pop(key, None)


LOGINS = LoginCache()


def bad_credentials() -> EaselError:
    return unauthenticated(
        "invalid_credentials", "The username or password is not correct; check them, or use an API key."
    )


async def basic_principal(request: web.Request, username: str, password: str) -> Principal:
    """The caller behind HTTP Basic credentials: username and password, or username and API key."""
    username = username.strip()
    if not username or not password:
        raise unauthenticated(
            "missing_credentials", "Send your username and password (or an API key) with HTTP Basic auth."
        )
    if looks_like_token(password):
        principal = await authenticate_token(request, password)
        if principal.username.lower() != username.lower():
            raise unauthenticated(
                "invalid_credentials",
                "That API key belongs to another account; send it with its own username.",
            )
        return principal
    key = LOGINS.key(username, password)
    token = LOGINS.get(key)
    if token is not None:
        try:
            return await authenticate_token(request, token)
        except EaselError as exc:
            if exc.status != grpc.StatusCode.UNAUTHENTICATED:
                raise
            LOGINS.drop(key)
    try:
        with user_errors("auth"):
            login = await request.app[CLIENTS].auth.Login(
                auth_pb2.LoginRequest(
                    username=username, password=password, client_address=client_address(request)
                )
            )
    except EaselError as exc:
        if exc.status == grpc.StatusCode.INVALID_ARGUMENT:
            raise bad_credentials() from None
        raise
    LOGINS.put(key, login.token)
    return await authenticate_token(request, login.token)


def authorization(request: web.Request) -> tuple[str, str]:
    """The Authorization header as (scheme in lower case, the rest); ("", "") when absent."""
    header = request.headers.get("Authorization", "").strip()
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), rest.strip()


def basic_credentials(value: str) -> tuple[str, str]:
    try:
        auth = BasicAuth.decode(f"Basic {value}", encoding="utf-8")
    except ValueError:
        raise unauthenticated(
            "bad_authorization", "The Basic credentials are not valid base64 of 'username:password'."
        ) from None
    return auth.login, auth.password


__all__ = [
    "LOGINS",
    "MAX_DECODE_PIXELS",
    "UPLOAD_MAX_BODY_BYTES",
    "alpha_of",
    "authenticate_token",
    "authorization",
    "basic_credentials",
    "basic_principal",
    "cancel_job",
    "decode_base64",
    "encode_base64",
    "encode_png",
    "file_bytes",
    "get_image",
    "has_alpha",
    "image_size",
    "invert",
    "is_multipart",
    "job_cancelled",
    "job_failure",
    "job_images",
    "job_seeds",
    "list_jobs",
    "looks_like_token",
    "open_image",
    "png_size",
    "read_body",
    "read_form",
    "read_image",
    "submit_job",
    "transparent_to_white",
    "upload_image",
    "wait_for_job",
    "with_upload_limit",
]
