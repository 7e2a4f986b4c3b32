"""The operator with Kubernetes' own controllers running (kube-controller-manager and scheduler, no
nodes): the real Deployment controller's status folds into the GRMDeployment's, and the real
garbage collector deletes every child with its GRMDeployment, which only works when the owner
references are right."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_testkit import operator_process
from grm_testkit.cluster.controlplane import ControlPlane
from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
# The Deployment controller acts within a second. The garbage collector learns about a newly
# installed CRD only at its next discovery resync (every 30 s, fixed in kube-controller-manager),
# so the first GRMDeployment deletion after installing the CRD can take ~40 s to cascade.
TIMEOUT_S = 90.0


def test_deployment_controller_status_and_garbage_collection(
    control_plane_controllers: ControlPlane, tmp_path: Path
) -> None:
    plane = control_plane_controllers

    def ok(method: str, path: str, body: Any = None) -> Any:
        status, payload = plane.request(method, path, body)
        assert status in (200, 201, 202), f"{method} {path}: {status} {payload}"
        return payload

    def exists(path: str) -> bool:
        return plane.request("GET", path)[0] == 200

    operator_process.install_crd(plane)
    ns = f"ctrl-{uuid.uuid4().hex[:8]}"
    ok("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    operator = operator_process.OperatorProcess(
        plane.kubeconfig_for_user("grm-operator-ctrl", ("system:masters",)),
        tmp_path / "operator.log",
        env={"GRM_NAMESPACES": ns},
    )
    operator.start()
    grmd_path = f"/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments/reward"
    try:
        body = yaml.safe_load(EXAMPLE.read_text())
        body["metadata"] = {"name": "reward", "namespace": ns}
        ok("POST", f"/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments", body)

        def pending_pod_counted() -> bool:
            status = ok("GET", grmd_path).get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            # The Deployment controller created a pod (no node runs it): 1 replica, 0 ready.
            return (
                status.get("replicas") == 1 and ready.get("message") == "0/1 replicas of variant bf16 ready"
            )

        operator_process.wait_for(pending_pod_counted, TIMEOUT_S, "the real Deployment status folded in")
        pods = ok("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=grm.dev%2Fdeployment%3Dreward")["items"]
        assert [p["metadata"]["labels"]["grm.dev/variant"] for p in pods] == ["bf16"]
        progressing = next(
            c for c in ok("GET", grmd_path)["status"]["conditions"] if c["type"] == "Progressing"
        )
        assert (progressing["status"], progressing["reason"]) == ("True", "RollingOut")

        ok("DELETE", grmd_path)
        children = [
            f"/apis/apps/v1/namespaces/{ns}/deployments/reward-{v}" for v in ("bf16", "fp8", "int4")
        ] + [
            f"/api/v1/namespaces/{ns}/configmaps/reward-bf16-config",
            f"/api/v1/namespaces/{ns}/services/reward",
            f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/reward",
        ]
        operator_process.wait_for(
            lambda: not any(exists(p) for p in children), TIMEOUT_S, "children garbage-collected"
        )
    except (AssertionError, TimeoutError) as exc:
        pytest.fail(f"{exc}\n--- operator ---\n{operator.tail(40)}")
    finally:
        operator.stop()
