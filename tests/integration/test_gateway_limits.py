"""The OpenAPI document's limits are the ones the studio enforces.

For every numeric or length limit the generated document states on a JSON body field, a query
parameter or a header, two requests go to the real stack: one at the limit, which must not be
refused for that limit, and one just past it, which must be refused with 400, the code the
document names (`x-error-code`, else `invalid_field` / `invalid_query`) and the field. Limits a
backend owns (`x-enforced-by`) are checked through the gateway like the others: that is the point.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from services.local.stack import Stack
from tests.stacks import isolated_stack

pytestmark = pytest.mark.timeout(300)

PASSWORD = "correct horse battery staple"
NO_LIMITS = {
    "EASEL_JOBS_IN_FLIGHT_LIMIT": "100000",
    "EASEL_JOBS_PER_DAY_LIMIT": "100000",
    "EASEL_RATE_LIMIT_USER_PER_S": "100000",
    "EASEL_RATE_LIMIT_USER_BURST": "100000",
    "EASEL_RATE_LIMIT_CLIENT_PER_S": "100000",
    "EASEL_RATE_LIMIT_CLIENT_BURST": "100000",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, models_dir: Path) -> Iterator[Stack]:
    with isolated_stack(tmp_path_factory, postgres_url, models_dir, "limits", extra_env=NO_LIMITS) as s:
        yield s


@dataclass(frozen=True)
class Limit:
    """One bound of one field: `at` is allowed, `past` is refused with `code`."""

    where: str  # "body", "query" or "header"
    name: str
    kind: str  # "maxLength", "maxItems", "itemMaxLength", "maximum", "minimum", "exclusiveMinimum"
    bound: float
    code: str


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema itself and its non-null anyOf branches (pydantic puts constraints of optional
    fields inside the branch, and `json_schema_extra` next to it)."""
    return [schema, *(b for b in schema.get("anyOf", []) if b.get("type") != "null")]


def limits_of(where: str, name: str, schema: dict[str, Any], default_code: str) -> list[Limit]:
    found: dict[str, Limit] = {}
    tighter = {"maxLength": min, "maxItems": min, "maximum": min, "minimum": max, "exclusiveMinimum": max}
    for branch in _branches(schema):
        code = branch.get("x-error-code", default_code)
        for kind, pick in tighter.items():
            if kind in branch:
                bound = branch[kind]
                old = found.get(kind)
                if old is None or pick(old.bound, bound) == bound != old.bound:
                    found[kind] = Limit(where, name, kind, bound, code)
        items = branch.get("items")
        if isinstance(items, dict) and "maxLength" in items:
            found["itemMaxLength"] = Limit(
                where, name, "itemMaxLength", items["maxLength"], items.get("x-error-code", code)
            )
    return list(found.values())


def document_limits(doc: dict[str, Any], method: str, path: str) -> list[Limit]:
    op = doc["paths"][path][method]
    out: list[Limit] = []
    for param in op.get("parameters", []):
        if param["in"] in ("query", "header"):
            code = "invalid_query" if param["in"] == "query" else "invalid_field"
            out.extend(limits_of(param["in"], param["name"], param["schema"], code))
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        model = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
        for name, schema in model["properties"].items():
            out.extend(limits_of("body", name, schema, "invalid_field"))
    return out


def _text(name: str, length: int) -> str:
    """A value of exactly `length` characters that is otherwise valid for field `name`."""
    if name == "username":
        return ("u" + uuid.uuid4().hex + "x" * length)[:length]
    if name == "email":
        local = "a" * min(64, length - 6)
        domain = "b" * (length - len(local) - 5)
        return f"{local}@{domain}.com"
    return "x" * length


def values(limit: Limit) -> tuple[Any, Any]:
    """(at the limit, just past it)."""
    b = limit.bound
    if limit.kind == "maxLength":
        return _text(limit.name, int(b)), _text(limit.name, int(b) + 1)
    if limit.kind == "maxItems":
        return [f"t{i}" for i in range(int(b))], [f"t{i}" for i in range(int(b) + 1)]
    if limit.kind == "itemMaxLength":
        return ["t" * int(b)], ["t" * (int(b) + 1)]
    whole = float(b).is_integer() and limit.name not in ("guidance", "strength")
    step = 1 if whole else 0.5
    if limit.kind == "maximum":
        return (int(b) if whole else b), (int(b) + 1 if whole else b + step)
    if limit.kind == "minimum":
        return (int(b) if whole else b), (int(b) - 1 if whole else b - step)
    # exclusiveMinimum: the bound itself is the first value refused.
    return b + 0.25, b


class Http:
    """requests with a base URL and a timeout on every call."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.base + url, timeout=30, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, **kwargs)


class World:
    def __init__(self, base: str) -> None:
        self.http = Http(base)
        self.username = f"lim{uuid.uuid4().hex[:8]}"
        self.http.post(
            "/api/v1/auth/register",
            json={"username": self.username, "email": f"{self.username}@example.com", "password": PASSWORD},
        ).raise_for_status()
        login = self.http.post("/api/v1/auth/login", json={"username": self.username, "password": PASSWORD})
        login.raise_for_status()
        self.bearer = {"Authorization": f"Bearer {login.json()['token']}"}
        self.image_id = self._one_image()

    def _one_image(self) -> str:
        body = {"prompt": "a small square", "width": 64, "height": 64, "steps": 1, "seed": 3}
        job = self.http.post("/api/v1/generations", json=body, headers=self.bearer).json()["job"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = self.http.get(f"/api/v1/jobs/{job['id']}", headers=self.bearer).json()
            if job["status"] == "completed":
                return str(job["images"][0]["id"])
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.3)
        raise AssertionError(f"the job did not complete: {job}")

    def base_request(self, method: str, path: str) -> dict[str, Any]:
        """A valid request for the operation, which one field at a time is pushed to its limit."""
        path = path.replace("{image_id}", self.image_id)
        bodies: dict[str, Any] = {
            "/api/v1/auth/register": {
                "username": _text("username", 12),
                "email": "x@example.com",
                "password": PASSWORD,
            },
            "/api/v1/auth/login": {"username": self.username, "password": "not the password"},
            "/api/v1/auth/password": {"current_password": "not the password", "new_password": PASSWORD + "!"},
            "/api/v1/keys": {"name": "limits"},
            "/api/v1/generations": {"prompt": "ok", "width": 64, "height": 64, "steps": 1},
            f"/api/v1/images/{self.image_id}": {},
            f"/api/v1/images/{self.image_id}/report": {"reason": "r"},
        }
        params: dict[str, Any] = {"q": "square"} if path == "/api/v1/search" else {}
        return {"method": method.upper(), "url": path, "json": bodies.get(path), "params": params}


@pytest.fixture(scope="module")
def world(stack: Stack) -> World:
    return World(stack.gateway_url)


def send(world: World, request: dict[str, Any], limit: Limit, value: Any) -> requests.Response:
    req = {**request, "headers": dict(world.bearer), "params": dict(request["params"])}
    if limit.where == "body":
        req["json"] = {**(request["json"] or {}), limit.name: value}
    elif limit.where == "query":
        req["params"][limit.name] = value
    else:
        req["headers"][limit.name] = value
    if request["url"] == "/api/v1/auth/register" and limit.name != "username":
        req["json"]["username"] = _text("username", 12)  # a new account each time, or 409 comes first
    return world.http.request(**req)


def refused_for(resp: requests.Response, limit: Limit) -> bool:
    if resp.status_code != 400:
        return False
    error = resp.json()["error"]
    field = None if limit.where == "header" else limit.name
    return bool(error["code"] == limit.code and error.get("field") == field)


# JSON operations with bodies or parameters that carry limits; edits take JSON too, with a base of
# their own (an image id), so they are checked by `test_edit_limits`.
OPERATIONS = [
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/password"),
    ("post", "/api/v1/keys"),
    ("post", "/api/v1/generations"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/images"),
    ("get", "/api/v1/community"),
    ("get", "/api/v1/search"),
    ("patch", "/api/v1/images/{image_id}"),
    ("post", "/api/v1/images/{image_id}/report"),
    ("delete", "/api/v1/images/{image_id}/share"),
]


def test_every_documented_limit_is_the_enforced_one(world: World) -> None:
    doc = world.http.get("/api/v1/openapi.json").json()
    checked: list[str] = []
    failures: list[str] = []
    for method, path in OPERATIONS:
        request = world.base_request(method, path)
        for limit in document_limits(doc, method, path):
            at, past = values(limit)
            label = f"{method.upper()} {path} {limit.where}:{limit.name} {limit.kind}={limit.bound}"
            resp = send(world, request, limit, at)
            if refused_for(resp, limit) or resp.status_code >= 500:
                failures.append(f"{label}: at the limit refused: {resp.status_code} {resp.text[:300]}")
            resp = send(world, request, limit, past)
            if not refused_for(resp, limit):
                failures.append(
                    f"{label}: past it not refused with {limit.code}: {resp.status_code} {resp.text[:300]}"
                )
            checked.append(label)
    assert not failures, "\n".join(failures)
    # The sweep is not empty: the limits that motivated it are among those checked.
    for needle in (
        "generations body:prompt maxLength=2000",
        "generations body:n maximum=8",
        "generations body:seed maximum=4294967295",
        "generations body:guidance maximum=30",
        "{image_id} body:tags maxItems=20",
        "{image_id} body:tags itemMaxLength=40",
        "register body:username maxLength=32",
        "keys body:name maxLength=64",
        "report body:reason maxLength=1000",
        "search query:q maxLength=200",
        "generations header:Idempotency-Key maxLength=200",
    ):
        assert any(needle in label for label in checked), (needle, checked)
    print(f"\n{len(checked)} documented limits checked at and past their bound")


def test_edit_limits(world: World) -> None:
    doc = world.http.get("/api/v1/openapi.json").json()
    schema = doc["components"]["schemas"]["EditRequest"]
    request = {
        "method": "POST",
        "url": "/api/v1/edits",
        "json": {"kind": "variation", "image_id": world.image_id, "steps": 1},
        "params": {},
    }
    limits = [
        lim
        for name in ("strength", "image_id", "mask_id")
        for lim in limits_of("body", name, schema["properties"][name], "invalid_field")
    ]
    assert {lim.kind for lim in limits if lim.name == "strength"} == {
        "minimum",
        "maximum",
        "exclusiveMinimum",
    }
    for limit in limits:
        at, past = values(limit)
        resp = send(world, request, limit, at)
        assert not refused_for(resp, limit), (limit, resp.text)
        resp = send(world, request, limit, past)
        assert refused_for(resp, limit), (limit, resp.text)
