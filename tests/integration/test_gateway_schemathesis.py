"""Property-based checks of the public APIs against their own OpenAPI documents (schemathesis).

Every operation in /api/v1/openapi.json, and in the compatible faces' /v1/openapi.json (OpenAI) and
/sdapi/v1/openapi.json (AUTOMATIC1111), gets a few generated requests, valid ones and (fewer) wrong
ones, sent to the real stack as a logged-in user. No answer may be a 5xx, and every answer to a
valid request must match the document: a documented status code, its content type, its headers and
its schema. Bounded: a few examples per operation and a time budget for each document.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.local.stack import Stack
from tests.stacks import isolated_stack

pytestmark = pytest.mark.timeout(240)

PASSWORD = "correct horse battery staple"
BUDGET_S = 75.0
POSITIVE_EXAMPLES = 15
NEGATIVE_EXAMPLES = 8
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Wrong input must not break the server; what it answers (400, 404, 415, ...) is checked elsewhere.
NEGATIVE = [not_a_server_error, content_type_conformance]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, models_dir: Path) -> Iterator[Stack]:
    """The fuzzer's jobs and images stay out of every other test's way. The compatible faces
    authenticate in their handlers, so the gateway limits their callers per address, as anonymous:
    lifted here, so that the fuzzer's requests reach the handlers (the limits have their own tests)."""
    unlimited = {"EASEL_RATE_LIMIT_CLIENT_PER_S": "100000", "EASEL_RATE_LIMIT_CLIENT_BURST": "100000"}
    with isolated_stack(tmp_path_factory, postgres_url, models_dir, "fuzz", extra_env=unlimited) as s:
        yield s


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _login(base: str, username: str) -> str:
    status, body = _post(f"{base}/api/v1/auth/login", {"username": username, "password": PASSWORD})
    assert status == 200, body
    return str(body["token"])


def _run_operation(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    headers: Callable[[], dict[str, str]],
    base: str,
    checks: list[Any],
    deadline: float,
    failures: list[str],
    counter: list[int],
    timeout: float = 20,
    shrink: Callable[[Case[Any]], None] | None = None,
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case[Any]) -> None:
        if time.monotonic() > deadline:
            return
        counter[0] += 1
        if shrink is not None:
            shrink(case)
        response = case.call(base_url=base, headers=headers(), timeout=timeout)
        try:
            case.validate_response(response, checks=checks)
        except (FailureGroup, AssertionError) as exc:
            failures.append(f"{mode.value} {operation.label}: {str(exc)[:1500]}")

    try:
        run()
    except Unsatisfiable:
        # Nothing to get wrong (no parameters, no body): there are no negative cases to send.
        assert mode == GenerationMode.NEGATIVE, operation.label


def test_api_conforms_to_its_openapi_document(stack: Stack) -> None:
    base = stack.gateway_url
    username = f"fuzz{uuid.uuid4().hex[:8]}"
    status, body = _post(
        f"{base}/api/v1/auth/register",
        {"username": username, "email": f"{username}@example.com", "password": PASSWORD},
    )
    assert status == 201, body
    token = _login(base, username)

    def bearer() -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def fresh_bearer() -> dict[str, str]:
        # Logging out kills the token it was sent with: give it one of its own each time.
        return {"Authorization": f"Bearer {_login(base, username)}"}

    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), results  # the document itself is sound
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= 25, [op.label for op in operations]

    deadline = time.monotonic() + BUDGET_S
    failures: list[str] = []
    counter = [0]
    for operation in operations:
        headers = fresh_bearer if operation.path == "/api/v1/auth/logout" else bearer
        _run_operation(
            operation,
            GenerationMode.POSITIVE,
            POSITIVE_EXAMPLES,
            headers,
            base,
            CONFORMANCE,
            deadline,
            failures,
            counter,
        )
    for operation in operations:
        headers = fresh_bearer if operation.path == "/api/v1/auth/logout" else bearer
        _run_operation(
            operation,
            GenerationMode.NEGATIVE,
            NEGATIVE_EXAMPLES,
            headers,
            base,
            NEGATIVE,
            deadline,
            failures,
            counter,
        )
    print(f"\nschemathesis: {counter[0]} requests over {len(operations)} operations")
    # The budget is a bound, not the goal: most operations must have been exercised.
    assert counter[0] >= len(operations) * 2, counter[0]
    assert not failures, "\n\n".join(failures)


# The compatible faces answer synchronously: a valid generation runs a job before it answers. Those
# get fewer examples, a longer timeout, and valid bodies shrunk to a small, quick job.
COMPAT_BUDGET_S = 90.0
SYNCHRONOUS = frozenset(
    {
        "/sdapi/v1/txt2img",
        "/sdapi/v1/img2img",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
    }
)


def _small_job(case: Case[Any]) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    for name, small in (
        ("steps", 2),
        ("batch_size", 1),
        ("n_iter", 1),
        ("n", 1),
        ("width", 64),
        ("height", 64),
    ):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > small:
            body[name] = small
    if isinstance(body.get("size"), str) and body["size"] != "auto":
        body["size"] = "64x64"


@pytest.mark.parametrize("document", ["/v1/openapi.json", "/sdapi/v1/openapi.json"])
def test_compatible_apis_conform_to_their_documents(stack: Stack, document: str) -> None:
    base = stack.gateway_url
    username = f"compat{uuid.uuid4().hex[:8]}"
    status, body = _post(
        f"{base}/api/v1/auth/register",
        {"username": username, "email": f"{username}@example.com", "password": PASSWORD},
    )
    assert status == 201, body
    token = _login(base, username)
    req = urllib.request.Request(
        f"{base}/api/v1/keys",
        data=json.dumps({"name": "fuzz"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        key = json.loads(resp.read())["key"]

    def bearer() -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    schema = schemathesis.openapi.from_url(f"{base}{document}")
    results = list(schema.get_all_operations())
    assert all(isinstance(r, Ok) for r in results), results
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= (6 if document.startswith("/v1/") else 25), [op.label for op in operations]

    deadline = time.monotonic() + COMPAT_BUDGET_S
    failures: list[str] = []
    counter = [0]
    for mode, examples, checks in (
        (GenerationMode.POSITIVE, POSITIVE_EXAMPLES, CONFORMANCE),
        (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, NEGATIVE),
    ):
        for operation in operations:
            slow = operation.path in SYNCHRONOUS
            _run_operation(
                operation,
                mode,
                3 if slow else examples,
                bearer,
                base,
                checks,
                deadline,
                failures,
                counter,
                timeout=120 if slow else 20,
                shrink=_small_job if slow and mode == GenerationMode.POSITIVE else None,
            )
    print(f"\nschemathesis {document}: {counter[0]} requests over {len(operations)} operations")
    assert counter[0] >= len(operations) * 2, counter[0]
    assert not failures, "\n\n".join(failures)
