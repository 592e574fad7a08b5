"""Wrong values stop `helm install/upgrade/template` with a message that names the value: the
chart's values.schema.json for single values, templates/validate.yaml for rules across values."""

from __future__ import annotations

import helm_python as helm
import pytest

from ._chart import VALUES_DIR, load_values, render_raw

# file -> what the error message must say (the value's path, and why).
BAD = {
    "bad-negative-replicas.yaml": ["/gateway/replicas", "minimum: got -1, want 0"],
    "bad-missing-database.yaml": ["database.url or database.existingSecret is required"],
    "bad-worker-grace.yaml": [
        "inferenceWorker.shutdownGraceSeconds (120)",
        "inferenceWorker.terminationGracePeriodSeconds (60)",
    ],
    "bad-model-name.yaml": ["/inferenceWorker/models/0", "does not match pattern"],
    "bad-missing-requests.yaml": ["/auth/resources", "missing property 'requests'"],
    "bad-unknown-key.yaml": ["/inferenceWorker", "'replica' not allowed"],
}


def test_every_bad_values_file_is_covered() -> None:
    assert {p.name for p in VALUES_DIR.glob("bad-*.yaml")} == set(BAD)


@pytest.mark.parametrize("filename", sorted(BAD))
def test_bad_values_fail_rendering_naming_the_value(filename: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        render_raw(load_values(VALUES_DIR / filename))
    message = str(caught.value)
    for expected in BAD[filename]:
        assert expected in message, message


def test_bad_values_also_fail_lint() -> None:
    from ._chart import CHART_DIR

    report = helm.lint(str(CHART_DIR), load_values(VALUES_DIR / "bad-negative-replicas.yaml"))
    assert any("/gateway/replicas" in e for e in report["errors"])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"s3": {"accessKey": "AK"}}, "s3.secretKey is required with s3.accessKey"),
        ({"s3": {"existingSecret": ""}}, "s3.accessKey/s3.secretKey or s3.existingSecret is required"),
        ({"nats": {"url": ""}}, "nats.url or nats.existingSecret is required"),
        ({"inCluster": {"postgres": {"enabled": True}}}, "inCluster.postgres.password is required"),
        (
            {"inferenceWorker": {"autoscaling": {"minReplicas": 9}}},
            "inferenceWorker.autoscaling.minReplicas (9)",
        ),
        ({"inferenceWorker": {"models": []}}, "/inferenceWorker/models"),
        ({"inferenceWorker": {"gpu": {"count": 0}}}, "/inferenceWorker/gpu/count"),
        ({"models": {"prefetch": {"bundled": False}}}, "models.prefetch.enabled needs something to fetch"),
        ({"ingress": {"tls": {"enabled": True}}}, "ingress.tls.secretName is required"),
        ({"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser"),
        ({"global": {"logLevel": "verbose"}}, "/global/logLevel"),
    ],
)
def test_other_wrong_values_are_refused(values: dict[str, object], expected: str) -> None:
    with pytest.raises(helm.HelmError, match=None) as caught:
        render_raw(values)
    assert expected in str(caught.value), str(caught.value)


def test_values_schema_is_valid_and_the_shipped_values_pass_it() -> None:
    import json

    import jsonschema

    from ._chart import CHART_DIR, PRODUCTION_VALUES, chart

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for values in (
        load_values(CHART_DIR / "values.yaml"),
        chart().merge_values(load_values(PRODUCTION_VALUES)),
    ):
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)
        ]
        assert errors == []
