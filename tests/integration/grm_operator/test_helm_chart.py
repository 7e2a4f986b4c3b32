"""The Helm chart against the real API server: `helm install` (every rendered object accepted,
CRDs from crds/ installed), the operator's ServiceAccount can do exactly what grm_operator/rbac.py
says and nothing else (`kubectl auth can-i --as`), `helm uninstall` removes the release but
keeps the CRDs, and the aggregated ClusterRoles give namespace editors and viewers GRMDeployments
(on the plane with the controller-manager, whose aggregation controller fills `edit` and `view`).

The test control plane has no controllers, so the operator Deployment never gets pods: this
checks what the API server admits and authorises, not the operator's behaviour (that is
tests/integration/test_operator_*.py, run under the same rules).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hack import chartgen

from grm_operator import rbac
from grm_testkit.cluster import tools
from grm_testkit.cluster.controlplane import ControlPlane
from grm_testkit.operator_process import wait_for
from support.helmchart import CHART, run_helm, triples

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
# Resources the operator never touches; its ServiceAccount must not be able to read or change them.
FOREIGN = [("", "secrets"), ("rbac.authorization.k8s.io", "clusterroles"), ("", "serviceaccounts")]


def kubectl(plane: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    path = tools.kubectl()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl missing (make tools)")
        pytest.skip(f"kubectl missing in {tools.tools_bin_dir()} (run `make tools`)")
    proc = subprocess.run(
        [str(path), "--kubeconfig", str(plane.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc


def helm(plane: ControlPlane, *args: str) -> str:
    return run_helm(*args, "--kubeconfig", str(plane.kubeconfig)).stdout


def create_namespace(plane: ControlPlane, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    status, body = plane.request(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    assert status == 201, body
    return name


def subject_access_review(
    plane: ControlPlane, sa: str, verb: str, group: str, resource: str, namespace: str | None
) -> bool:
    """The authoriser's answer for ``sa``, asked with a SubjectAccessReview (no discovery)."""
    base, _, sub = resource.partition("/")
    attributes = {
        "verb": verb,
        "group": group,
        "resource": base,
        "subresource": sub,
        "namespace": namespace or "",
    }
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": sa, "resourceAttributes": attributes},
    }
    status, body = plane.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    assert status == 201, body
    return bool(body["status"].get("allowed"))


def can_i(plane: ControlPlane, sa: str, verb: str, group: str, resource: str, namespace: str | None) -> bool:
    """`kubectl auth can-i VERB RESOURCE --as SA`. kubectl answers "no" for a resource type the
    server does not serve (the Prometheus Operator's podmonitors here); those are asked with a
    SubjectAccessReview, which the authoriser answers from the RBAC rules alone."""
    base, _, sub = resource.partition("/")
    target = f"{base}.{group}" if group else base
    args = ["auth", "can-i", verb, target, "--as", sa]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["-n", namespace] if namespace else []
    proc = kubectl(plane, *args, check=False)
    if "doesn't have a resource type" in proc.stderr:
        return subject_access_review(plane, sa, verb, group, resource, namespace)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), f"{args}: {proc.stdout} {proc.stderr}"
    return answer == "yes"


def check_exact(
    plane: ControlPlane,
    sa: str,
    expected: set[tuple[str, str, str]],
    resources: Iterable[tuple[str, str]],
    namespace: str | None,
) -> None:
    """For every verb on every resource: allowed exactly when ``expected`` holds it."""
    queries = [(verb, group, resource) for group, resource in resources for verb in VERBS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda q: can_i(plane, sa, q[0], q[1], q[2], namespace), queries))
    wrong = [
        f"{verb} {group}/{resource}: {'allowed' if allowed else 'denied'}"
        for (verb, group, resource), allowed in zip(queries, answers, strict=True)
        if allowed != ((group, resource, verb) in expected)
    ]
    assert not wrong, f"in {namespace or 'cluster scope'}: " + "; ".join(wrong)


def manifest_objects(plane: ControlPlane, release: str, namespace: str) -> list[dict[str, Any]]:
    text = helm(plane, "get", "manifest", release, "--namespace", namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def assert_present(plane: ControlPlane, docs: list[dict[str, Any]], namespace: str, present: bool) -> None:
    for doc in docs:
        ns = doc["metadata"].get("namespace")
        args = ["get", doc["kind"], doc["metadata"]["name"], "-o", "name", "--ignore-not-found"]
        args += ["-n", ns] if ns else []
        found = kubectl(plane, *args).stdout.strip() != ""
        assert found == present, (
            f"{doc['kind']}/{doc['metadata']['name']} {'missing' if present else 'left over'}"
        )


def _resources(rules: Iterable[rbac.Rule], scope_cluster: bool) -> list[tuple[str, str]]:
    return sorted(
        {
            (group, resource)
            for rule in rules
            for group in rule.api_groups
            for resource in rule.resources
            if (resource in chartgen.CLUSTER_SCOPED) == scope_cluster
        }
    )


def test_install_clusterwide_ha_then_uninstall(control_plane: ControlPlane) -> None:
    ns = create_namespace(control_plane, "grm-system")
    workload_ns = create_namespace(control_plane, "rl")
    release = f"g{uuid.uuid4().hex[:6]}"
    helm(
        control_plane,
        "install", release, str(CHART), "--namespace", ns,
        "--set", "replicaCount=2,networkPolicy.enabled=true,prometheus.url=http://prometheus:9090",
    )  # fmt: skip
    docs = manifest_objects(control_plane, release, ns)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    } <= kinds
    assert_present(control_plane, docs, ns, present=True)
    kubectl(control_plane, "get", "crd", "grmdeployments.grm.dev")

    sa = f"system:serviceaccount:{ns}:{release}-grm-operator"
    code = triples(r.to_manifest() for r in rbac.OPERATOR_RULES)
    lease = triples(r.to_manifest() for r in rbac.LEADER_ELECTION_RULES)
    everything = _resources(rbac.rules(), False) + FOREIGN
    check_exact(control_plane, sa, code, everything, workload_ns)  # no Leases there
    check_exact(control_plane, sa, code | lease, everything, ns)  # the Lease in its own namespace
    check_exact(control_plane, sa, code, _resources(rbac.rules(), True), None)

    helm(control_plane, "uninstall", release, "--namespace", ns)
    assert_present(control_plane, docs, ns, present=False)
    # Helm never deletes what crds/ installed: the GRMDeployments (and their workers) survive.
    kubectl(control_plane, "get", "crd", "grmdeployments.grm.dev")
    assert not can_i(control_plane, sa, "list", "grm.dev", "grmdeployments", workload_ns)


def test_install_namespaced_grants_nothing_elsewhere(control_plane: ControlPlane) -> None:
    ns = create_namespace(control_plane, "grm-system")
    watched = create_namespace(control_plane, "rl")
    other = create_namespace(control_plane, "other")
    release = f"n{uuid.uuid4().hex[:6]}"
    helm(
        control_plane,
        "install",
        release,
        str(CHART),
        "--namespace",
        ns,
        "--set",
        f"watchNamespaces={{{watched}}}",
    )
    docs = manifest_objects(control_plane, release, ns)
    assert {(d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"].startswith("Role")} == {
        ("Role", watched),
        ("RoleBinding", watched),
        ("Role", ns),  # leader election's Lease, in the operator's namespace
        ("RoleBinding", ns),
    }
    assert_present(control_plane, docs, ns, present=True)

    sa = f"system:serviceaccount:{ns}:{release}-grm-operator"
    code = triples(r.to_manifest() for r in rbac.OPERATOR_RULES)
    lease = triples(r.to_manifest() for r in rbac.LEADER_ELECTION_RULES)
    namespaced = _resources(rbac.rules(), False)
    check_exact(control_plane, sa, code, namespaced + FOREIGN, watched)
    check_exact(control_plane, sa, set(), namespaced, other)
    check_exact(control_plane, sa, lease, namespaced, ns)
    check_exact(control_plane, sa, code, _resources(rbac.OPERATOR_RULES, True), None)

    helm(control_plane, "uninstall", release, "--namespace", ns)
    assert_present(control_plane, docs, ns, present=False)


def test_namespace_editors_and_viewers_get_grmdeployments(control_plane_controllers: ControlPlane) -> None:
    """The chart's aggregated ClusterRoles reach Kubernetes' default ones (the controller-manager's
    clusterrole-aggregation controller copies their rules): a user bound to `edit` in a namespace
    may create and scale GRMDeployments there but not write their status, a `view` user may read
    them, and neither gains anything in another namespace."""
    plane = control_plane_controllers
    ns = create_namespace(plane, "grm-system")
    team = create_namespace(plane, "team")
    other = create_namespace(plane, "other")
    release = f"a{uuid.uuid4().hex[:6]}"
    helm(plane, "install", release, str(CHART), "--namespace", ns)
    for user, role in (("alice", "edit"), ("bob", "view")):
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{user}-{role}", "namespace": team},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
        status, body = plane.request(
            "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{team}/rolebindings", binding
        )
        assert status == 201, body

    # Aggregation is asynchronous: wait until the controller has copied the rules into `edit`.
    wait_for(
        lambda: subject_access_review(plane, "alice", "create", "grm.dev", "grmdeployments", team),
        timeout_s=30,
        what="the edit ClusterRole to aggregate the chart's rules",
    )
    wait_for(
        lambda: subject_access_review(plane, "bob", "list", "grm.dev", "grmdeployments", team),
        timeout_s=30,
        what="the view ClusterRole to aggregate the chart's rules",
    )
    answers = {
        (user, verb, resource, where): subject_access_review(plane, user, verb, "grm.dev", resource, where)
        for user in ("alice", "bob")
        for verb, resource in [
            ("create", "grmdeployments"),
            ("delete", "grmdeployments"),
            ("patch", "grmdeployments/scale"),
            ("patch", "grmdeployments/status"),
            ("get", "grmdeployments/status"),
            ("watch", "grmdeployments"),
        ]
        for where in (team, other)
    }
    allowed = {key for key, yes in answers.items() if yes}
    assert allowed == {
        ("alice", "create", "grmdeployments", team),
        ("alice", "delete", "grmdeployments", team),
        ("alice", "patch", "grmdeployments/scale", team),
        ("alice", "get", "grmdeployments/status", team),
        ("alice", "watch", "grmdeployments", team),
        ("bob", "get", "grmdeployments/status", team),
        ("bob", "watch", "grmdeployments", team),
    }
    helm(plane, "uninstall", release, "--namespace", ns)


def _crd_annotations(plane: ControlPlane, name: str) -> dict[str, str]:
    status, body = plane.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    assert status == 200, body
    annotations: dict[str, str] = body["metadata"].get("annotations") or {}
    return annotations


def test_managed_crds_upgrade_with_the_release_and_stay_on_uninstall(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """crds.manage: an existing release (CRDs from crds/) takes them over with --take-ownership,
    a changed CRD in the chart reaches the cluster with `helm upgrade` (which crds/ never does),
    and `helm uninstall` keeps them (helm.sh/resource-policy: keep)."""
    ns = create_namespace(control_plane, "grm-system")
    release = f"c{uuid.uuid4().hex[:6]}"
    helm(control_plane, "install", release, str(CHART), "--namespace", ns)
    crd = "grmdeployments.grm.dev"

    # A next version of the chart whose GRMDeployment CRD says something new.
    chart = tmp_path / "grm-operator"
    shutil.copytree(CHART, chart)
    template = chart / chartgen.MANAGED_CRDS_FILE
    marker = f"upgraded-{uuid.uuid4().hex[:6]}"
    # The first CRD in the template is the GRMDeployment's: one more label on it.
    labels = "    app.kubernetes.io/part-of: grm-elastic\n"
    text = template.read_text()
    assert text.index(labels) < text.index("kind: GRMDeployment")
    template.write_text(text.replace(labels, f"{labels}    grm.dev/chart-test: {marker}\n", 1))
    helm(
        control_plane,
        "upgrade",
        release,
        str(chart),
        "--namespace",
        ns,
        "--set",
        "crds.manage=true",
        "--take-ownership",
    )
    status, body = control_plane.request(
        "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
    )
    assert status == 200, body
    assert body["metadata"]["labels"].get("grm.dev/chart-test") == marker
    assert _crd_annotations(control_plane, crd)["meta.helm.sh/release-name"] == release

    helm(control_plane, "uninstall", release, "--namespace", ns)
    annotations = _crd_annotations(control_plane, crd)
    assert annotations["helm.sh/resource-policy"] == "keep"
