"""The real operator process (`grm-operator run`) against a real etcd + kube-apiserver.

One control plane with an audit log (every request, Metadata level) and one operator process
serve the whole module; each test works in a namespace of its own. Without a controller-manager
nothing rewrites Deployment status, so the tests set it through the status subresource, playing
the Deployment controller. API writes are counted in the audit log, by the operator's user.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_testkit import operator_process
from grm_testkit.cluster import tools
from grm_testkit.cluster.controlplane import ControlPlane, ControlPlaneOptions
from support.paths import EXAMPLES

pytestmark = pytest.mark.controlplane

OPERATOR_USER = "grm-operator-test"
GRMD_PATH = "/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments"
TIMEOUT_S = 30.0
EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
# The operator's settings; the PodMonitor labels are what kube-prometheus-stack selects by.
OPERATOR_ENV = {"GRM_RETRY_INITIAL_S": "0.2", "GRM_PODMONITOR_LABELS": '{"release": "kube-prometheus-stack"}'}
POD_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "names": {"kind": "PodMonitor", "plural": "podmonitors", "singular": "podmonitor"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def audited_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, Path]]:
    absent = tools.missing(tools.k8s_bin_dir(), ("etcd", "kube-apiserver"))
    if absent:
        reason = (
            f"control-plane binaries missing in {tools.k8s_bin_dir()}: {absent} (run `make control-plane`)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    args, audit_log = operator_process.audit_apiserver_args(tmp_path_factory.mktemp("audit"))
    plane = ControlPlane(ControlPlaneOptions(apiserver_args=args))
    plane.start()
    try:
        operator_process.install_crd(plane)
        # The Prometheus Operator's PodMonitor kind (schema-less here): the operator creates a
        # PodMonitor per GRMDeployment when this kind is served at its start.
        operator_process.install_crd(plane, POD_MONITOR_CRD)
        yield plane, audit_log
    finally:
        plane.stop()


class Harness:
    """The module's control plane and operator, with helpers that poll with deadlines."""

    def __init__(self, plane: ControlPlane, audit_log: Path, workdir: Path) -> None:
        self.plane = plane
        self.audit_log = audit_log
        self.workdir = workdir
        self.kubeconfig = plane.kubeconfig_for_user(OPERATOR_USER, ("system:masters",))
        self.operator = self._new_operator()

    def _new_operator(self) -> operator_process.OperatorProcess:
        log = self.workdir / f"operator-{uuid.uuid4().hex[:6]}.log"
        return operator_process.OperatorProcess(self.kubeconfig, log, env=OPERATOR_ENV)

    def restart_operator(self) -> int:
        """Stop the operator, start a new process; the audit offset from when the old one was gone."""
        self.operator.stop()
        offset = self.audit_offset()
        self.operator = self._new_operator()
        self.operator.start()
        return offset

    # --- API helpers --------------------------------------------------------------------------
    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.plane.request(method, path, body)
        assert status in (200, 201), f"{method} {path}: {status} {payload}"
        return payload

    def namespace(self) -> str:
        name = f"op-{uuid.uuid4().hex[:8]}"
        self.ok(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        return name

    def create(self, ns: str, name: str = "reward", mutate: Any = None) -> dict[str, Any]:
        body = yaml.safe_load(EXAMPLE.read_text())
        body["metadata"] = {"name": name, "namespace": ns}
        if mutate is not None:
            mutate(body)
        created: dict[str, Any] = self.ok("POST", GRMD_PATH.format(ns=ns), body)
        return created

    def grmd(self, ns: str, name: str = "reward") -> dict[str, Any]:
        got: dict[str, Any] = self.ok("GET", f"{GRMD_PATH.format(ns=ns)}/{name}")
        return got

    def update_spec(self, ns: str, name: str, change: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.plane.update(f"{GRMD_PATH.format(ns=ns)}/{name}", change)
        return result

    def get(self, path: str) -> dict[str, Any] | None:
        status, payload = self.plane.request("GET", path)
        if status == 404:
            return None
        assert status == 200, payload
        result: dict[str, Any] = payload
        return result

    def deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")

    def wait(self, predicate: Any, what: str, timeout_s: float = TIMEOUT_S) -> Any:
        try:
            return operator_process.wait_for(predicate, timeout_s, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.operator.tail()}") from exc

    def condition(self, ns: str, type_: str, name: str = "reward") -> dict[str, Any] | None:
        for cond in (self.grmd(ns, name).get("status") or {}).get("conditions") or []:
            if cond["type"] == type_:
                result: dict[str, Any] = cond
                return result
        return None

    def set_deployment_status(self, ns: str, name: str, ready: int) -> None:
        """Play the Deployment controller: the rollout of `ready` pods is done."""
        path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"
        for _ in range(5):
            body = self.ok("GET", path)
            replicas = body["spec"]["replicas"]
            body["status"] = {
                "observedGeneration": body["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [
                    {
                        "type": "Available",
                        "status": "True" if ready >= replicas else "False",
                        "reason": "Test",
                    },
                ],
            }
            status, payload = self.plane.request("PUT", f"{path}/status", body)
            if status == 200:
                return
            assert status == 409, payload
        raise AssertionError("status update kept conflicting")

    def events(self, ns: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.ok("GET", f"/api/v1/namespaces/{ns}/events")["items"]
        return items

    def writes_since(self, offset: int) -> list[operator_process.AuditRecord]:
        records, _ = operator_process.read_audit(self.audit_log, user=OPERATOR_USER, offset=offset)
        return [r for r in records if r.is_write]

    def audit_offset(self) -> int:
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def settled(self, ns: str, name: str = "reward") -> bool:
        """The operator has acted on the current generation and its queue is empty, and the
        autoscaler has had its first tick (its MetricsAvailable condition is there)."""
        body = self.grmd(ns, name)
        status = body.get("status") or {}
        generation = body["metadata"]["generation"]
        ticked = any(
            c.get("type") == "MetricsAvailable" and c.get("observedGeneration") == generation
            for c in status.get("conditions") or []
        )
        invalid = any(c.get("reason") == "InvalidSpec" for c in status.get("conditions") or [])
        return (
            status.get("observedGeneration") == generation
            and (ticked or invalid)
            and self.operator.metric("grm_operator_queue_depth") == 0
        )


@pytest.fixture(scope="module")
def harness(
    audited_plane: tuple[ControlPlane, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    plane, audit_log = audited_plane
    h = Harness(plane, audit_log, tmp_path_factory.mktemp("operator"))
    h.operator.start()
    try:
        yield h
    finally:
        h.operator.stop()


def test_create_makes_children_with_owner_refs(harness: Harness) -> None:
    ns = harness.namespace()
    created = harness.create(ns)
    uid = created["metadata"]["uid"]
    paths = {
        "reward-bf16": f"/apis/apps/v1/namespaces/{ns}/deployments/reward-bf16",
        "reward-fp8": f"/apis/apps/v1/namespaces/{ns}/deployments/reward-fp8",
        "reward-int4": f"/apis/apps/v1/namespaces/{ns}/deployments/reward-int4",
        "reward-bf16-config": f"/api/v1/namespaces/{ns}/configmaps/reward-bf16-config",
        "reward (Service)": f"/api/v1/namespaces/{ns}/services/reward",
        "reward (PDB)": f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/reward",
        "reward (PodMonitor)": f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/podmonitors/reward",
    }
    for what, path in paths.items():
        child = harness.wait(lambda p=path: harness.get(p), f"{what} created")
        refs = child["metadata"]["ownerReferences"]
        assert refs == [
            {
                "apiVersion": "grm.dev/v1alpha1",
                "kind": "GRMDeployment",
                "name": "reward",
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], what
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "grm-operator"
    # The best admissible variant starts with minReplicas (1), the others at 0.
    replicas = {v: harness.deployment(ns, f"reward-{v}")["spec"]["replicas"] for v in ("bf16", "fp8", "int4")}  # type: ignore[index]
    assert replicas == {"bf16": 1, "fp8": 0, "int4": 0}
    harness.wait(lambda: harness.settled(ns), "status observed")
    status = harness.grmd(ns)["status"]
    assert status["activeVariant"] == "bf16"
    assert status["selector"] == "app.kubernetes.io/name=grm-worker,grm.dev/deployment=reward"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "False",
        "Progressing": "True",
        "Degraded": "False",
        "SpecValid": "True",
        # The quality gate (Measured by default): fp8's and int4's evaluation Jobs have no node here.
        "QualityGate": "Unknown",
        # The autoscaler's: no worker pods, so no metrics and no traffic to judge the SLO on.
        "MetricsAvailable": "False",
        "QualityFloorMet": "True",
        "SLOMet": "Unknown",
        "WorkersHealthy": "True",
        # No variant demoted by its live agreement (no shadow verdicts without pods).
        "LiveQualityMet": "True",
    }
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])


def test_downloaded_weights_get_a_fetch_model_init_container(harness: Harness) -> None:
    """s3:// weights: the Deployment the API server stores has the fetch-model init container
    with the Secret's AWS keys, and the ConfigMap tells it where from and where to."""
    ns = harness.namespace()

    def s3(body: dict[str, Any]) -> None:
        body["spec"]["model"].update(
            uri="s3://models/grm-27b",
            endpointURL="http://minio.storage:9000",
            credentialsSecretRef={"name": "minio"},
        )

    harness.create(ns, mutate=s3)
    deployment = harness.wait(lambda: harness.deployment(ns, "reward-bf16"), "reward-bf16 created")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["grm-worker", "fetch-model", "--config", "/etc/grm/worker.json"]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in init["env"] if "valueFrom" in e}
    assert keys == {
        "AWS_ACCESS_KEY_ID": "minio",
        "AWS_SECRET_ACCESS_KEY": "minio",
        "AWS_SESSION_TOKEN": "minio",
    }
    config_map = harness.ok("GET", f"/api/v1/namespaces/{ns}/configmaps/reward-bf16-config")
    model = json.loads(config_map["data"]["worker.json"])["model"]
    assert (model["uri"], model["path"], model["endpoint_url"]) == (
        "s3://models/grm-27b",
        "/models/weights/s3/models/grm-27b",
        "http://minio.storage:9000",
    )


def test_spec_change_updates_children_and_observed_generation(harness: Harness) -> None:
    ns = harness.namespace()
    harness.create(ns)
    harness.wait(lambda: harness.settled(ns), "first reconcile")
    before = harness.deployment(ns, "reward-fp8")
    assert before is not None
    old_hash = before["spec"]["template"]["metadata"]["annotations"]["grm.dev/config-hash"]

    def more_seqs(body: dict[str, Any]) -> None:
        body["spec"]["engine"] = {"maxNumSeqs": 64}
        body["spec"]["scaling"]["minReplicas"] = 2

    updated = harness.update_spec(ns, "reward", more_seqs)
    assert updated["metadata"]["generation"] == 2
    harness.wait(lambda: harness.settled(ns), "second generation observed")
    config = harness.get(f"/api/v1/namespaces/{ns}/configmaps/reward-fp8-config")
    assert config is not None
    assert json.loads(config["data"]["worker.json"])["vllm"]["max_num_seqs"] == 64
    after = harness.deployment(ns, "reward-fp8")
    assert after is not None
    # A changed worker config changes the pod template's hash annotation: the pods roll.
    assert after["spec"]["template"]["metadata"]["annotations"]["grm.dev/config-hash"] != old_hash
    # minReplicas 2 raises the active variant.
    assert harness.deployment(ns, "reward-bf16")["spec"]["replicas"] == 2  # type: ignore[index]
    status = harness.grmd(ns)["status"]
    assert status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in status["conditions"])


def test_removed_variant_is_deleted_and_foreign_objects_are_kept(harness: Harness) -> None:
    ns = harness.namespace()
    harness.create(ns)
    harness.wait(lambda: harness.deployment(ns, "reward-int4"), "int4 Deployment")
    # A Deployment with our labels but no owner reference is not ours to delete.
    foreign = copy.deepcopy(harness.deployment(ns, "reward-int4"))
    assert foreign is not None
    foreign["metadata"] = {
        "name": "reward-extra",
        "namespace": ns,
        "labels": {**foreign["metadata"]["labels"], "grm.dev/variant": "extra"},
    }
    foreign["spec"]["selector"]["matchLabels"]["grm.dev/variant"] = "extra"
    foreign["spec"]["template"]["metadata"]["labels"]["grm.dev/variant"] = "extra"
    foreign.pop("status", None)
    harness.ok("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", foreign)

    harness.update_spec(ns, "reward", lambda b: b["spec"]["variants"].pop())
    harness.wait(lambda: harness.deployment(ns, "reward-int4") is None, "int4 Deployment deleted")
    harness.wait(
        lambda: harness.get(f"/api/v1/namespaces/{ns}/configmaps/reward-int4-config") is None,
        "int4 ConfigMap deleted",
    )
    harness.wait(lambda: harness.settled(ns), "generation 2 observed")
    assert harness.deployment(ns, "reward-bf16") is not None
    assert harness.deployment(ns, "reward-fp8") is not None
    assert harness.deployment(ns, "reward-extra") is not None
    names = [v["name"] for v in harness.grmd(ns)["status"]["variants"]]
    assert names == ["bf16", "fp8"]


def test_child_status_folds_into_conditions_and_events(harness: Harness) -> None:
    ns = harness.namespace()
    harness.create(ns, mutate=lambda b: b["spec"]["scaling"].update(minReplicas=2))
    harness.wait(lambda: harness.settled(ns), "first reconcile")
    for variant in ("fp8", "int4"):
        harness.set_deployment_status(ns, f"reward-{variant}", ready=0)
    harness.set_deployment_status(ns, "reward-bf16", ready=1)

    def ready_is(status: str, reason: str) -> Any:
        def check() -> bool:
            cond = harness.condition(ns, "Ready")
            return cond is not None and (cond["status"], cond["reason"]) == (status, reason)

        return check

    # Ready was already False (0/2) before: wait for the message of the new count, not the status.
    harness.wait(
        lambda: (harness.condition(ns, "Ready") or {}).get("message") == "1/2 replicas of variant bf16 ready",
        "Ready=False while 1/2 ready",
    )
    assert harness.condition(ns, "Ready")["reason"] == "ReplicasNotReady"  # type: ignore[index]
    harness.set_deployment_status(ns, "reward-bf16", ready=2)
    harness.wait(ready_is("True", "ReplicasReady"), "Ready=True")
    harness.wait(
        lambda: harness.condition(ns, "Progressing")["reason"] == "RolloutComplete",  # type: ignore[index]
        "Progressing=False",
    )
    status = harness.grmd(ns)["status"]
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    counts = {k: v for k, v in status["variants"][0].items() if k not in ("gate", "gateMessage")}
    assert counts == {"name": "bf16", "replicas": 2, "readyReplicas": 2, "desiredReplicas": 2}
    assert status["variants"][0]["gate"] == "Admitted"  # the reference
    reasons = harness.wait(
        lambda: (
            {e["reason"] for e in harness.events(ns)}
            >= {"ReplicasNotReady", "ReplicasReady", "RolloutComplete"}
            and {e["reason"] for e in harness.events(ns)}
        ),
        "Events for the transitions",
    )
    assert "Valid" in reasons
    ready_event = next(e for e in harness.events(ns) if e["reason"] == "ReplicasReady")
    assert ready_event["type"] == "Normal"
    assert ready_event["involvedObject"]["kind"] == "GRMDeployment"

    # A child's ProgressDeadlineExceeded makes the GRMDeployment Degraded, with a Warning Event.
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/reward-fp8"
    body = harness.ok("GET", path)
    body["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "stuck"}
    ]
    harness.ok("PUT", f"{path}/status", body)
    harness.wait(
        lambda: (harness.condition(ns, "Degraded") or {}).get("reason") == "ProgressDeadlineExceeded",
        "Degraded=True",
    )
    warning = harness.wait(
        lambda: next((e for e in harness.events(ns) if e["reason"] == "ProgressDeadlineExceeded"), None),
        "Warning Event",
    )
    assert warning["type"] == "Warning"


def test_invalid_spec_is_reported_and_nothing_is_deleted(harness: Harness) -> None:
    """An object the schema accepted but the operator's models reject: stored under an older,
    looser CRD (simulated by loosening the installed CRD for the moment of the update)."""
    ns = harness.namespace()
    harness.create(ns)
    harness.wait(lambda: harness.settled(ns), "first reconcile")
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/grmdeployments.grm.dev"
    original = harness.ok("GET", crd_path)
    loose = copy.deepcopy(original)
    loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    harness.ok("PUT", crd_path, loose)
    try:
        # Duplicate variant names: pydantic's cross-field rule rejects them.
        def duplicate(body: dict[str, Any]) -> None:
            body["spec"]["variants"].append(dict(body["spec"]["variants"][0]))

        harness.wait(
            lambda: _try_update(harness, ns, duplicate), "the loosened CRD accepts the duplicate variant"
        )
    finally:
        restored = harness.ok("GET", crd_path)
        original["metadata"]["resourceVersion"] = restored["metadata"]["resourceVersion"]
        harness.ok("PUT", crd_path, original)
    cond = harness.wait(
        lambda: (c := harness.condition(ns, "SpecValid")) is not None and c["status"] == "False" and c,
        "SpecValid=False",
    )
    assert cond["reason"] == "InvalidSpec"
    assert "variant names must be unique" in cond["message"]
    assert cond["observedGeneration"] == 2
    event = harness.wait(
        lambda: next((e for e in harness.events(ns) if e["reason"] == "InvalidSpec"), None),
        "InvalidSpec Event",
    )
    assert event["type"] == "Warning"
    for variant in ("bf16", "fp8", "int4"):
        assert harness.deployment(ns, f"reward-{variant}") is not None
    # The operator survived it and keeps working on other objects.
    other = harness.namespace()
    harness.create(other)
    harness.wait(lambda: harness.deployment(other, "reward-bf16"), "a later GRMDeployment reconciled")


def test_invalid_worker_overrides_annotation_is_reported(harness: Harness) -> None:
    ns = harness.namespace()

    def bad_overrides(body: dict[str, Any]) -> None:
        body["metadata"]["annotations"] = {"grm.dev/worker-overrides": json.dumps({"port": 0})}

    harness.create(ns, mutate=bad_overrides)
    cond = harness.wait(
        lambda: (c := harness.condition(ns, "SpecValid")) is not None and c["status"] == "False" and c,
        "SpecValid=False",
    )
    assert cond["reason"] == "InvalidSpec"
    assert "port" in cond["message"]
    assert harness.deployment(ns, "reward-bf16") is None


def _try_update(harness: Harness, ns: str, change: Any) -> bool:
    body = harness.grmd(ns)
    change(body)
    status, _ = harness.plane.request("PUT", f"{GRMD_PATH.format(ns=ns)}/reward", body)
    return status == 200


def test_restart_and_steady_state_make_no_writes(harness: Harness) -> None:
    namespaces = [harness.namespace() for _ in range(3)]
    for ns in namespaces:
        harness.create(ns)
    for ns in namespaces:
        harness.wait(lambda ns=ns: harness.settled(ns), f"{ns} reconciled")
    # Measured from when the old process is gone: until then it still acts on earlier tests'
    # objects whose namespaces are being deleted (a scale PATCH meeting a 404 is its write).
    offset = harness.restart_operator()
    # The restarted operator has seen every object (its initial listing) and reconciled each.
    total = len(harness.ok("GET", "/apis/grm.dev/v1alpha1/grmdeployments")["items"])
    op = harness.operator
    harness.wait(
        lambda: (
            op.metric("grm_operator_grmdeployments") == total
            and op.metric("grm_operator_queue_depth") == 0.0
            and op.metric("grm_operator_reconciles_total", result="ok")
            + op.metric("grm_operator_reconciles_total", result="invalid")
            >= total
        ),
        "every GRMDeployment reconciled after the restart",
    )
    writes = harness.writes_since(offset)
    assert writes == [], ([(w.verb, w.resource, w.namespace, w.name, w.code) for w in writes], namespaces)
    assert op.metric("grm_operator_api_writes_total") == 0.0
    # It did read: one priming LIST per child kind, and no GETs of children (the store answers).
    for kind in ("Deployment", "ConfigMap", "Service", "PodDisruptionBudget", "PodMonitor"):
        assert op.metric("grm_operator_api_requests_total", verb="list", kind=kind) == 1, kind
        assert op.metric("grm_operator_api_requests_total", verb="get", kind=kind) == 0, kind


def test_kubectl_scale_in_manual_mode_sets_the_active_variants_replicas(harness: Harness) -> None:
    ns = harness.namespace()
    harness.create(ns, mutate=lambda b: b["spec"]["scaling"].update(mode="Manual", replicas=1))
    harness.wait(lambda: harness.settled(ns), "first reconcile")
    scale_path = f"{GRMD_PATH.format(ns=ns)}/reward/scale"
    scale = harness.ok("GET", scale_path)
    assert scale["spec"]["replicas"] == 1
    assert scale["status"]["selector"] == "app.kubernetes.io/name=grm-worker,grm.dev/deployment=reward"
    kubectl = tools.kubectl()
    if kubectl is not None:
        subprocess.run(
            [
                str(kubectl),
                "--kubeconfig",
                str(harness.plane.kubeconfig),
                "-n",
                ns,
                "scale",
                "grmd/reward",
                "--replicas=3",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    else:  # what `kubectl scale grmd/reward --replicas=3` sends
        scale["spec"]["replicas"] = 3
        harness.ok("PUT", scale_path, scale)
    harness.wait(
        lambda: (harness.deployment(ns, "reward-bf16") or {}).get("spec", {}).get("replicas") == 3,
        "the active variant's Deployment scaled to 3",
    )
    assert harness.deployment(ns, "reward-fp8")["spec"]["replicas"] == 0  # type: ignore[index]
    harness.wait(lambda: harness.settled(ns), "generation 2 observed")
    assert harness.grmd(ns)["status"]["desiredReplicas"] == 3


def test_deleted_children_are_recreated(harness: Harness) -> None:
    ns = harness.namespace()
    harness.create(ns)
    harness.wait(lambda: harness.settled(ns), "first reconcile")
    service = f"/api/v1/namespaces/{ns}/services/reward"
    deployment = f"/apis/apps/v1/namespaces/{ns}/deployments/reward-fp8"
    old_uid = harness.ok("GET", service)["metadata"]["uid"]
    harness.ok("DELETE", service)
    harness.ok("DELETE", deployment)
    # The children's DELETED events reach the operator, which applies them again.
    recreated = harness.wait(
        lambda: (body := harness.get(service)) is not None and body["metadata"]["uid"] != old_uid and body,
        "the Service recreated",
    )
    assert recreated["metadata"]["ownerReferences"][0]["name"] == "reward"
    harness.wait(lambda: harness.get(deployment) is not None, "the fp8 Deployment recreated")


# Where each kind the operator creates lives in the API.
CHILD_PATHS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps/{name}",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "Service": "/api/v1/namespaces/{ns}/services/{name}",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}",
    "PodMonitor": "/apis/monitoring.coreos.com/v1/namespaces/{ns}/podmonitors/{name}",
}


def test_render_prints_what_the_operator_applied(harness: Harness, tmp_path: Path) -> None:
    # `grm-operator render` of the stored object (`kubectl get grmd reward -o yaml`: uid and
    # status included) with the operator's settings is what the operator applied, object for
    # object: same applied hash (labels, owner reference, spec) and same replica counts.
    ns = harness.namespace()
    harness.create(ns)
    harness.wait(lambda: harness.settled(ns), "first reconcile")
    stored = tmp_path / "reward.yaml"
    stored.write_text(yaml.safe_dump(harness.grmd(ns)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRM_")}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("grm-operator")), "render", "-f", str(stored)],
        env={**env, **OPERATOR_ENV},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    assert {d["kind"] for d in rendered} == set(CHILD_PATHS)
    for obj in rendered:
        name = obj["metadata"]["name"]
        live = harness.get(CHILD_PATHS[obj["kind"]].format(ns=ns, name=name))
        assert live is not None, f"{obj['kind']} {name} rendered but not created"
        hash_key = "grm.dev/applied-hash"
        assert live["metadata"]["annotations"][hash_key] == obj["metadata"]["annotations"][hash_key], name
        if obj["kind"] == "Deployment":
            assert live["spec"]["replicas"] == obj["spec"]["replicas"], name
    (pod_monitor,) = (d for d in rendered if d["kind"] == "PodMonitor")
    live_monitor = harness.get(CHILD_PATHS["PodMonitor"].format(ns=ns, name="reward"))
    assert live_monitor is not None
    assert live_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pod_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
