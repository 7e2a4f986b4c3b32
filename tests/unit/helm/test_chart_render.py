"""The Helm chart renders valid, least-privilege, hardened manifests that match the operator's code.

`helm lint --strict` and `helm template` over the default values and variations; every rendered
object (and the CRDs) validated with kubernetes-validate --strict for each Kubernetes version
1.28–1.35 it ships; values.schema.json rejects bad values; the RBAC rules equal
grm_operator/rbac.py's; the env the Deployment sets parses into OperatorSettings with the values
given; the generated chart files have not drifted from the code.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hack import chartgen

from grm_operator import rbac
from grm_operator.settings import DEFAULT_WORKER_IMAGE, OperatorSettings
from support.helmchart import (
    CHART,
    CRD_KINDS,
    PROMETHEUS_OPERATOR_API,
    REPO,
    by_kind,
    k8s_versions,
    render,
    render_error,
    run_helm,
    triples,
)

VARIATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "ha-clusterwide": {"replicaCount": 3, "prometheus": {"url": "http://prometheus.monitoring:9090"}},
    "namespaced": {"watchNamespaces": ["rl", "eval"], "logLevel": "DEBUG"},
    "ha-namespaced": {"replicaCount": 2, "watchNamespaces": ["rl"]},
    "everything-on": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "alertLabels": {"team": "ml"}},
        "crds": {"manage": True},
        "networkPolicy": {"enabled": True},
        "metrics": {"port": 9100, "service": {"enabled": True, "type": "ClusterIP", "port": 9100}},
        "extraEnv": [{"name": "GRM_RETRY_MAX_S", "value": "120"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "report": {
            "enabled": True,
            "namespace": "rl",
            "prometheusURL": "http://prometheus.monitoring:9090",
            "timeZone": "Europe/Paris",
            "candidates": ["name=int4,precision=awq-int4,uri=pvc://m/awq,quality=0.97"],
        },
    },
    "minimal": {
        "dashboard": {"enabled": False},
        "metrics": {"port": 9090, "service": {"enabled": False, "type": "ClusterIP", "port": 9090}},
        "podMonitors": False,
        "serviceAccount": {"create": False, "name": "existing"},
    },
}


def _container_env(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: list[dict[str, Any]] = container["env"]
    return env


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container_env(docs) if "value" in e}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    # As on a cluster with the Prometheus Operator (its ServiceMonitor and PrometheusRule render).
    return {
        name: render(values, include_crds=True, api_versions=[PROMETHEUS_OPERATOR_API])
        for name, values in VARIATIONS.items()
    }


def test_helm_lint_strict() -> None:
    run_helm("lint", "--strict", str(CHART))
    run_helm("lint", "--strict", str(CHART), "--set", "replicaCount=2,watchNamespaces={a,b}")


@pytest.mark.parametrize("version", k8s_versions())
def test_every_object_validates_strictly(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    checked, seen = 0, set()
    for name, docs in rendered.items():
        for doc in docs:
            # Variations share most objects (the dashboard, the CRDs): validate each once.
            key = json.dumps(doc, sort_keys=True)
            if doc["kind"] in CRD_KINDS or key in seen:
                continue
            seen.add(key)
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(
                    f"{name}: {doc['kind']}/{doc['metadata']['name']} @ {version}: {exc}"
                ) from exc
            checked += 1
    assert checked >= 20


def test_versions_cover_the_issue_range() -> None:
    versions = k8s_versions()
    assert versions[0].startswith("1.28.") and versions[-1].startswith("1.35."), versions


def test_strict_validation_rejects_a_typo() -> None:
    # The validation above can fail: a misspelt field in the rendered Deployment is an error.
    (deployment,) = by_kind(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, k8s_versions()[-1], strict=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 0}, "replicaCount"),
        ({"logLevel": "LOUD"}, "logLevel"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"prometheus": {"url": "prometheus:9090"}}, "url"),
        ({"unknownKey": True}, "unknownKey"),
        (
            {
                "prometheusRule": {
                    "enabled": True,
                    "alerts": {"GRMDeploymentDegraded": {"for": "ten minutes"}},
                }
            },
            "for",
        ),
        ({"prometheusRule": {"enabled": True, "alerts": {"GRMShedShareHigh": {"ratio": 5}}}}, "ratio"),
        (
            {"prometheusRule": {"enabled": True, "alerts": {"GRMNoSuchAlert": {"enabled": True}}}},
            "GRMNoSuchAlert",
        ),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    assert message in render_error(values)


def test_servicemonitor_needs_the_metrics_service() -> None:
    values = {
        "serviceMonitor": {"enabled": True},
        "metrics": {"port": 9090, "service": {"enabled": False, "type": "ClusterIP", "port": 9090}},
    }
    assert "serviceMonitor.enabled needs metrics.service.enabled" in render_error(values)


# --- RBAC: exactly the operator's rules ---------------------------------------------------------


def _aggregated(role: dict[str, Any]) -> bool:
    """A ClusterRole for users, aggregated into admin/edit/view: not the operator's."""
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"]["labels"])


def _granted(
    docs: list[dict[str, Any]], kind: str, namespace: str | None = None
) -> set[tuple[str, str, str]]:
    """What the operator's (Cluster)Roles grant."""
    roles = [d for d in by_kind(docs, kind) if namespace is None or d["metadata"]["namespace"] == namespace]
    return triples(rule for role in roles if not _aggregated(role) for rule in role["rules"])


def test_users_roles_aggregate_into_admin_edit_and_view(rendered: dict[str, list[dict[str, Any]]]) -> None:
    roles = {r["metadata"]["name"]: r for r in by_kind(rendered["defaults"], "ClusterRole") if _aggregated(r)}
    edit, view = roles["grm-grm-operator-edit"], roles["grm-grm-operator-view"]
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k in edit["metadata"]["labels"] if k.startswith(aggregate)} == {
        aggregate + "admin",
        aggregate + "edit",
    }
    assert {k for k in view["metadata"]["labels"] if k.startswith(aggregate)} == {aggregate + "view"}
    edits = triples(edit["rules"])
    assert ("grm.dev", "grmdeployments", "create") in edits
    assert ("grm.dev", "grmdeployments/scale", "patch") in edits
    # The status is the operator's: users read it, never write it.
    assert {t for t in edits if t[1] == "grmdeployments/status"} == {
        ("grm.dev", "grmdeployments/status", "get")
    }
    assert {verb for _, _, verb in triples(view["rules"])} == {"get", "list", "watch"}
    off = render({"rbac": {"create": True, "aggregateToDefaultRoles": False}})
    assert not [r for r in by_kind(off, "ClusterRole") if _aggregated(dict(r))]


def _lease_role(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    roles = [d for d in by_kind(docs, "Role") if d["metadata"]["name"].endswith("-leader-election")]
    assert [r["metadata"]["namespace"] for r in roles] == ["grm-system"]  # the release namespace only
    (binding,) = [
        b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == roles[0]["metadata"]["name"]
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "grm-grm-operator", "namespace": "grm-system"}
    ]
    return triples(roles[0]["rules"])


LEASE_GRANTS = triples(r.to_manifest() for r in rbac.LEADER_ELECTION_RULES)


def test_clusterwide_rbac_is_exactly_the_code_rules(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variation in ("defaults", "ha-clusterwide"):
        docs = rendered[variation]
        assert _granted(docs, "ClusterRole") == triples(r.to_manifest() for r in rbac.OPERATOR_RULES)
        # Leases only in the operator's namespace, never cluster-wide.
        assert _lease_role(docs) == LEASE_GRANTS
        assert [r["metadata"]["name"] for r in by_kind(docs, "Role")] == ["grm-grm-operator-leader-election"]


def test_namespaced_rbac_grants_only_cluster_scoped_reads_cluster_wide(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    code = triples(r.to_manifest() for r in rbac.OPERATOR_RULES)
    cluster = {t for t in code if t[1] in chartgen.CLUSTER_SCOPED}
    namespaced = {t for t in code if t[1] not in chartgen.CLUSTER_SCOPED}
    docs = rendered["ha-namespaced"]
    assert _granted(docs, "ClusterRole") == cluster
    assert _granted(docs, "Role", "rl") == namespaced
    assert _lease_role(docs) == LEASE_GRANTS
    plain = rendered["namespaced"]
    for ns in ("rl", "eval"):
        assert _granted(plain, "Role", ns) == namespaced
        (binding,) = [b for b in by_kind(plain, "RoleBinding") if b["metadata"]["namespace"] == ns]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "grm-grm-operator", "namespace": "grm-system"}
        ]
    # Nothing cluster-wide lets it write: only namespaces and CRDs, read-only.
    assert {verb for _, _, verb in _granted(plain, "ClusterRole")} <= {"get", "list", "watch"}


def test_no_wildcards_and_secrets_only_by_name(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Secrets: get and create only (each GRMDeployment's admin token, read by its name), never
    list, watch or any write of an existing one: the operator cannot enumerate the cluster's
    Secrets nor change one it did not create."""
    for docs in rendered.values():
        granted = _granted(docs, "ClusterRole") | _granted(docs, "Role")
        for group, resource, verb in granted:
            assert "*" not in (group, resource, verb)
            if resource == "secrets":
                assert verb in ("get", "create"), verb
        assert {v for g, r, v in granted if r == "secrets"} == {"get", "create"}


def test_generated_chart_files_match_the_code() -> None:
    assert chartgen.drift(REPO) == [], "run `make crd` (python -m hack.chartgen)"


def test_chart_crds_are_the_repo_crds() -> None:
    names = {p.name for p in (CHART / "crds").iterdir()}
    assert names == {p.name for p in (REPO / "crds").glob("*.yaml")}
    for path in (REPO / "crds").glob("*.yaml"):
        assert (CHART / "crds" / path.name).read_text() == path.read_text()


def test_managed_crds_are_the_chart_crds_kept_on_uninstall() -> None:
    assert not [d for d in render() if d["kind"] == "CustomResourceDefinition"]
    managed = {
        d["metadata"]["name"]: d
        for d in render({"crds": {"manage": True}})
        if d["kind"] == "CustomResourceDefinition"
    }
    shipped = {
        d["metadata"]["name"]: d
        for path in sorted((CHART / "crds").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    }
    assert set(managed) == set(shipped) == {"grmdeployments.grm.dev"}
    for name, crd in managed.items():
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}, name
        assert crd == shipped[name], f"{name}: the template differs from crds/"


def test_managed_crds_template_prints_braces_literally() -> None:
    crd = "kind: CustomResourceDefinition\nmetadata: {name: x}\nspec: {description: 'use {{ and }}'}\n"
    template = chartgen.managed_crds_template([crd])
    assert '{{ "{{" }} and }}' in template


# --- Deployment: settings, leader election, hardening ---------------------------------------------------


def test_env_is_the_operators_settings() -> None:
    values = {
        "watchNamespaces": ["rl", "eval"],
        "worker": {
            "image": {"repository": "registry.example/grm-worker", "tag": "1.2.3"},
            "pullPolicy": "Always",
        },
        "prometheus": {"url": "http://prometheus.monitoring:9090"},
        "podMonitors": False,
        "logLevel": "WARNING",
        "health": {"port": 8181},
        "metrics": {"port": 9191, "service": {"enabled": True, "type": "ClusterIP", "port": 9090}},
    }
    env = _env(render(values))
    assert all(name.removeprefix("GRM_").lower() in OperatorSettings.model_fields for name in env)
    settings = OperatorSettings.from_env(env)
    assert settings.namespaces == ("rl", "eval")
    assert settings.worker_image == "registry.example/grm-worker:1.2.3"
    assert settings.worker_image_pull_policy == "Always"
    assert settings.prometheus_url == "http://prometheus.monitoring:9090"
    assert settings.podmonitor_enabled is False
    assert settings.log_level == "WARNING"
    assert (settings.health_port, settings.metrics_port) == (8181, 9191)
    assert (settings.leader_election_lease, settings.leader_election_namespace) == (
        "grm-grm-operator",
        "grm-system",
    )


def test_defaults_match_the_operators_defaults() -> None:
    settings = OperatorSettings.from_env(_env(render()))
    assert settings.worker_image == DEFAULT_WORKER_IMAGE
    assert settings.clusterwide
    # The only settings the chart sets away from the defaults: the Lease (its identity, the pod
    # name, comes from the downward API).
    # and the quality Jobs' image (images/quality), which the operator alone leaves to the workers'.
    assert settings == OperatorSettings(
        leader_election_lease="grm-grm-operator",
        leader_election_namespace="grm-system",
        quality_job_image="ghcr.io/grm-elastic/grm-quality:0.1.0",
        quality_job_image_pull_policy="IfNotPresent",
    )


def test_every_replica_is_a_lease_candidate_so_pods_may_overlap(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for variation, replicas in (("defaults", 1), ("ha-clusterwide", 3), ("ha-namespaced", 2)):
        docs = rendered[variation]
        (deployment,) = by_kind(docs, "Deployment")
        assert deployment["spec"]["replicas"] == replicas
        # Only the Lease holder acts, so a rolling update may run old and new pods side by side.
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["grm-operator", "run"]
        env = {e["name"]: e for e in container["env"]}
        assert env["GRM_LEADER_ELECTION_LEASE"]["value"] == "grm-grm-operator"
        assert env["GRM_LEADER_ELECTION_NAMESPACE"]["value"] == "grm-system"
        assert env["GRM_LEADER_ELECTION_IDENTITY"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.name"}
        }
        assert not any("kopf.dev" in d["apiVersion"] for d in docs)
        assert not any("Kopf" in str(d["metadata"].get("name")) for d in docs)


def test_operator_pod_is_hardened(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        (deployment,) = by_kind(docs, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_metrics_service_selects_the_operator_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["everything-on"]
    (service,) = by_kind(docs, "Service")
    (deployment,) = by_kind(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 9100
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert not by_kind(rendered["minimal"], "Service")
    assert not by_kind(rendered["minimal"], "ServiceAccount")
    assert (
        by_kind(rendered["minimal"], "Deployment")[0]["spec"]["template"]["spec"]["serviceAccountName"]
        == "existing"
    )


def test_monitoring_objects_only_where_the_prometheus_operator_is_served() -> None:
    values = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    with_api = {d["kind"] for d in render(values, api_versions=[PROMETHEUS_OPERATOR_API])}
    assert {"ServiceMonitor", "PrometheusRule"} <= with_api
    without = {d["kind"] for d in render(values)}
    assert not {"ServiceMonitor", "PrometheusRule"} & without
    notes = run_helm(
        "install", "grm", str(CHART), "--dry-run=client", "--namespace", "ops",
        "--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true",
    ).stdout  # fmt: skip
    assert "does not serve\nmonitoring.coreos.com/v1" in notes
    assert "WARNING" not in run_helm("install", "grm", str(CHART), "--dry-run=client").stdout


def test_notes_render() -> None:
    out = run_helm("install", "grm", str(CHART), "--dry-run=client", "--namespace", "ops").stdout
    assert "kubectl get grmd -A -w" in out and "kubectl -n ops get pods" in out


def test_quality_job_values_reach_the_operator() -> None:
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    values = {
        "qualityJobs": {
            "image": {"repository": "registry.example/grm-quality", "tag": "2.0.0"},
            "pullPolicy": "Always",
            "resources": {"requests": {"cpu": "8", "memory": "96Gi"}},
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [gpu],
        }
    }
    settings = OperatorSettings.from_env(_env(render(values)))
    assert settings.quality_job_image == "registry.example/grm-quality:2.0.0"
    assert settings.quality_job_image_pull_policy == "Always"
    assert settings.quality_job_resources == {"requests": {"cpu": "8", "memory": "96Gi"}}
    assert settings.quality_job_node_selector == {"nvidia.com/gpu.present": "true"}
    assert settings.quality_job_tolerations == [gpu]
    # An empty repository: the Jobs run each GRMDeployment's worker image, as without the chart.
    blank = {"qualityJobs": {"image": {"repository": "", "tag": ""}, "pullPolicy": "IfNotPresent"}}
    assert OperatorSettings.from_env(_env(render(blank))).quality_job_image is None
    # extraEnv wins (how the image was set before qualityJobs existed): no variable set twice,
    # which the API server's server-side apply refuses.
    extra = {"extraEnv": [{"name": "GRM_QUALITY_JOB_IMAGE", "value": "local/python"}]}
    names = [e["name"] for e in _container_env(render(extra))]
    assert names.count("GRM_QUALITY_JOB_IMAGE") == 1
    assert OperatorSettings.from_env(_env(render(extra))).quality_job_image == "local/python"


def test_pod_monitor_labels_reach_the_operator() -> None:
    # kube-prometheus-stack users set release=<their release> (docs/quickstart.md).
    labels = {"release": "kube-prometheus-stack", "example.com/team": "rl"}
    settings = OperatorSettings.from_env(_env(render({"podMonitorLabels": labels})))
    assert settings.podmonitor_labels == labels
    assert "GRM_PODMONITOR_LABELS" not in _env(render())


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        # helm names a bad key, not where it is.
        ({"grm.dev/deployment": "x"}, "invalid propertyName 'grm.dev/deployment'"),
        ({"app.kubernetes.io/managed-by": "helm"}, "invalid propertyName 'app.kubernetes.io/managed-by'"),
        ({"-release": "x"}, "invalid propertyName '-release'"),
        ({"release": "not valid!"}, "podMonitorLabels"),
        ({"release": 3}, "podMonitorLabels"),
    ],
)
def test_schema_rejects_pod_monitor_labels_the_operator_would_refuse(
    labels: dict[str, Any], message: str
) -> None:
    assert message in render_error({"podMonitorLabels": labels})
