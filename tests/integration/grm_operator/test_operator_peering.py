"""Two operator replicas with kopf peering (HA): only the higher-priority one works; when it stops,
the standby takes over."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_operator import peering
from grm_testkit import operator_process
from grm_testkit.cluster.controlplane import ControlPlane
from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
TIMEOUT_S = 30.0


def _ok(plane: ControlPlane, method: str, path: str, body: Any = None) -> Any:
    status, payload = plane.request(method, path, body)
    assert status in (200, 201, 409), f"{method} {path}: {status} {payload}"
    return payload


def _create(plane: ControlPlane, ns: str, name: str) -> None:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name, "namespace": ns}
    _ok(plane, "POST", f"/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments", body)


def _exists(plane: ControlPlane, path: str) -> bool:
    return plane.request("GET", path)[0] == 200


def test_only_the_leader_works_and_the_standby_takes_over(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    plane = control_plane
    operator_process.install_crd(plane)
    for crd in peering.crds():
        operator_process.install_crd(plane, crd)
    ns = f"ha-{uuid.uuid4().hex[:8]}"
    _ok(
        plane,
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
    )
    _ok(plane, "POST", f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings", peering.peering_object("grm", ns))
    kubeconfig = plane.kubeconfig_for_user("grm-operator-ha", ("system:masters",))

    def replica(name: str, priority: int) -> operator_process.OperatorProcess:
        env = {"GRM_NAMESPACES": ns, "GRM_PEERING_NAME": "grm", "GRM_PRIORITY": str(priority)}
        return operator_process.OperatorProcess(kubeconfig, tmp_path / f"{name}.log", env=env)

    leader, standby = replica("leader", 100), replica("standby", 50)
    leader.start()
    standby.start()
    try:
        # Both replicas are in the peering object before any work arrives.
        path = f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/grm"
        operator_process.wait_for(
            lambda: len(_ok(plane, "GET", path).get("status") or {}) == 2, TIMEOUT_S, "two peers"
        )
        _create(plane, ns, "first")
        operator_process.wait_for(
            lambda: _exists(plane, f"/apis/apps/v1/namespaces/{ns}/deployments/first-bf16"),
            TIMEOUT_S,
            "leader works",
        )
        operator_process.wait_for(
            lambda: leader.metric("grm_operator_queue_depth") == 0, TIMEOUT_S, "leader idle"
        )
        assert leader.metric("grm_operator_api_writes_total") > 0
        assert standby.metric("grm_operator_api_writes_total") == 0, standby.tail()

        leader.stop()  # a graceful stop removes the leader from the peering object
        _create(plane, ns, "second")
        operator_process.wait_for(
            lambda: _exists(plane, f"/apis/apps/v1/namespaces/{ns}/deployments/second-bf16"),
            TIMEOUT_S,
            "the standby took over",
        )
        assert standby.metric("grm_operator_api_writes_total") > 0
    except (AssertionError, TimeoutError) as exc:
        pytest.fail(f"{exc}\n--- leader ---\n{leader.tail(30)}\n--- standby ---\n{standby.tail(30)}")
    finally:
        leader.stop()
        standby.stop()
