"""Rendering and validating the Helm chart offline: Helm's own engine (helm_python), the Kubernetes
schemas shipped with kubernetes_validate, and hand-vendored CRD schemas for KEDA and the Prometheus
operator (tests/chart/crds/)."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "deploy" / "helm" / "easel"
PRODUCTION_VALUES = CHART_DIR / "values-production.example.yaml"
VALUES_DIR = Path(__file__).resolve().parent / "values"
CRD_DIR = Path(__file__).resolve().parent / "crds"
RELEASE = "easel"
NAMESPACE = "easel"

Doc = dict[str, Any]


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


# Values that switch on everything optional, so every template is rendered and checked.
EVERYTHING: dict[str, Any] = {
    "global": {"imagePullSecrets": ["regcred"], "otlpEndpoint": "http://otel-collector.observability:4317"},
    "inCluster": {
        "postgres": {"enabled": True, "password": "pg-secret-pass"},
        "nats": {"enabled": True},
        "minio": {"enabled": True, "rootUser": "easel", "rootPassword": "minio-secret-pass"},
    },
    "monitoring": {"serviceMonitors": {"enabled": True}, "prometheusRules": {"enabled": True}},
    "ingress": {"tls": {"enabled": True, "secretName": "easel-tls"}},
    "models": {"prefetch": {"hub": ["stabilityai/sd-turbo"], "hfTokenSecret": {"name": "hf"}}},
    "inferenceWorker": {"models": ["tiny-sd", "tiny-sdxl"], "runtimeClassName": "nvidia"},
}


@functools.cache
def chart(path: str = str(CHART_DIR)) -> helm.Chart:
    return helm.Chart.load(path)


def render_raw(values: dict[str, Any] | None = None, chart_dir: Path = CHART_DIR) -> dict[str, str]:
    return chart(str(chart_dir)).render(
        copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True
    )


def render(values: dict[str, Any] | None = None, chart_dir: Path = CHART_DIR) -> list[Doc]:
    """Every manifest the chart renders (NOTES.txt left out), as dictionaries."""
    docs: list[Doc] = []
    for name, text in sorted(render_raw(values, chart_dir).items()):
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, dict[str, Any]]]:
    """(owner, pod spec) for every workload and bare Pod."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d, d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d, d["spec"]


def is_hook_or_job(doc: Doc) -> bool:
    return doc["kind"] in ("Job", "Pod") or "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


# ---------------------------------------------------------------- schemas


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema as strict JSON Schema: objects with listed properties refuse unknown
    fields (what kubectl's default server-side field validation does), except where the CRD keeps
    unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON Schema, from the vendored CRDs."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {"type": "object"}
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def crd_documents() -> list[Doc]:
    return [d for p in sorted(CRD_DIR.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


K8S_VERSION = kubernetes_validate.latest_version()


def validate(doc: Doc) -> None:
    """Validates one manifest against the Kubernetes (or vendored CRD) schema; raises with the path."""
    key = (doc["apiVersion"], doc["kind"])
    crds = crd_schemas()
    if key in crds:
        jsonschema.Draft202012Validator(crds[key]).validate(doc)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def dump(doc: Doc) -> str:
    return json.dumps(doc, indent=1)[:4000]
