"""The Grafana dashboards and Prometheus alert rules in the chart: valid, rendered, and every PromQL
query names only metrics (and labels) the code exports.

The exported names come from the code itself: every module under services/ that defines Prometheus
metrics is imported and `prometheus_client.REGISTRY` is read, with the sample suffixes each metric
type produces (`_total`, `_bucket`, `_sum`, `_count`, ...). Nothing is listed by hand.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from ._chart import CHART_DIR, PRODUCTION_VALUES, ROOT, find, load_values, render, validate

DASHBOARDS = sorted((CHART_DIR / "dashboards").glob("*.json"))
RULE_FILES = sorted((CHART_DIR / "rules").glob("*.yaml"))
# Labels Prometheus (and the Prometheus operator's ServiceMonitors) put on every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan", "atan2",
}  # fmt: skip


def _metric_modules() -> list[str]:
    """Every module under services/ whose source defines or registers Prometheus metrics."""
    names = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        if path.name == "__main__.py":
            continue
        text = path.read_text()
        if "prometheus_client" in text:
            names.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return names


@functools.cache
def exported() -> dict[str, set[str] | None]:
    """Sample name -> the labels it carries (None where a custom collector does not say)."""
    modules = _metric_modules()
    assert "services.common.db" in modules and "services.inference.worker.metrics" in modules, modules
    for module in modules:
        importlib.import_module(module)
    labels_of: dict[str, set[str]] = {}
    # The label names of a metric without samples yet are only on the metric object itself.
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                labels_of[family.name] = set(collector._labelnames)
    names: dict[str, set[str] | None] = {}
    for family in REGISTRY.collect():
        labels = labels_of.get(family.name)
        for suffix in SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = None if labels is None else labels | extra
        for sample in family.samples:
            names.setdefault(sample.name, None)
    return names


def _strip(expr: str) -> str:
    """The expression without strings, durations, numbers and Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)
    return re.sub(r"\[[^\]]*\]", "", expr)


def referenced(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched in its selector) for every metric an expression reads."""
    text = _strip(expr)
    # Label lists of by/without/on/ignoring/group_*, which name labels, not metrics.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found: list[tuple[str, set[str]]] = []
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?", text):
        name, selector, call = m.group(1), m.group(2), m.group(3)
        if call and not selector:
            continue  # a function or aggregation
        if name in PROMQL_WORDS:
            continue
        labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector or ""))
        found.append((name, labels))
    return found


def test_the_parser_finds_metrics_and_labels() -> None:
    # The checks below are only as good as this: make sure it sees through PromQL syntax.
    expr = (
        'sum by (model, le) (rate(easel_a_bucket{model=~"$model", kind!="x"}[$__rate_interval])) '
        "/ on (model) group_left max without (stat) (easel_b) > 0 unless easel_c offset 5m"
    )
    assert referenced(expr) == [
        ("easel_a_bucket", {"model", "kind"}),
        ("easel_b", set()),
        ("easel_c", set()),
    ]
    assert referenced("label_values(easel_q, model)") == [("easel_q", set()), ("model", set())]


def _dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of a dashboard."""
    out: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for panel in items:
            for target in panel.get("targets", []):
                out.append((f"panel {panel.get('title')!r}", target["expr"]))
            panels(panel.get("panels", []))

    panels(board["panels"])
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert m, f"variable {var['name']}: use label_values(<selector>, <label>), got {query!r}"
            out.append((f"variable {var['name']}", m.group(1)))
    return out


def _rules() -> list[tuple[str, dict[str, Any]]]:
    rules = []
    for path in RULE_FILES:
        doc = yaml.safe_load(path.read_text())
        assert set(doc) == {"groups"}, f"{path.name}: a rules file holds only `groups:`"
        for group in doc["groups"]:
            assert group["name"].startswith("easel.") and group["rules"]
            for rule in group["rules"]:
                rules.append((path.name, rule))
    return rules


def _check_query(where: str, expr: str) -> list[str]:
    problems = []
    names = exported()
    refs = referenced(expr)
    if not refs:
        problems.append(f"{where}: no metric in {expr!r}")
    for name, labels in refs:
        if name not in names:
            problems.append(f"{where}: {name} is not exported by any Easel process")
            continue
        known = names[name]
        if known is not None and not labels <= known | TARGET_LABELS:
            problems.append(
                f"{where}: {name} has no label(s) {sorted(labels - known)}; it has {sorted(known)}"
            )
    return problems


def test_there_are_dashboards_and_rules() -> None:
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS}
    assert {"Easel / Overview", "Easel / Inference"} <= titles
    alerts = {rule["alert"] for _, rule in _rules()}
    assert {
        "EaselHttpErrorRatioHigh",
        "EaselGrpcErrorRatioHigh",
        "EaselQueueWaitOverTarget",
        "EaselWorkersNotConsuming",
        "EaselGpuMemoryNearLimit",
    } <= alerts


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_is_valid_grafana_json(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["uid"] and len(board["uid"]) <= 40 and board["title"]
    assert "id" not in board or board["id"] is None, "an exported id would clash on import"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids: list[int] = []
    for panel in board["panels"]:
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        # The datasource is the variable, never a fixed uid of someone's Grafana.
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            # Every $variable used is defined (Grafana's own ones start with __).
            for var in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert var.startswith("__") or var in variables, f"{panel['title']}: ${var} is not defined"
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # No two panels overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"panel {panel['title']!r} overlaps another"
        cells |= area


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_queries_name_exported_metrics(path: Path) -> None:
    board = json.loads(path.read_text())
    problems = [p for where, expr in _dashboard_queries(board) for p in _check_query(where, expr)]
    assert not problems, "\n".join(problems)


def test_rules_are_valid_and_name_exported_metrics() -> None:
    problems: list[str] = []
    seen: set[str] = set()
    for file, rule in _rules():
        name = rule["alert"]
        assert name not in seen, f"{file}: alert {name} twice"
        seen.add(name)
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        # Brackets balance (a cheap guard against a truncated expression).
        expr = _strip(rule["expr"])
        assert expr.count("(") == expr.count(")"), name
        problems += _check_query(f"alert {name}", rule["expr"])
        # Annotations may use only labels the expression keeps.
        for label in re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])):
            assert label in rule["expr"] or label in TARGET_LABELS, f"{name}: $labels.{label} is not kept"
    assert not problems, "\n".join(problems)


def test_chart_renders_the_dashboards_and_rules() -> None:
    values = load_values(PRODUCTION_VALUES)
    values.setdefault("monitoring", {}).setdefault("prometheusRules", {})["enabled"] = True
    docs = render(values)
    maps = {
        key: doc
        for doc in find(docs, "ConfigMap")
        if doc["metadata"]["labels"].get("grafana_dashboard") == "1"
        for key in doc["data"]
    }
    assert set(maps) == {p.name for p in DASHBOARDS}
    for path in DASHBOARDS:
        # The ConfigMap carries the file as it is.
        assert json.loads(maps[path.name]["data"][path.name]) == json.loads(path.read_text())
        validate(maps[path.name])
    rules = find(docs, "PrometheusRule")
    assert len(rules) == len(RULE_FILES)
    rendered = {r["alert"] for doc in rules for g in doc["spec"]["groups"] for r in g["rules"]}
    assert rendered == {rule["alert"] for _, rule in _rules()}
    for doc in rules:
        validate(doc)
    # Annotations reach Prometheus untemplated.
    assert any("{{ $labels.model }}" in json.dumps(doc) for doc in rules)
