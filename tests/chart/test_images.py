"""The container images (deploy/docker/*.Dockerfile). No Docker engine runs here, so the Dockerfiles
are checked as text, and their build stage (stub generation + wheel) is replayed on a copy of the
build context to show that the wheel carries the generated stubs and the package data."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ._chart import ROOT, load_values

DOCKER = ROOT / "deploy" / "docker"
IMAGES = {
    "gateway": "services.gateway",
    "auth": "services.auth",
    "gallery": "services.gallery",
    "inference-api": "services.inference.api",
    "inference-worker": "services.inference.worker",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)


def test_one_dockerfile_per_service_and_the_chart_uses_their_names() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")} == set(IMAGES)
    values = load_values(ROOT / "deploy" / "helm" / "easel" / "values.yaml")
    keys = {"gateway": "gateway", "auth": "auth", "gallery": "gallery"}
    keys |= {"inference-api": "inferenceApi", "inference-worker": "inferenceWorker"}
    for image, key in keys.items():
        assert values[key]["image"]["repository"] == f"easel/{image}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_is_multi_stage_pinned_non_root_and_runs_its_module(image: str) -> None:
    steps = instructions(DOCKER / f"{image}.Dockerfile")
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    froms = [a for k, a in steps if k == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for base in froms:
        ref = resolve(base.split()[0], args)
        _, _, tag = ref.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{ref} is not pinned to a version"
    build_runs = " ".join(a for k, a in steps if k == "RUN")
    assert "python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=." in build_runs
    assert "proto/easel/*/v1/*.proto" in build_runs
    assert "__init__.py" in build_runs
    assert "pip wheel --no-deps" in build_runs and "/wheels/*.whl" in build_runs
    copies = [a for k, a in steps if k == "COPY"]
    assert not any(re.search(r"(^|\s)easel/?(\s|$)", c) for c in copies), "stubs are generated, never copied"
    user = [a for k, a in steps if k == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1]), "USER must be a numeric non-root id"
    entry = [a for k, a in steps if k == "ENTRYPOINT"][-1]
    assert entry == f'["python", "-m", "{IMAGES[image]}"]'
    runtime = resolve(froms[-1].split()[0], args)
    if image == "inference-worker":
        assert runtime.startswith("pytorch/pytorch:2.13.0-cuda") and runtime.endswith("-runtime")
        assert "--constraint" in build_runs, "the project is installed without replacing the image's torch"
        assert "download.pytorch.org" not in build_runs
    else:
        assert runtime.startswith("python:3.11")
        assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in build_runs


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*") :][:5] == ["*", "!pyproject.toml", "!README.md", "!proto", "!services"]


def test_build_stage_produces_a_wheel_with_generated_stubs(tmp_path: Path) -> None:
    """Replays the build stage's RUN line on a copy of the context (.dockerignore: pyproject.toml,
    README.md, proto/, services/), with this venv's python and pip and without network."""
    context = tmp_path / "src"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")
    for name in ("proto", "services"):
        shutil.copytree(ROOT / name, context / name, ignore=ignore)
    steps = instructions(DOCKER / "auth.Dockerfile")
    run = next(a for k, a in steps if k == "RUN" and "grpc_tools.protoc" in a)
    wheels = tmp_path / "wheels"
    command = run.replace("/wheels", shlex.quote(str(wheels))).replace(
        "pip wheel", "pip wheel --no-build-isolation --no-index --quiet"
    )
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", command], cwd=context, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = list(wheels.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for proto in (ROOT / "proto").glob("easel/*/v1/*.proto"):
        stem = proto.relative_to(ROOT / "proto").with_suffix("")
        assert f"{stem}_pb2.py" in names and f"{stem}_pb2_grpc.py" in names, stem
        assert f"{stem.parent}/__init__.py" in names
    assert "services/migrate/__main__.py" in names
    for schema in ("auth", "gallery", "inference"):
        assert any(n.startswith(f"services/{schema}/migrations/") and n.endswith(".sql") for n in names), (
            schema
        )
