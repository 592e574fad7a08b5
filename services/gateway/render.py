"""Server-rendered pages: one Jinja2 environment, and the context every page gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from . import csrf
from .principal import principal_of
from .state import state_of
from .urls import cookie_secure

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # Templates are read once, at start, never on a request.
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)
    return env


def page_csrf_token(request: web.Request) -> tuple[str, bool]:
    """The token forms on this page carry, and whether a new pre-session cookie must be set."""
    principal = principal_of(request)
    if principal is not None and principal.via_cookie:
        return csrf.token_for_session(principal.token), False
    existing = request.cookies.get(csrf.PRESESSION_COOKIE)
    if existing and 20 <= len(existing) <= 100:
        return existing, False
    return csrf.new_presession_token(), True


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    token, new_cookie = page_csrf_token(request)
    body = (
        state_of(request)
        .pages.get_template(template)
        .render(
            user=principal_of(request),
            csrf_token=token,
            path=request.path,
            static=lambda name: str(request.app.router["static"].url_for(filename=name)),
            **context,
        )
    )
    resp = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    resp.headers["Cache-Control"] = "no-store"
    if new_cookie:
        resp.set_cookie(
            csrf.PRESESSION_COOKIE,
            token,
            httponly=True,
            samesite="Lax",
            secure=cookie_secure(request),
            path="/",
        )
    return resp
