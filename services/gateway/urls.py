"""Where the studio is reached from: absolute links and whether the client came over TLS."""

from __future__ import annotations

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


def base_url(request: web.Request) -> str:
    """The studio's origin as the client sees it, without a trailing slash."""
    public = settings_of(request).public_url
    if public:
        return public
    return f"{forwarded_proto(request)}://{request.host}"


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


def safe_next(value: str | None) -> str:
    """A same-site path to go to after logging in; anything else becomes the home page."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value
