"""The gateway's own work on a generation request, before (hand-written checks) and after (the typed
contract), measured in one process, interleaved, so both see the same machine.

Per request, each side does what its handler did between the bytes arriving and the gRPC call, and
between the reply and the bytes leaving:
  before: json.loads → `Body` field checks → GenerationParams → serialize.job → json.dumps, with the
          gateway modules of commit `--rev` (default 43b4b19, the last before the contract), loaded
          from git into a package of their own,
  after:  bodies.model_from_json (pydantic reads and checks the JSON in one pass) →
          GenerationParams → serialize.job → pydantic_core.to_json, with this tree's modules.
The full path through HTTP and the backends is measured by `control_plane.py --ab OLD_TREE`.

    .venv/bin/python bench/contract_overhead.py [--rounds 20] [--per-round 2000] [--rev 43b4b19]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess  # nosec B404 - git, to read the old modules
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp.test_utils import make_mocked_request
from pydantic_core import to_json

from easel.inference.v1 import inference_pb2
from services.gateway import models, serialize
from services.gateway.api.jobs import generation_params
from services.gateway.bodies import model_from_json
from services.gateway.settings import GatewaySettings
from services.gateway.urls import SETTINGS

BODY = json.dumps(
    {
        "prompt": "a lighthouse on a cliff at dusk, oil painting, dramatic sky",
        "negative_prompt": "blurry, low quality",
        "model": "tiny-sd",
        "width": 512,
        "height": 512,
        "steps": 20,
        "guidance": 7.5,
        "sampler": "euler",
        "seed": 42,
        "n": 2,
    }
).encode()


ROOT = Path(__file__).resolve().parents[1]
OLD_MODULES = ("api_jobs", "bodies", "clients", "principal", "serialize", "settings", "sse", "urls")


def old_gateway(rev: str) -> tuple[ModuleType, ModuleType, ModuleType]:
    """api_jobs, bodies and serialize of the gateway as it was at `rev` (a package of their own)."""
    folder = Path(tempfile.mkdtemp(prefix="easel-old-gateway-")) / "old_gateway"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in OLD_MODULES:
        text = subprocess.run(  # nosec B603 B607 - fixed git command
            ["git", "show", f"{rev}:services/gateway/{name}.py"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        (folder / f"{name}.py").write_bytes(text)
    sys.path.insert(0, str(folder.parent))
    load = importlib.import_module
    return load("old_gateway.api_jobs"), load("old_gateway.bodies"), load("old_gateway.serialize")


def _request() -> Any:
    from aiohttp import web

    app = web.Application()
    app[SETTINGS] = GatewaySettings(public_url="https://art.example.org")
    return make_mocked_request("POST", "/api/v1/generations", app=app)


def _job() -> inference_pb2.Job:
    job = inference_pb2.Job(
        id="j1", owner_id="u1", kind="txt2img", model="tiny-sd", status="queued", position=3
    )
    job.params_json = json.dumps({"prompt": "a lighthouse", "seed": 42, "steps": 20})
    job.created_at.GetCurrentTime()
    return job


def make_before(rev: str) -> Callable[[Any, inference_pb2.Job], bytes]:
    api_jobs, bodies, old_serialize = old_gateway(rev)

    def before(request: Any, job: inference_pb2.Job) -> bytes:
        body = bodies.Body(json.loads(BODY))
        params = api_jobs.generation_params(body)
        model = body.string("model", max_len=200) or ""
        assert params.n == 2 and model
        return json.dumps({"job": old_serialize.job(request, job)}).encode()

    return before


def after(request: Any, job: inference_pb2.Job) -> bytes:
    body = model_from_json(models.GenerationRequest, BODY)
    assert body is not None
    params = generation_params(body)
    assert params.n == 2 and body.model
    answer: models.JobEnvelope = {"job": serialize.job(request, job)}
    return to_json(answer)  # as registry.Operation.endpoint writes it


def per_call_us(fn: Callable[[Any, inference_pb2.Job], bytes], request: Any, job: Any, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn(request, job)
    return (time.perf_counter() - start) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--rev", default="43b4b19", help="the commit whose gateway is 'before'")
    args = parser.parse_args(argv)
    before = make_before(args.rev)
    request, job = _request(), _job()
    assert json.loads(before(request, job)) == json.loads(after(request, job))  # the same answer
    old: list[float] = []
    new: list[float] = []
    for i in range(args.rounds):  # interleaved, and in both orders
        pair = [(before, old), (after, new)]
        for fn, out in pair if i % 2 == 0 else reversed(pair):
            out.append(per_call_us(fn, request, job, args.per_round))
    o, n = statistics.median(old), statistics.median(new)
    print(f"parse + validate + answer of one generation request, median of {args.rounds} rounds:")
    print(f"  before ({args.rev}, hand-written checks): {o:7.1f} µs")
    print(f"  after  (this tree, typed contract):    {n:7.1f} µs")
    verdict = "no slower" if n <= o * 1.02 else "SLOWER"
    print(f"  after / before:                        {n / o:7.3f}  ({verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
