"""`make helm-lint`: lint the chart with Helm's own linter (strict) and validate every rendered
manifest against the Kubernetes schemas and the vendored CRD schemas, for the default values and the
production example. Run from the repository root: `python -m tests.chart.lint`."""

from __future__ import annotations

import sys
from typing import Any

import helm_python as helm

from ._chart import CHART_DIR, EVERYTHING, K8S_VERSION, PRODUCTION_VALUES, load_values, render, validate

SEVERITY = {0: "unknown", 1: "info", 2: "warning", 3: "error"}


def check(label: str, values: dict[str, Any]) -> int:
    problems = 0
    report = helm.lint(str(CHART_DIR), values, strict=True, namespace="easel")
    for message in report["messages"]:
        severity = SEVERITY.get(message["severity"], "?")
        print(f"  [{label}] lint {severity}: {message['path']}: {message['error'].strip()}")
        problems += message["severity"] >= 2
    docs = render(values)
    for doc in docs:
        try:
            validate(doc)
        except Exception as exc:  # every failure is reported, then counted
            problems += 1
            print(f"  [{label}] {doc['kind']} {doc['metadata']['name']}: {getattr(exc, 'message', exc)}")
    print(
        f"{label}: helm lint --strict {'clean' if not report['errors'] else 'FAILED'}; "
        f"{len(docs)} manifests checked against Kubernetes {K8S_VERSION} and the CRD schemas"
    )
    return problems


def main() -> int:
    print(f"chart {CHART_DIR} (Helm SDK {helm.helm_sdk_version()})")
    problems = sum(
        check(label, values)
        for label, values in (
            ("default", {}),
            ("production", load_values(PRODUCTION_VALUES)),
            ("everything", EVERYTHING),
        )
    )
    if problems:
        print(f"helm-lint: {problems} problem(s)")
        return 1
    print("helm-lint: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
