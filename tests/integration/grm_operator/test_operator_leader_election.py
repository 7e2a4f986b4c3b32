"""Two operator replicas with Lease-based leader election (HA), against the real control plane:
only the Lease holder acts; killed, it is replaced after the lease duration; restarted, it stays a
candidate and writes nothing while the new leader keeps the Lease; a graceful stop hands over at
once; a leader that finds another holder in the Lease exits."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_operator import rbac
from grm_testkit import operator_process
from grm_testkit.cluster.controlplane import ControlPlane
from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
LEASE = "grm-operator"
# Short timings keep the test fast; the ratios are client-go's (15 s / 10 s / 2 s).
LEASE_DURATION_S = 6.0
TIMING = {"GRM_LEASE_DURATION_S": "6", "GRM_LEASE_RENEW_DEADLINE_S": "4", "GRM_LEASE_RETRY_PERIOD_S": "1"}
TIMEOUT_S = 40.0


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


def test_exactly_one_replica_acts_across_a_kill_and_a_restart(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    plane = control_plane
    operator_process.install_crd(plane)
    ns = f"le-{uuid.uuid4().hex[:8]}"
    _ok(
        plane,
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
    )
    kubeconfig = plane.kubeconfig_for_user("grm-operator-le", ("system:masters",))
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LEASE}"

    def holder() -> str:
        status, lease = plane.request("GET", lease_path)
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "") if status == 200 else ""

    def replica(name: str) -> operator_process.OperatorProcess:
        env = {
            "GRM_NAMESPACES": ns,
            "GRM_LEADER_ELECTION_LEASE": LEASE,
            "GRM_LEADER_ELECTION_NAMESPACE": ns,
            "GRM_LEADER_ELECTION_IDENTITY": name,
            **TIMING,
        }
        return operator_process.OperatorProcess(kubeconfig, tmp_path / f"{name}.log", env=env)

    def deployment(name: str) -> bool:
        return _exists(plane, f"/apis/apps/v1/namespaces/{ns}/deployments/{name}-bf16")

    def lease_reads(proc: operator_process.OperatorProcess) -> float:
        return proc.metric("grm_operator_api_requests_total", verb="get", kind="Lease")

    a, b = replica("a"), replica("b")
    a.start()
    try:
        operator_process.wait_for(lambda: holder().startswith("a_"), TIMEOUT_S, "a leads")
        b.start()  # a standby answers its liveness probe while it waits
        operator_process.wait_for(lambda: lease_reads(b) >= 2, TIMEOUT_S, "b is a candidate")
        _create(plane, ns, "first")
        operator_process.wait_for(lambda: deployment("first"), TIMEOUT_S, "the leader works")
        operator_process.wait_for(lambda: a.metric("grm_operator_queue_depth") == 0, TIMEOUT_S, "a idle")
        assert (a.metric("grm_operator_leader"), b.metric("grm_operator_leader")) == (1, 0)
        assert a.metric("grm_operator_api_writes_total", kind="Deployment") > 0
        assert b.metric("grm_operator_api_writes_total") == 0, b.tail()

        # The leader dies without releasing: b takes over once the Lease expired, not before.
        assert a.popen is not None
        a.popen.kill()
        a.popen.wait(timeout=10)
        killed = time.monotonic()
        _create(plane, ns, "second")
        operator_process.wait_for(lambda: deployment("second"), TIMEOUT_S, "b took over")
        assert time.monotonic() - killed >= LEASE_DURATION_S - 1.0  # measured from b's observation
        assert holder().startswith("b_")
        _, lease = plane.request("GET", lease_path)
        # (Counted from here: a start that lost its ports to another process is retried, and the
        # aborted attempt may have held and released the Lease too.)
        transitions = lease["spec"]["leaseTransitions"]

        # a restarts as a new candidate (a new identity suffix): it must not act, b keeps leading.
        a.start()
        reads = lease_reads(a)
        operator_process.wait_for(lambda: lease_reads(a) >= reads + 3, TIMEOUT_S, "a is a candidate again")
        _create(plane, ns, "third")
        operator_process.wait_for(lambda: deployment("third"), TIMEOUT_S, "b works")
        operator_process.wait_for(lambda: b.metric("grm_operator_queue_depth") == 0, TIMEOUT_S, "b idle")
        assert holder().startswith("b_")
        assert a.metric("grm_operator_leader") == 0
        assert a.metric("grm_operator_api_writes_total") == 0, a.tail()
        assert b.metric("grm_operator_api_writes_total", kind="Deployment") > 0
        _, lease = plane.request("GET", lease_path)
        assert lease["spec"]["leaseTransitions"] == transitions  # nothing since b took over

        # A graceful stop releases the Lease: a takes over within a retry period or two, well
        # before the lease duration would have run out.
        b.stop()
        stopped = time.monotonic()
        operator_process.wait_for(lambda: holder().startswith("a_"), TIMEOUT_S, "a leads again")
        assert time.monotonic() - stopped < LEASE_DURATION_S
        _create(plane, ns, "fourth")
        operator_process.wait_for(lambda: deployment("fourth"), TIMEOUT_S, "a works again")

        # Another holder in the Lease (as after a partition that outlasted the lease): the leader
        # sees it at its next renewal and exits at once, status 3, caches and timers with it.
        _, lease = plane.request("GET", lease_path)
        lease["spec"]["holderIdentity"] = "intruder_0"
        _ok(plane, "PUT", lease_path, lease)
        assert a.popen is not None
        assert a.popen.wait(timeout=TIMEOUT_S) == 3, a.tail()
        assert "lost the leadership" in a.tail()
    except (AssertionError, TimeoutError) as exc:
        pytest.fail(f"{exc}\n--- a ---\n{a.tail(40)}\n--- b ---\n{b.tail(40)}")
    finally:
        a.stop()
        b.stop()


def test_an_elected_operator_works_under_exactly_the_shipped_rules(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """As the chart grants them: the operator's rules cluster-wide, the Lease verbs (derived from
    the elector's calls) only in a Role of the operator's own namespace."""
    plane = control_plane
    operator_process.install_crd(plane)
    ns = f"le-rbac-{uuid.uuid4().hex[:8]}"
    _ok(
        plane,
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
    )
    rbac_api = "/apis/rbac.authorization.k8s.io/v1"
    role = f"grm-operator-{ns}"
    _ok(plane, "POST", f"{rbac_api}/clusterroles", rbac.cluster_role(role, rbac.OPERATOR_RULES))
    _ok(
        plane,
        "POST",
        f"{rbac_api}/clusterrolebindings",
        rbac.cluster_role_binding(role, role, ns, "grm-operator"),
    )
    lease_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "leader-election", "namespace": ns},
        "rules": [r.to_manifest() for r in rbac.LEADER_ELECTION_RULES],
    }
    _ok(plane, "POST", f"{rbac_api}/namespaces/{ns}/roles", lease_role)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "leader-election", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader-election"},
        "subjects": [{"kind": "ServiceAccount", "name": "grm-operator", "namespace": ns}],
    }
    _ok(plane, "POST", f"{rbac_api}/namespaces/{ns}/rolebindings", binding)
    kubeconfig = plane.kubeconfig_for_service_account(ns, "grm-operator", path=tmp_path / "sa.yaml")
    env = {
        "GRM_NAMESPACES": ns,
        "GRM_LEADER_ELECTION_LEASE": LEASE,
        "GRM_LEADER_ELECTION_NAMESPACE": ns,
        **TIMING,
    }
    proc = operator_process.OperatorProcess(kubeconfig, tmp_path / "operator.log", env=env)
    proc.start()
    try:
        operator_process.wait_for(lambda: proc.metric("grm_operator_leader") == 1, TIMEOUT_S, "leads")
        _create(plane, ns, "allowed")
        operator_process.wait_for(
            lambda: _exists(plane, f"/apis/apps/v1/namespaces/{ns}/deployments/allowed-bf16"),
            TIMEOUT_S,
            "works",
        )
        renewals = proc.metric("grm_operator_api_writes_total", kind="Lease")
        operator_process.wait_for(
            lambda: proc.metric("grm_operator_api_writes_total", kind="Lease") >= renewals + 2,
            TIMEOUT_S,
            "renews",
        )
        assert proc.metric("grm_operator_api_requests_total", kind="Lease", code="403") == 0
    except (AssertionError, TimeoutError) as exc:
        pytest.fail(f"{exc}\n{proc.tail(40)}")
    finally:
        proc.stop()
