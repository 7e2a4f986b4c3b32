"""The real operator talking to the API server through the fault-injecting proxy: injected 500s,
409s and dropped watches delay it, but it converges, and its retries stop once it has.

The operator watches only this module's namespaces, so other tests sharing the session's
control plane are untouched.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_testkit import operator_process
from grm_testkit.cluster.controlplane import ControlPlane
from grm_testkit.cluster.faultplan import FaultRule
from grm_testkit.cluster.faultproxy import FaultProxy
from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
TIMEOUT_S = 45.0
NAMESPACES = tuple(f"faults-{uuid.uuid4().hex[:6]}-{i}" for i in range(6))


class FaultHarness:
    def __init__(self, plane: ControlPlane, proxy: FaultProxy, workdir: Path) -> None:
        self.plane = plane
        self.proxy = proxy
        for ns in NAMESPACES:
            self.ok(
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            )
        self.operator = operator_process.OperatorProcess(
            proxy.kubeconfig(workdir / "via-proxy.yaml"),
            workdir / "operator.log",
            env={
                "GRM_NAMESPACES": ",".join(NAMESPACES),
                "GRM_RETRY_INITIAL_S": "0.2",
                "GRM_RETRY_MAX_S": "1",
                # Short watches: kopf re-lists and resumes often, which the drop test relies on too.
                "GRM_WATCH_TIMEOUT_S": "20",
            },
        )

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.plane.request(method, path, body)
        assert status in (200, 201), f"{method} {path}: {status} {payload}"
        return payload

    def create(self, ns: str) -> None:
        body = yaml.safe_load(EXAMPLE.read_text())
        body["metadata"] = {"name": "reward", "namespace": ns}
        self.ok("POST", f"/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments", body)

    def grmd(self, ns: str) -> dict[str, Any]:
        got: dict[str, Any] = self.ok("GET", f"/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments/reward")
        return got

    def update_spec(self, ns: str, change: Callable[[dict[str, Any]], None]) -> None:
        self.plane.update(f"/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments/reward", change)

    def converged(self, ns: str, *, max_num_seqs: int | None = None) -> bool:
        """Every child exists, the status has the current generation and is not Degraded."""
        body = self.grmd(ns)
        status = body.get("status") or {}
        if status.get("observedGeneration") != body["metadata"]["generation"]:
            return False
        degraded = next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), None)
        if degraded is None or degraded["status"] != "False":
            return False
        for variant in ("bf16", "fp8", "int4"):
            if (
                self.plane.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/reward-{variant}")[0]
                != 200
            ):
                return False
        if max_num_seqs is not None:
            status_code, cm = self.plane.request(
                "GET", f"/api/v1/namespaces/{ns}/configmaps/reward-fp8-config"
            )
            if (
                status_code != 200
                or json.loads(cm["data"]["worker.json"])["vllm"].get("max_num_seqs") != max_num_seqs
            ):
                return False
        return True

    def wait(self, predicate: Any, what: str) -> Any:
        try:
            return operator_process.wait_for(predicate, TIMEOUT_S, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.operator.tail()}") from exc


@pytest.fixture(scope="module")
def faults(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultHarness]:
    operator_process.install_crd(control_plane)
    with FaultProxy.for_control_plane(control_plane) as proxy:
        harness = FaultHarness(control_plane, proxy, tmp_path_factory.mktemp("faults"))
        harness.operator.start()
        try:
            yield harness
        finally:
            harness.operator.stop()


def test_server_errors_on_apply_are_retried_until_converged(faults: FaultHarness) -> None:
    ns = NAMESPACES[0]
    rule = faults.proxy.add_rule(
        FaultRule(method="PATCH", path=rf"/namespaces/{ns}/deployments/", status=500, times=3)
    )
    try:
        faults.create(ns)
        faults.wait(lambda: faults.converged(ns), "converged despite three 500s")
    finally:
        faults.proxy.clear_rules()
    assert rule.fired == 3
    assert faults.operator.metric("grm_operator_reconcile_errors_total", error="KubeError") >= 1


def test_conflicts_on_status_writes_are_retried_until_converged(faults: FaultHarness) -> None:
    ns = NAMESPACES[1]
    rule = faults.proxy.add_rule(
        FaultRule(method="PATCH", path=rf"/namespaces/{ns}/grmdeployments/reward/status", status=409, times=2)
    )
    try:
        faults.create(ns)
        faults.wait(lambda: faults.converged(ns), "converged despite two 409s")
    finally:
        faults.proxy.clear_rules()
    assert rule.fired == 2
    assert faults.operator.metric("grm_operator_reconcile_errors_total", error="Conflict") >= 1


@pytest.mark.parametrize("graceful", [False, True], ids=["reset", "graceful"])
def test_dropped_watches_resume_and_see_later_changes(faults: FaultHarness, graceful: bool) -> None:
    ns = NAMESPACES[2] if not graceful else NAMESPACES[3]
    faults.create(ns)
    faults.wait(lambda: faults.converged(ns), "first convergence")
    faults.wait(lambda: faults.proxy.open_watches >= 5, "the operator's watches are open")
    dropped = faults.proxy.drop_watches(graceful=graceful)
    assert dropped >= 5
    faults.update_spec(ns, lambda body: body["spec"].update(engine={"maxNumSeqs": 32}))
    faults.wait(lambda: faults.converged(ns, max_num_seqs=32), "a change after the drop is applied")
    faults.wait(lambda: faults.proxy.open_watches >= 5, "the watches are re-established")


def test_steady_state_through_the_proxy_sends_no_writes(faults: FaultHarness) -> None:
    for ns in NAMESPACES[4:]:
        faults.create(ns)
    for ns in NAMESPACES[4:]:
        faults.wait(lambda ns=ns: faults.converged(ns), f"{ns} converged")
    faults.wait(lambda: faults.operator.metric("grm_operator_queue_depth") == 0, "queue drained")
    # The steady state includes the autoscaler's first decision (its timer, not the reconcile,
    # writes it): before, a first tick landing after clear_records() was counted as a write.
    for ns in NAMESPACES[4:]:
        faults.wait(lambda ns=ns: (faults.grmd(ns).get("status") or {}).get("lastDecision"), f"{ns} decided")
    faults.wait(lambda: faults.proxy.open_watches >= 5, "the operator's watches are open")
    faults.proxy.clear_records()
    # Watches that end (here: all at once, as on an API server restart) are resumed from their
    # resourceVersion; nothing has changed, so nothing may be written.
    faults.proxy.drop_watches(graceful=True)
    faults.wait(lambda: faults.proxy.open_watches >= 5, "the watches are re-established")
    faults.wait(lambda: faults.operator.metric("grm_operator_queue_depth") == 0, "queue drained")
    records = faults.proxy.records
    assert sum(r.watch for r in records) >= 5
    writes = [r for r in records if r.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert writes == [], writes
