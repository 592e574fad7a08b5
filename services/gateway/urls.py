"""Where the studio is reached from: absolute links and whether the client came over TLS."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from aiohttp import web

from .settings import GatewaySettings

SETTINGS = web.AppKey("settings", GatewaySettings)


def settings_of(request: web.Request) -> GatewaySettings:
    return request.app[SETTINGS]


def forwarded_proto(request: web.Request) -> str:
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if proto in ("http", "https"):
        return proto
    return "https" if request.secure else "http"


def is_secure(request: web.Request) -> bool:
    """True when the browser talks to us over TLS (directly or through a proxy that says so)."""
    return forwarded_proto(request) == "https"


def cookie_secure(request: web.Request) -> bool:
    setting = settings_of(request).cookie_secure
    if setting == "auto":
        public = settings_of(request).public_url
        return is_secure(request) or bool(public and public.startswith("https://"))
    return bool(setting)


def default_origin(settings: GatewaySettings) -> str:
    """Where the gateway listens, as `make run` prints it (http://127.0.0.1:8080); an address that
    listens everywhere (0.0.0.0, ::) is reached on loopback."""
    host = settings.http_host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # nosec B104  # compared, not bound
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def base_url(request: web.Request) -> str:
    """The studio's origin for absolute links (share links, image URLs), without a trailing slash:
    EASEL_PUBLIC_URL, else where the gateway listens. Never the request's Host or X-Forwarded-*
    headers: whoever sends a request must not choose the links the studio hands out."""
    settings = settings_of(request)
    return settings.public_url or default_origin(settings)


def image_file_url(request: web.Request, image_id: str, thumb: bool = False, absolute: bool = True) -> str:
    """Absolute for API answers; pages use paths, which survive any proxy's idea of the host."""
    url = f"{base_url(request) if absolute else ''}/api/v1/images/{quote(image_id, safe='')}/file"
    return url + "?size=thumb" if thumb else url


def shared_file_url(request: web.Request, token: str, thumb: bool = False, absolute: bool = True) -> str:
    url = f"{base_url(request) if absolute else ''}/s/{quote(token, safe='')}/file"
    return url + "?size=thumb" if thumb else url


def client_address(request: web.Request) -> str:
    if settings_of(request).trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
        if forwarded:
            return forwarded
    return request.remote or ""


def wants_json(request: web.Request) -> bool:
    """API paths always answer JSON; elsewhere the Accept header decides."""
    path = request.path
    if path.startswith(("/api/", "/v1/", "/sdapi/")) or path in ("/healthz", "/readyz", "/metrics"):
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


# What may stay as it is in a redirect target; everything else is percent-encoded.
_PATH_SAFE = "/?&=%:@!$'()*+,;~#-._"


def safe_next(value: str | None) -> str:
    """A same-site path to go to after logging in; anything else becomes the home page.

    Browsers drop tabs and newlines from URLs (so `/\t/evil.example` would become the off-site
    `//evil.example`) and read a backslash as a slash; a newline in a Location header cannot even be
    sent. So: a single leading slash, no backslash, no control, format or line-separator character;
    what remains (spaces, non-ASCII letters) is percent-encoded."""
    if not value or not value.startswith("/") or value[1:2] in ("/", "\\") or "\\" in value:
        return "/"
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in value):
        return "/"
    return quote(value, safe=_PATH_SAFE)


_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
