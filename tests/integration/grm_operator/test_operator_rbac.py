"""The operator under a ServiceAccount bound to exactly :mod:`grm_operator.rbac`'s rules, checked by
the real RBAC authoriser: it works with them, and taking one verb away breaks what needs it.

The operator watches only this module's namespace (``GRM_NAMESPACES``), so it never touches the
objects of other tests sharing the session's control plane.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_operator import rbac
from grm_testkit import operator_process
from grm_testkit.cluster.controlplane import ControlPlane
from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
ROLE_PATH = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
BINDING_PATH = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
TIMEOUT_S = 30.0


class RbacHarness:
    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        self.plane = plane
        self.ns = f"rbac-{uuid.uuid4().hex[:8]}"
        self.role = f"grm-operator-{self.ns}"
        self.ok(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}},
        )
        self.set_rules(rbac.OPERATOR_RULES, create=True)
        self.ok(
            "POST", BINDING_PATH, rbac.cluster_role_binding(self.role, self.role, self.ns, "grm-operator")
        )
        kubeconfig = plane.kubeconfig_for_service_account(self.ns, "grm-operator", path=workdir / "sa.yaml")
        self.operator = operator_process.OperatorProcess(
            kubeconfig,
            workdir / "operator.log",
            env={"GRM_NAMESPACES": self.ns, "GRM_RETRY_INITIAL_S": "0.2", "GRM_RETRY_MAX_S": "2"},
        )

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.plane.request(method, path, body)
        assert status in (200, 201), f"{method} {path}: {status} {payload}"
        return payload

    def set_rules(self, rules: tuple[rbac.Rule, ...], *, create: bool = False) -> None:
        role = rbac.cluster_role(self.role, rules)
        if create:
            self.ok("POST", ROLE_PATH, role)
            return
        role["metadata"]["resourceVersion"] = self.ok("GET", f"{ROLE_PATH}/{self.role}")["metadata"][
            "resourceVersion"
        ]
        self.ok("PUT", f"{ROLE_PATH}/{self.role}", role)

    def create(self, name: str) -> None:
        body = yaml.safe_load(EXAMPLE.read_text())
        body["metadata"] = {"name": name, "namespace": self.ns}
        self.ok("POST", f"/apis/grm.dev/v1alpha1/namespaces/{self.ns}/grmdeployments", body)

    def grmd(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = self.ok(
            "GET", f"/apis/grm.dev/v1alpha1/namespaces/{self.ns}/grmdeployments/{name}"
        )
        return got

    def update_spec(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        self.plane.update(f"/apis/grm.dev/v1alpha1/namespaces/{self.ns}/grmdeployments/{name}", change)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        conditions = (self.grmd(name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), None)

    def exists(self, path: str) -> bool:
        return self.plane.request("GET", path)[0] == 200

    def wait(self, predicate: Any, what: str) -> Any:
        try:
            return operator_process.wait_for(predicate, TIMEOUT_S, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- operator log ---\n{self.operator.tail()}") from exc

    def forbidden_error(self, name: str) -> str | None:
        cond = self.condition(name, "Degraded")
        if (
            cond
            and cond["status"] == "True"
            and cond["reason"] == "ReconcileError"
            and "forbidden" in cond["message"]
        ):
            return str(cond["message"])
        return None


@pytest.fixture(scope="module")
def rbac_harness(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RbacHarness]:
    operator_process.install_crd(control_plane)
    harness = RbacHarness(control_plane, tmp_path_factory.mktemp("rbac"))
    harness.operator.start()
    try:
        yield harness
    finally:
        harness.operator.stop()


def test_operator_works_with_exactly_the_shipped_rules(rbac_harness: RbacHarness) -> None:
    h = rbac_harness
    h.set_rules(rbac.OPERATOR_RULES)
    h.create("allowed")
    ns = h.ns
    for path in (
        f"/apis/apps/v1/namespaces/{ns}/deployments/allowed-bf16",
        f"/api/v1/namespaces/{ns}/configmaps/allowed-bf16-config",
        f"/api/v1/namespaces/{ns}/services/allowed",
        f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/allowed",
        f"/api/v1/namespaces/{ns}/secrets/allowed-admin-token",
    ):
        h.wait(lambda p=path: h.exists(p), f"{path} created under the operator's ServiceAccount")
    h.wait(lambda: (h.condition("allowed", "SpecValid") or {}).get("status") == "True", "status written")
    h.wait(
        lambda: any(e["reason"] == "Valid" for e in h.ok("GET", f"/api/v1/namespaces/{ns}/events")["items"]),
        "an Event posted",
    )
    # Removing a variant deletes its Deployment and ConfigMap: the delete verbs are granted.
    h.update_spec("allowed", lambda body: body["spec"]["variants"].pop())
    h.wait(lambda: not h.exists(f"/api/v1/namespaces/{ns}/configmaps/allowed-int4-config"), "int4 pruned")
    assert h.operator.metric("grm_operator_api_requests_total", code="403") == 0


@pytest.mark.parametrize(
    ("resource", "verb"),
    [("deployments", "patch"), ("configmaps", "delete"), ("deployments", "create"), ("secrets", "create")],
)
def test_removing_one_verb_breaks_the_operator(rbac_harness: RbacHarness, resource: str, verb: str) -> None:
    h = rbac_harness
    h.set_rules(rbac.without(rbac.OPERATOR_RULES, resource, verb))
    name = f"deny-{resource[:6]}-{verb}"
    try:
        h.create(name)
        if verb == "delete":
            # Creating works; pruning a removed variant needs the missing verb.
            h.wait(lambda: (h.condition(name, "SpecValid") or {}).get("status") == "True", "first reconcile")
            h.update_spec(name, lambda body: body["spec"]["variants"].pop())
        message = h.wait(
            lambda: h.forbidden_error(name), f"Degraded=True (ReconcileError) without {verb} on {resource}"
        )
        assert resource in message and verb in message
        # The condition is written before the failed reconcile returns and is counted: poll.
        h.wait(
            lambda: h.operator.metric("grm_operator_reconcile_errors_total", error="Forbidden") >= 1,
            "the Forbidden reconcile error counted",
        )
    finally:
        h.set_rules(rbac.OPERATOR_RULES)
    # With the verb back, the retries converge and the condition clears.
    h.wait(
        lambda: (h.condition(name, "Degraded") or {}).get("reason") == "AsExpected", "recovered after the fix"
    )
