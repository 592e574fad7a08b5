"""The Helm chart (deploy/helm/easel), rendered offline by Helm's own engine and checked against the
Kubernetes schemas, the vendored KEDA/Prometheus-operator CRD schemas, and the deployment rules in
ARCHITECTURE.md and the deploy issue."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from services.common.messaging import JOBS_STREAM, worker_consumer_name

from ._chart import (
    CHART_DIR,
    EVERYTHING,
    PRODUCTION_VALUES,
    Doc,
    crd_documents,
    dump,
    find,
    is_hook_or_job,
    load_values,
    one,
    pod_specs,
    render,
    validate,
)

SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "production": load_values(PRODUCTION_VALUES),
    "everything": EVERYTHING,
}
STATELESS = ("gateway", "auth", "gallery", "inference-api")
COMPONENTS = (*STATELESS, "inference-worker")


@pytest.fixture(scope="module", params=list(SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, render(SETS[request.param])


@pytest.fixture(scope="module")
def default_docs() -> list[Doc]:
    return render({})


@pytest.fixture(scope="module")
def production_docs() -> list[Doc]:
    return render(SETS["production"])


def name(component: str) -> str:
    return f"easel-{component}"


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


# ---------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("values", list(SETS))
def test_helm_lint_is_clean(values: str) -> None:
    report = helm.lint(str(CHART_DIR), SETS[values], strict=True, namespace="easel")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_manifest_validates_against_kubernetes_and_crd_schemas(rendered: tuple[str, list[Doc]]) -> None:
    label, docs = rendered
    assert len(docs) > 20
    for doc in docs:
        try:
            validate(doc)
        except Exception as exc:
            pytest.fail(f"[{label}] {doc['kind']} {doc['metadata']['name']}: {exc}\n{dump(doc)}")


def test_vendored_crds_are_valid_crds_and_the_validator_is_strict(default_docs: list[Doc]) -> None:
    for crd in crd_documents():
        validate(crd)
    scaled = one(default_docs, "ScaledObject", name("inference-worker"))
    broken = {**scaled, "spec": {**scaled["spec"], "maxReplicas": 3}}  # KEDA calls it maxReplicaCount
    with pytest.raises(Exception, match="maxReplicas"):
        validate(broken)
    deployment = one(default_docs, "Deployment", name("gateway"))
    with pytest.raises(Exception, match="replica"):
        validate({**deployment, "spec": {**deployment["spec"], "replica": 2}})


# ---------------------------------------------------------------- containers


def test_every_container_has_resources_probes_and_a_locked_down_security_context(
    rendered: tuple[str, list[Doc]],
) -> None:
    label, docs = rendered
    checked = 0
    for owner, spec in pod_specs(docs):
        where = f"[{label}] {owner['kind']} {owner['metadata']['name']}"
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, where
        assert pod_sc["runAsUser"] > 0, where
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec.get("automountServiceAccountToken") is False, where
        mounts_tmp = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in containers(spec):
            cwhere = f"{where} container {c['name']}"
            res = c.get("resources", {})
            assert res.get("requests", {}).get("cpu") and res["requests"].get("memory"), cwhere
            assert res.get("limits", {}).get("memory") and res["limits"].get("cpu"), cwhere
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, cwhere
            assert sc["readOnlyRootFilesystem"] is True, cwhere
            assert sc["allowPrivilegeEscalation"] is False, cwhere
            assert sc["capabilities"]["drop"] == ["ALL"], cwhere
            assert "add" not in sc["capabilities"], cwhere
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, cwhere
            assert sc.get("privileged", False) is False, cwhere
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if c not in spec.get("initContainers", []):
                assert tmp and tmp[0]["name"] in mounts_tmp, f"{cwhere}: no emptyDir at /tmp"
            if not is_hook_or_job(owner) and c in spec["containers"]:
                for probe in ("livenessProbe", "readinessProbe"):
                    assert probe in c, f"{cwhere}: no {probe}"
            names = [e["name"] for e in c.get("env", [])]
            assert len(names) == len(set(names)), f"{cwhere}: an env name twice breaks server-side apply"
            checked += 1
    assert checked >= 6


def test_grpc_services_use_native_grpc_probes_and_http_services_http_probes(default_docs: list[Doc]) -> None:
    ports = {"auth": 50051, "gallery": 50052, "inference-api": 50053}
    for component, port in ports.items():
        c = one(default_docs, "Deployment", name(component))["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["grpc"] == {"port": port}, (component, probe)
    gw = one(default_docs, "Deployment", name("gateway"))["spec"]["template"]["spec"]["containers"][0]
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    worker = one(default_docs, "Deployment", name("inference-worker"))["spec"]["template"]["spec"]
    wc = worker["containers"][0]
    assert wc["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert wc["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert wc["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": 9104, "protocol": "TCP"} in wc["ports"]


def test_services_listen_on_all_interfaces_and_find_each_other(default_docs: list[Doc]) -> None:
    def env(component: str) -> dict[str, Any]:
        c = one(default_docs, "Deployment", name(component))["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}

    gw = env("gateway")
    assert gw["EASEL_HTTP_HOST"] == "0.0.0.0" and gw["EASEL_HTTP_PORT"] == "8080"
    # /metrics has its own port, never the public one.
    assert gw["EASEL_METRICS_HOST"] == "0.0.0.0" and gw["EASEL_METRICS_PORT"] == "9105"
    assert gw["EASEL_AUTH_TARGET"] == "easel-auth:50051"
    assert gw["EASEL_GALLERY_TARGET"] == "easel-gallery:50052"
    assert gw["EASEL_INFERENCE_TARGET"] == "easel-inference-api:50053"
    for component in ("auth", "gallery", "inference-api"):
        e = env(component)
        assert e["EASEL_GRPC_HOST"] == "0.0.0.0" and e["EASEL_METRICS_HOST"] == "0.0.0.0"
        assert e["EASEL_DATABASE_URL"] == {"secretKeyRef": {"name": "easel-database", "key": "url"}}
    gallery = env("gallery")
    assert gallery["EASEL_S3_ENDPOINT"] == "minio:9000"
    assert gallery["EASEL_S3_SECRET_KEY"] == {"secretKeyRef": {"name": "easel-s3", "key": "secretKey"}}
    api = env("inference-api")
    assert api["EASEL_NATS_URL"] == {"secretKeyRef": {"name": "easel-nats", "key": "url"}}
    assert api["EASEL_MODELS_DIR"] == "/models"
    worker = env("inference-worker")
    assert worker["EASEL_GALLERY_TARGET"] == "easel-gallery:50052"
    assert worker["EASEL_WORKER_MODELS"] == "tiny-sd"
    assert worker["EASEL_MODELS_DIR"] == "/models" and worker["HF_HUB_OFFLINE"] == "1"
    for component in COMPONENTS:
        e = env(component)
        assert (
            float(e["EASEL_SHUTDOWN_GRACE_S"])
            < one(default_docs, "Deployment", name(component))["spec"]["template"]["spec"][
                "terminationGracePeriodSeconds"
            ]
        )


def test_inline_credentials_become_chart_secrets_and_existing_secrets_are_referenced() -> None:
    docs = render(
        {
            "database": {"url": "postgresql://u:p@db:5432/easel"},
            "nats": {"url": "", "existingSecret": "my-nats", "existingSecretKey": "nats-url"},
            "s3": {"accessKey": "AK", "secretKey": "SK"},
        }
    )
    db = one(docs, "Secret", "easel-database")
    assert db["stringData"]["url"] == "postgresql://u:p@db:5432/easel"
    assert one(docs, "Secret", "easel-s3")["stringData"] == {"accessKey": "AK", "secretKey": "SK"}
    assert not find(docs, "Secret", "easel-nats")
    api = one(docs, "Deployment", name("inference-api"))["spec"]["template"]["spec"]["containers"][0]
    nats = next(e for e in api["env"] if e["name"] == "EASEL_NATS_URL")
    assert nats["valueFrom"]["secretKeyRef"] == {"name": "my-nats", "key": "nats-url"}
    # The pods roll when a chart-managed secret changes.
    before = one(docs, "Deployment", name("auth"))["spec"]["template"]["metadata"]["annotations"]
    other = render({"database": {"url": "postgresql://u:p2@db:5432/easel"}})
    after = one(other, "Deployment", name("auth"))["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/secrets"] != after["checksum/secrets"]


# ---------------------------------------------------------------- models and GPU workers


def test_worker_requests_a_gpu_and_mounts_the_model_volume_read_only(rendered: tuple[str, list[Doc]]) -> None:
    label, docs = rendered
    deployment = one(docs, "Deployment", name("inference-worker"))
    spec = deployment["spec"]["template"]["spec"]
    worker = spec["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1, label
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1, label
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec["tolerations"]), label
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    claim = models["persistentVolumeClaim"]
    assert claim == {"claimName": "easel-models", "readOnly": True}, label
    for c in containers(spec):
        mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
        assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}, (label, c["name"])
    # Drain on SIGTERM: a long grace period, no preStop hook (the process handles SIGTERM itself).
    assert spec["terminationGracePeriodSeconds"] >= 300
    assert "lifecycle" not in worker
    # Waits for the models before starting; ready only when they are loaded.
    wait = spec["initContainers"][0]
    assert wait["name"] == "wait-for-models"
    served = (SETS[label].get("inferenceWorker") or {}).get("models", ["tiny-sd"])
    script = wait["args"][0]
    assert f"for m in {' '.join(served)};" in script and "easel-model.json" in script
    if label == "default":
        assert worker["startupProbe"]["failureThreshold"] * worker["startupProbe"]["periodSeconds"] >= 600


def test_gpu_can_be_switched_off_for_cpu_clusters() -> None:
    docs = render({"inferenceWorker": {"gpu": {"enabled": False}, "tolerations": []}})
    worker = one(docs, "Deployment", name("inference-worker"))["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]


def test_worker_compiles_with_its_cache_in_a_writable_folder_of_the_model_volume(
    default_docs: list[Doc],
) -> None:
    spec = one(default_docs, "Deployment", name("inference-worker"))["spec"]["template"]["spec"]
    worker = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["EASEL_WORKER_COMPILE"] == "auto"
    assert env["EASEL_WORKER_COMPILE_BUCKETS"] == "1,2,4,8,16"
    assert env["EASEL_WORKER_BATCH_MAX"] == "16"
    assert env["EASEL_WORKER_COMPILE_CACHE_DIR"] == "/compile-cache"
    assert env["EASEL_WORKER_COMPILE_VAE"] == "false"
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "compile-cache")
    assert mount == {"name": "compile-cache", "mountPath": "/compile-cache", "subPath": ".compile-cache"}
    volume = next(v for v in spec["volumes"] if v["name"] == "compile-cache")
    assert volume["persistentVolumeClaim"] == {"claimName": "easel-models"}

    docs = render(
        {"inferenceWorker": {"compile": {"cacheSubPath": "", "mode": "none", "sizes": ["768x512"]}}}
    )
    spec = one(docs, "Deployment", name("inference-worker"))["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["EASEL_WORKER_COMPILE"] == "none" and env["EASEL_WORKER_COMPILE_SIZES"] == "768x512"
    assert env["EASEL_WORKER_COMPILE_CACHE_DIR"] == "/tmp/compile-cache"
    assert all(v["name"] != "compile-cache" for v in spec["volumes"])


def test_inference_api_mounts_the_model_volume_read_only(default_docs: list[Doc]) -> None:
    spec = one(default_docs, "Deployment", name("inference-api"))["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] is True
    for component in ("gateway", "auth", "gallery"):
        other = one(default_docs, "Deployment", name(component))["spec"]["template"]["spec"]
        assert all(v["name"] != "models" for v in other["volumes"]), component


def test_prefetch_job_fills_the_model_volume_with_the_fetch_command(
    default_docs: list[Doc], production_docs: list[Doc]
) -> None:
    pvc = one(default_docs, "PersistentVolumeClaim", "easel-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    jobs = [j for j in find(default_docs, "Job") if j["metadata"]["name"].startswith("easel-model-prefetch-")]
    assert len(jobs) == 1
    spec = jobs[0]["spec"]["template"]["spec"]
    fetch = spec["containers"][0]
    script = fetch["args"][0]
    assert "python -m services.inference.fetch --models-dir '/models' --bundled" in script
    mount = next(m for m in fetch["volumeMounts"] if m["name"] == "models")
    assert mount.get("readOnly", False) is False  # the only writer
    assert fetch["image"] == "easel/inference-worker:0.1.0"

    prod = next(j for j in find(production_docs, "Job") if "model-prefetch" in j["metadata"]["name"])
    prod_script = prod["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "--bundled" not in prod_script
    assert "'stabilityai/sd-turbo' 'stabilityai/sdxl-turbo'" in prod_script
    env = {e["name"]: e for e in prod["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "huggingface", "key": "token"}
    assert env["HF_HUB_OFFLINE"]["value"] == "0"
    # A different model list is a different Job (a Job's pod template is immutable).
    assert prod["metadata"]["name"] != jobs[0]["metadata"]["name"]


def test_prefetch_job_name_changes_with_its_template_and_only_then() -> None:
    def job_name(values: dict[str, Any]) -> str:
        return next(
            j["metadata"]["name"] for j in find(render(values), "Job") if "prefetch" in j["metadata"]["name"]
        )

    base = job_name({})
    assert job_name({}) == base
    assert job_name({"gateway": {"replicas": 5}}) == base
    assert job_name({"models": {"prefetch": {"resources": {"limits": {"memory": "9Gi"}}}}}) != base
    assert job_name({"global": {"imageTag": "0.2.0"}}) != base
    assert job_name({"models": {"prefetch": {"hub": ["org/model"]}}}) != base


def test_existing_model_claim_is_used_and_not_created() -> None:
    docs = render({"models": {"persistence": {"existingClaim": "shared-models"}}})
    assert not find(docs, "PersistentVolumeClaim")
    spec = one(docs, "Deployment", name("inference-worker"))["spec"]["template"]["spec"]
    assert next(v for v in spec["volumes"] if v["name"] == "models")["persistentVolumeClaim"] == {
        "claimName": "shared-models",
        "readOnly": True,
    }


def test_migrations_job_is_a_pre_install_and_pre_upgrade_hook(default_docs: list[Doc]) -> None:
    job = one(default_docs, "Job", "easel-migrations")
    notes = job["metadata"]["annotations"]
    assert notes["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "services.migrate"]
    db = next(e for e in container["env"] if e["name"] == "EASEL_DATABASE_URL")
    assert db["valueFrom"]["secretKeyRef"] == {"name": "easel-database", "key": "url"}
    # With a URL in values, the hook gets its own hook Secret (the release's Secrets come later).
    docs = render({"database": {"url": "postgresql://u:p@db/easel"}})
    secret = one(docs, "Secret", "easel-migrations")
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        one(docs, "Job", "easel-migrations")["metadata"]["annotations"]["helm.sh/hook-weight"]
    )


# ---------------------------------------------------------------- scaling


def test_scaled_object_targets_the_worker_deployment_and_its_consumers(
    rendered: tuple[str, list[Doc]],
) -> None:
    label, docs = rendered
    scaled = one(docs, "ScaledObject", name("inference-worker"))
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    deployment = one(docs, "Deployment", target["name"])
    assert target["kind"] == "Deployment" and target["apiVersion"] == "apps/v1"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "inference-worker"
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    values = SETS[label].get("inferenceWorker", {})
    models = values.get("models", ["tiny-sd"])
    autoscaling = {"minReplicas": 1, "maxReplicas": 4, "lagThreshold": 5, **values.get("autoscaling", {})}
    assert spec["minReplicaCount"] == autoscaling["minReplicas"]
    assert spec["maxReplicaCount"] == autoscaling["maxReplicas"]
    triggers = spec["triggers"]
    assert [t["metadata"]["consumer"] for t in triggers] == [worker_consumer_name(m) for m in models]
    for t in triggers:
        assert t["type"] == "nats-jetstream"
        meta = t["metadata"]
        assert meta["stream"] == JOBS_STREAM
        assert meta["lagThreshold"] == str(autoscaling["lagThreshold"])
        assert set(meta) <= {
            "natsServerMonitoringEndpoint",
            "account",
            "stream",
            "consumer",
            "lagThreshold",
            "activationLagThreshold",
            "useHttps",
        }
        assert all(isinstance(v, str) for v in meta.values())
    if label == "production":
        assert triggers[0]["metadata"]["natsServerMonitoringEndpoint"] == "nats.nats.svc.cluster.local:8222"


def test_hpas_scale_the_stateless_services_on_cpu(default_docs: list[Doc]) -> None:
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in find(default_docs, "HorizontalPodAutoscaler")}
    assert set(hpas) == {name(c) for c in STATELESS}
    for component in STATELESS:
        hpa = hpas[name(component)]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert "replicas" not in one(default_docs, "Deployment", name(component))["spec"]
    docs = render({"gateway": {"autoscaling": {"enabled": False}, "replicas": 3}})
    assert one(docs, "Deployment", name("gateway"))["spec"]["replicas"] == 3
    assert not [h for h in find(docs, "HorizontalPodAutoscaler") if h["metadata"]["name"] == name("gateway")]


def test_keda_can_be_switched_off() -> None:
    docs = render({"inferenceWorker": {"autoscaling": {"enabled": False}, "replicas": 2}})
    assert not find(docs, "ScaledObject")
    assert one(docs, "Deployment", name("inference-worker"))["spec"]["replicas"] == 2


def test_dispatch_window_keeps_a_backlog_visible_to_keda() -> None:
    """The api holds jobs back in Postgres (fair dispatch); its window must leave room for a batch per
    worker at KEDA's maximum plus one more, or a backlog would never show as consumer lag."""

    def window(values: dict[str, Any]) -> str:
        c = one(render(values), "Deployment", name("inference-api"))["spec"]["template"]["spec"][
            "containers"
        ][0]
        return str({e["name"]: e.get("value") for e in c["env"]}["EASEL_DISPATCH_WINDOW"])

    assert window({}) == str(16 * (4 + 1))  # batchMax 16, KEDA up to 4 workers
    assert window({"inferenceWorker": {"batchMax": 4, "autoscaling": {"maxReplicas": 10}}}) == str(4 * 11)
    assert window({"inferenceWorker": {"autoscaling": {"enabled": False}, "replicas": 2}}) == str(16 * 3)
    assert window({"inferenceApi": {"dispatchWindow": 12}}) == "12"


def test_every_component_has_a_pod_disruption_budget(default_docs: list[Doc]) -> None:
    pdbs = {p["metadata"]["name"]: p for p in find(default_docs, "PodDisruptionBudget")}
    for component in COMPONENTS:
        pdb = pdbs[name(component)]
        deployment = one(default_docs, "Deployment", name(component))
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["maxUnavailable"] == 1


# ---------------------------------------------------------------- network


def _selects(selector: dict[str, Any], component: str) -> bool:
    labels = {
        "app.kubernetes.io/name": "easel",
        "app.kubernetes.io/instance": "easel",
        "app.kubernetes.io/component": component,
    }
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _admitted(policy: Doc, port: int) -> list[dict[str, Any]]:
    """The `from` peers of every ingress rule that opens `port` (None: from anywhere)."""
    peers: list[dict[str, Any]] = []
    for rule in policy["spec"].get("ingress") or []:
        if any(p["port"] == port for p in rule.get("ports", [])):
            peers.extend(rule.get("from") or [{"anywhere": True}])
    return peers


def test_network_policies_admit_only_the_listed_callers(rendered: tuple[str, list[Doc]]) -> None:
    label, docs = rendered
    policies = {p["metadata"]["name"]: p for p in find(docs, "NetworkPolicy")}
    callers = {
        "auth": ["gateway"],
        "gallery": ["gateway", "inference-worker"],
        "inference-api": ["gateway"],
    }
    grpc_ports = {"auth": 50051, "gallery": 50052, "inference-api": 50053}
    metrics_ports = {
        "gateway": 9105,
        "auth": 9101,
        "gallery": 9102,
        "inference-api": 9103,
        "inference-worker": 9104,
    }
    other_ports = {**grpc_ports, "gateway": 8080}  # the gateway's public port: see below
    for component in (*COMPONENTS, "migrations", "model-prefetch"):
        policy = policies[name(component)]
        assert _selects(policy["spec"]["podSelector"], component)
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, component
    for component, port in grpc_ports.items():
        policy = policies[name(component)]
        peers = _admitted(policy, port)
        assert all(set(p) == {"podSelector"} for p in peers), (label, component, peers)
        admitted = sorted(
            c
            for c in (*COMPONENTS, "migrations", "model-prefetch")
            if any(_selects(p["podSelector"], c) for p in peers)
        )
        assert admitted == sorted(callers[component]), (label, component)
    for component, port in metrics_ports.items():
        policy = policies[name(component)]
        peers = _admitted(policy, port)
        assert peers and all(set(p) == {"namespaceSelector"} for p in peers), (label, component)
        ports = {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]}
        assert ports == ({port, other_ports[component]} if component in other_ports else {port}), component
    # Nothing reaches the workers or the Jobs but Prometheus.
    for component in ("migrations", "model-prefetch"):
        assert policies[name(component)]["spec"]["ingress"] == []
    # The gateway: the only component open beyond the namespace.
    gateway = policies[name("gateway")]
    peers = _admitted(gateway, 8080)
    if label == "production":
        assert {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
        } in peers
        assert {"anywhere": True} not in peers
    else:
        assert {"anywhere": True} in peers
    for component in ("auth", "gallery", "inference-api", "inference-worker"):
        assert {"anywhere": True} not in [
            p
            for r in policies[name(component)]["spec"]["ingress"]
            for p in (r.get("from") or [{"anywhere": True}])
        ]


def test_egress_is_limited_to_dns_callees_and_dependencies(default_docs: list[Doc]) -> None:
    policies = {p["metadata"]["name"]: p for p in find(default_docs, "NetworkPolicy")}

    def ports(component: str) -> set[int]:
        return {p["port"] for r in policies[name(component)]["spec"]["egress"] for p in r["ports"]}

    assert ports("gateway") == {53, 50051, 50052, 50053}
    assert ports("auth") == {53, 5432}
    assert ports("gallery") == {53, 5432, 443, 9000}
    assert ports("inference-api") == {53, 5432, 4222}
    assert ports("inference-worker") == {53, 4222, 50052}
    assert ports("migrations") == {53, 5432}
    assert ports("model-prefetch") == {53, 443}
    worker_to_gallery = [
        r for r in policies[name("inference-worker")]["spec"]["egress"] if r["ports"][0]["port"] == 50052
    ]
    assert _selects(worker_to_gallery[0]["to"][0]["podSelector"], "gallery")


def test_only_the_gateway_has_an_ingress(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    ingresses = find(docs, "Ingress")
    assert len(ingresses) == 1
    backends = [
        p["backend"]["service"]["name"] for r in ingresses[0]["spec"]["rules"] for p in r["http"]["paths"]
    ]
    assert backends == [name("gateway")]
    for service in find(docs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]


# ---------------------------------------------------------------- monitoring


def test_service_monitors_cover_every_metrics_port(
    default_docs: list[Doc], production_docs: list[Doc]
) -> None:
    assert not find(default_docs, "ServiceMonitor")
    monitors = {m["metadata"]["name"]: m for m in find(production_docs, "ServiceMonitor")}
    assert set(monitors) == {name(c) for c in COMPONENTS}
    for component in COMPONENTS:
        monitor = monitors[name(component)]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        service = one(production_docs, "Service", name(component))
        port_names = {p["name"] for p in service["spec"]["ports"]}
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
        assert endpoint["port"] == "metrics", component  # the gateway's public port serves no metrics
        assert _selects(monitor["spec"]["selector"], component)


def test_dashboards_and_rules_folders_render_nothing_when_empty(production_docs: list[Doc]) -> None:
    # The folders hold only their README until dashboards and rules are added.
    if not list((CHART_DIR / "dashboards").glob("*.json")):
        assert not [
            c for c in find(production_docs, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]
        ]
    if not list((CHART_DIR / "rules").glob("*.yaml")):
        assert not find(production_docs, "PrometheusRule")


def test_dashboards_and_rules_render_from_their_folders(tmp_path: Path) -> None:
    chart = tmp_path / "easel"
    shutil.copytree(CHART_DIR, chart)
    # Only this test's files: the chart's own dashboards and rules are checked in test_dashboards.py.
    for shipped in [*(chart / "dashboards").glob("*.json"), *(chart / "rules").glob("*.yaml")]:
        shipped.unlink()
    (chart / "dashboards" / "Easel_Overview.json").write_text('{"title": "Easel overview", "panels": []}\n')
    (chart / "rules" / "inference.yaml").write_text(
        "groups:\n  - name: easel.inference\n    rules:\n      - alert: EaselQueueBacklog\n"
        "        expr: sum(easel_jobs_queued) > 100\n        for: 10m\n"
        "        labels: {severity: warning}\n"
        "        annotations: {summary: 'queue at {{ $value }}'}\n"
    )
    values = load_values(PRODUCTION_VALUES)
    docs = render(values, chart_dir=chart)
    dashboards = [
        c for c in find(docs, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) == 1
    assert dashboards[0]["metadata"]["name"] == "easel-dashboard-easel-overview"
    assert dashboards[0]["metadata"]["annotations"]["grafana_folder"] == "Easel"
    assert '"title": "Easel overview"' in dashboards[0]["data"]["Easel_Overview.json"]
    rules = find(docs, "PrometheusRule")
    assert len(rules) == 1
    rule = rules[0]["spec"]["groups"][0]["rules"][0]
    assert rule["alert"] == "EaselQueueBacklog"
    assert rule["annotations"]["summary"] == "queue at {{ $value }}"  # passed through, not templated
    for doc in (*dashboards, *rules):
        validate(doc)
    # Switched off: nothing.
    off = render({"monitoring": {"dashboards": {"enabled": False}}}, chart_dir=chart)
    assert not [c for c in find(off, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]
    assert not find(off, "PrometheusRule")


# ---------------------------------------------------------------- in-cluster dependencies


def test_in_cluster_dependencies_are_off_by_default_and_wire_up_when_on(default_docs: list[Doc]) -> None:
    assert not find(default_docs, "StatefulSet")
    docs = render(EVERYTHING)
    assert {s["metadata"]["name"] for s in find(docs, "StatefulSet")} == {
        "easel-postgres",
        "easel-nats",
        "easel-minio",
    }
    assert one(docs, "Secret", "easel-database")["stringData"]["url"] == (
        "postgresql://easel:pg-secret-pass@easel-postgres:5432/easel"
    )
    assert one(docs, "Secret", "easel-nats")["stringData"]["url"] == "nats://easel-nats:4222"
    scaled = one(docs, "ScaledObject", name("inference-worker"))
    assert (
        scaled["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]
        == "easel-nats.easel.svc:8222"
    )
    # The in-cluster database exists only after install: migrations run post-install then.
    assert one(docs, "Job", "easel-migrations")["metadata"]["annotations"]["helm.sh/hook"] == (
        "post-install,pre-upgrade"
    )
    postgres_policy = one(docs, "NetworkPolicy", "easel-postgres")
    peers = postgres_policy["spec"]["ingress"][0]["from"]
    admitted = sorted(
        c
        for c in ("gateway", "auth", "gallery", "inference-api", "inference-worker", "migrations")
        if any(_selects(p["podSelector"], c) for p in peers)
    )
    assert admitted == ["auth", "gallery", "inference-api", "migrations"]


def test_worker_liveness_follows_its_stall_limit(default_docs: list[Doc]) -> None:
    """The worker's liveness probe asks /livez, which fails once a generation has not advanced for
    EASEL_WORKER_STALL_S; the limit comes from the values and is checked by the schema."""
    worker = one(default_docs, "Deployment", name("inference-worker"))["spec"]["template"]["spec"]
    wc = worker["containers"][0]
    env = {e["name"]: e.get("value") for e in wc["env"]}
    assert env["EASEL_WORKER_STALL_S"] == "300"
    assert wc["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    docs = render({"inferenceWorker": {"stallSeconds": 90}})
    wc = one(docs, "Deployment", name("inference-worker"))["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in wc["env"]}["EASEL_WORKER_STALL_S"] == "90"
    for bad in (0, -5, "soon"):
        with pytest.raises(helm.HelmError, match="/inferenceWorker/stallSeconds"):
            render({"inferenceWorker": {"stallSeconds": bad}})
