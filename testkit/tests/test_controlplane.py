"""The real control plane of the tests: etcd + kube-apiserver come up with RBAC, serve namespaced
resources, the real kubectl talks to them, identities are authorised by RBAC, and the optional
controller-manager turns a Deployment into a ReplicaSet and Pods."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from grm_testkit.cluster import tools
from grm_testkit.cluster.controlplane import ControlPlane, ControlPlaneError, ControlPlaneOptions

pytestmark = pytest.mark.controlplane


def _kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = tools.kubectl()
    if binary is None:
        pytest.skip(f"kubectl not installed in {tools.tools_bin_dir()} (run `make tools`)")
    return subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def _poll(fetch: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout_s} s")
        time.sleep(0.1)


def test_apiserver_is_up_with_rbac(control_plane: ControlPlane) -> None:
    status, version = control_plane.request("GET", "/version")
    assert status == 200
    assert version["gitVersion"] == "v1.35.4"
    assert control_plane.url.startswith("https://127.0.0.1:")
    assert control_plane.kubeconfig.is_file()
    status, groups = control_plane.request("GET", "/apis")
    assert "rbac.authorization.k8s.io" in {g["name"] for g in groups["groups"]}
    # etcd + apiserver within the few seconds the session fixture promises (3 s measured here).
    assert control_plane.timings["total"] < 60


def test_namespaced_resource_roundtrip(kube_api: Any, namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm"), data={"k": "v"})
    created = core.create_namespaced_config_map(namespace, body)
    assert created.metadata.uid and created.metadata.resource_version
    assert core.read_namespaced_config_map("cm", namespace).data == {"k": "v"}
    with pytest.raises(client.ApiException) as conflict:
        core.create_namespaced_config_map(namespace, body)
    assert conflict.value.status == 409


def test_update_retries_a_conflicting_write(control_plane: ControlPlane, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps/edited"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "edited"}, "data": {"n": "0"}}
    assert control_plane.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", cm)[0] == 201
    calls = []

    def change(body: dict[str, Any]) -> None:
        calls.append(body["metadata"]["resourceVersion"])
        if len(calls) == 1:  # another writer lands between our GET and our PUT
            status, _ = control_plane.request("PUT", path, {**body, "data": {"n": "1", "other": "x"}})
            assert status == 200
        body["data"]["mine"] = "y"

    stored = control_plane.update(path, change)
    assert len(calls) == 2 and calls[0] != calls[1]  # the 409 made it read the object again
    assert stored["data"] == {"n": "1", "other": "x", "mine": "y"}
    with pytest.raises(ControlPlaneError, match="404"):
        control_plane.update(f"/api/v1/namespaces/{namespace}/configmaps/absent", change)


def test_kubectl_talks_to_it(control_plane: ControlPlane, namespace: str) -> None:
    out = _kubectl(control_plane.kubeconfig, "get", "ns", "-o", "name").stdout.split()
    assert f"namespace/{namespace}" in out
    assert "namespace/kube-system" in out


def test_unauthorised_user_is_forbidden(control_plane: ControlPlane, namespace: str) -> None:
    from kubernetes import client, config

    path = control_plane.kubeconfig_for_user("alice", ("testers",))
    api = config.new_client_from_config(config_file=str(path))
    try:
        with pytest.raises(client.ApiException) as denied:
            client.CoreV1Api(api).list_namespaced_config_map(namespace)
        assert denied.value.status == 403
        message = json.loads(denied.value.body)["message"]
        assert 'User "alice"' in message
    finally:
        api.close()


def test_rbac_service_account(control_plane: ControlPlane, namespace: str) -> None:
    sa = f"system:serviceaccount:{namespace}:worker"
    admin = control_plane.kubeconfig
    control_plane.service_account_token(namespace, "worker")  # creates the ServiceAccount

    def can_i(verb: str, resource: str) -> str:
        result = _kubectl(admin, "auth", "can-i", verb, resource, "-n", namespace, f"--as={sa}", check=False)
        return result.stdout.strip()

    assert can_i("list", "pods") == "no"
    _kubectl(admin, "-n", namespace, "create", "role", "pod-reader", "--verb=get,list", "--resource=pods")
    _kubectl(
        admin,
        "-n",
        namespace,
        "create",
        "rolebinding",
        "worker-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:worker",
    )
    assert can_i("list", "pods") == "yes"
    assert can_i("delete", "pods") == "no"

    # The same through the ServiceAccount's own bound token, not impersonation.
    sa_config = control_plane.kubeconfig_for_service_account(namespace, "worker")
    assert _kubectl(sa_config, "get", "pods", "-n", namespace).returncode == 0
    denied = _kubectl(sa_config, "get", "configmaps", "-n", namespace, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr


def test_start_failure_shows_the_log_tail(tmp_path: Path, control_plane: ControlPlane) -> None:
    plane = ControlPlane(
        ControlPlaneOptions(apiserver_args=("--no-such-flag",), workdir_parent=tmp_path, start_timeout_s=30)
    )
    with pytest.raises(ControlPlaneError) as failed:
        plane.start()
    message = str(failed.value)
    assert "kube-apiserver exited" in message
    assert "no-such-flag" in message
    assert list(tmp_path.iterdir()) == []  # the temp dir is removed


def test_controller_manager_makes_replicasets_and_pods(control_plane_controllers: ControlPlane) -> None:
    from kubernetes import client, config

    plane = control_plane_controllers
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    try:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="deploy-test")))
        labels = {"app": "web"}
        apps.create_namespaced_deployment(
            "deploy-test",
            client.V1Deployment(
                metadata=client.V1ObjectMeta(name="web"),
                spec=client.V1DeploymentSpec(
                    replicas=2,
                    selector=client.V1LabelSelector(match_labels=labels),
                    template=client.V1PodTemplateSpec(
                        metadata=client.V1ObjectMeta(labels=labels),
                        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
                    ),
                ),
            ),
        )
        rs = _poll(lambda: apps.list_namespaced_replica_set("deploy-test").items, 60, "ReplicaSet")
        assert rs[0].metadata.owner_references[0].name == "web"
        pods = _poll(
            lambda: [p for p in core.list_namespaced_pod("deploy-test").items if p] or None, 60, "Pods"
        )
        _poll(lambda: len(core.list_namespaced_pod("deploy-test").items) == 2, 60, "2 Pods")
        # No kubelet: the scheduler may bind them, but nothing runs them.
        assert all(p.status.phase == "Pending" for p in pods)
        # The namespace's default ServiceAccount comes from the serviceaccount controller.
        _poll(lambda: core.list_namespaced_service_account("deploy-test").items, 60, "default SA")
        # Garbage collection: deleting the Deployment removes its ReplicaSet.
        apps.delete_namespaced_deployment("web", "deploy-test", propagation_policy="Background")
        _poll(lambda: not apps.list_namespaced_replica_set("deploy-test").items, 60, "ReplicaSet GC")
    finally:
        api.close()


_IN_NAMESPACE = """
import json, sys, time
from grm_testkit.cluster.controlplane import ControlPlane, ControlPlaneOptions
opts = ControlPlaneOptions(bind_address="10.96.0.1", service_cluster_ip_range="10.97.0.0/16")
with ControlPlane(opts) as cp:
    path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes"
    deadline = time.monotonic() + 30
    while (found := cp.request("GET", path))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    json.dump({"url": cp.url, "slice": found[1]}, sys.stdout)
"""


def test_runs_on_a_non_loopback_address_in_a_network_namespace(control_plane: ControlPlane) -> None:
    """The local cluster runs the API server inside a network namespace of its own on a
    10.96.x address: there the `kubernetes` Service gets a real EndpointSlice (loopback
    addresses are rejected by validation, so on 127.0.0.1 it has none). `control_plane` is
    requested for its binary check (skip, or fail under CI)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("unshare or ip (util-linux, iproute2) missing")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no network namespaces here: {probe.stderr.strip()}")
    # Inside the namespace only lo exists; 10.96.0.0/16 is routed to it, so nothing leaves.
    setup = 'ip link set lo up && ip route add local 10.96.0.0/16 dev lo && exec "$0" -c "$1"'
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", setup, sys.executable, _IN_NAMESPACE],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["url"].startswith("https://10.96.0.1:")
    assert [e["addresses"] for e in out["slice"]["endpoints"]] == [["10.96.0.1"]]


def test_node_identity_is_confined_to_its_node(control_plane: ControlPlane) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig_for_node("node-a")))
    try:
        core = client.CoreV1Api(api)
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="node-a")))
        with pytest.raises(client.ApiException) as denied:
            core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="node-b")))
        assert denied.value.status == 403  # NodeRestriction: only its own Node object
        with pytest.raises(client.ApiException) as secrets:
            core.list_secret_for_all_namespaces()
        assert secrets.value.status == 403  # Node authorizer: no secrets beyond its pods'
    finally:
        api.close()
