"""The local cluster's real node: the upstream kubelet with Debian's containerd, runc and CNI
bridge, images built here and imported (no registry), the real kube-proxy.

One cluster (2 GPUs) serves the module. Pods run upstream's own e2e test image `agnhost` (built
from the control plane's k8s.io/kubernetes module by `make control-plane`, packed with umoci):
what the kubelet enforces — `runAsUser`, `readOnlyRootFilesystem`, probes, `nvidia.com/gpu`
requests — is enforced for real here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.cluster.realnode import default_images

pytestmark = pytest.mark.e2e

NS = "real-node"


@pytest.fixture(scope="module")
def lc() -> Iterator[LocalCluster]:
    why = LocalCluster.unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with LocalCluster(gpus=2, prometheus=False) as cluster:
        cluster.kubectl("create", "namespace", NS)
        yield cluster


def _agnhost() -> str:
    (image,) = [i for i in default_images() if i.name == "agnhost"]
    return image.reference()


def _apply(lc: LocalCluster, *docs: dict[str, Any]) -> None:
    lc.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def _pod(lc: LocalCluster, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = lc.get(f"/api/v1/namespaces/{NS}/pods/{name}")
    return pod


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_node_is_a_real_kubelet_with_containerd_and_gpus(lc: LocalCluster) -> None:
    (node,) = lc.get("/api/v1/nodes")["items"]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == lc.get("/version")["gitVersion"]
    assert info["containerRuntimeVersion"].startswith("containerd://1.6")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    wide = lc.kubectl("get", "nodes", "-o", "wide").stdout
    assert "containerd://1.6" in wide and info["kubeletVersion"] in wide


def test_security_context_is_enforced(lc: LocalCluster) -> None:
    """runAsUser and readOnlyRootFilesystem hold on the real node."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "secctx", "namespace": NS},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": _agnhost(),
                    "imagePullPolicy": "Never",
                    "args": ["mounttest", "--file_content=/proc/self/status", "--new_file_0644=/written"],
                    "securityContext": {
                        "runAsUser": 1000,
                        "runAsNonRoot": True,
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                    },
                }
            ],
        },
    }
    _apply(lc, pod)
    lc.wait_for(
        lambda: _pod(lc, "secctx")["status"].get("phase") in ("Succeeded", "Failed"), 120, "secctx done"
    )
    logs = lc.kubectl("-n", NS, "logs", "secctx").stdout  # through the API server to the kubelet
    uid_line = next(line for line in logs.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["1000"] * 4, uid_line
    assert 'error writing new file "/written"' in logs and "read-only file system" in logs, logs


def test_service_through_kube_proxy_to_a_ready_pod_on_the_bridge(lc: LocalCluster) -> None:
    """A Deployment of 3 pods asking 1 GPU each on a 2-GPU node: two run on bridge IPs
    (10.245.0.0/24), Ready by an httpGet probe, the third stays Pending (real scheduler); the
    Service's ClusterIP reaches both ready pods through kube-proxy."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": _agnhost(),
                            "imagePullPolicy": "Never",
                            "args": ["netexec", "--http-port=8080"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "64Mi"}},
                            "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": True},
                        }
                    ]
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    _apply(lc, deployment, service)

    def split() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        pods = lc.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=app=web")["items"]
        ready = [p for p in pods if _ready(p)]
        pending = [p for p in pods if p["status"].get("phase") == "Pending" and not p["spec"].get("nodeName")]
        return (ready, pending) if len(ready) == 2 and len(pending) == 1 else None

    ready, pending = lc.wait_for(split, 120, "2 ready web pods (1 GPU each) and 1 pending")
    assert all(p["status"]["podIP"].startswith("10.245.0.") for p in ready)
    reasons = [c.get("reason") for c in pending[0]["status"].get("conditions") or []]
    assert "Unschedulable" in reasons
    url = lc.service_address(NS, "web", 80)
    names = {p["metadata"]["name"] for p in ready}

    def hostnames() -> set[str]:
        seen = set()
        for _ in range(20):
            result = lc.run(["curl", "-sf", "--max-time", "5", f"{url}/hostname"], check=False)
            seen.add(result.stdout.strip())
        return seen

    assert lc.wait_for(lambda: hostnames() == names or None, 60, "both pods behind the ClusterIP")
    lc.kubectl("-n", NS, "delete", "deployment", "web")
