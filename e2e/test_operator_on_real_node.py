"""The operator from its image under the chart's securityContext, on the local cluster's real node.

The e2e suite's cluster (`lc`, e2e/conftest.py) runs its pods on the upstream kubelet with
containerd, the operator and sim worker images built here from the Dockerfiles' recipes
(`grm_testkit.cluster.pyimages`) and installed by `helm install` with `pullPolicy: Never`. What
the kubelet and runc enforce, this module reads from the container's process (`/proc/<pid>`). The scenarios of
e2e/test_grm_scenarios.py then run on the same kind of node (workers as uid 1000, each in a
container with its own network namespace, keep-alive clients through real kube-proxy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from grm_testkit.cluster import pyimages
from grm_testkit.cluster.localcluster import LocalCluster

pytestmark = pytest.mark.e2e

OPERATOR_NS = "grm-system"


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _uids(pid: int) -> list[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]


def _mount_options(pid: int) -> dict[str, list[str]]:
    """Mount point → options, from the process's own mount namespace."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return {fields[4]: fields[5].split(",") for fields in (line.split() for line in lines)}


def test_operator_runs_from_its_image_under_the_charts_security_context(local_lc: LocalCluster) -> None:
    lc = local_lc
    pods = [p for p in lc.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods")["items"] if _ready(p)]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    (pod,) = pods
    assert pod["spec"]["containers"][0]["image"] == pyimages.reference(pyimages.OPERATOR)
    pid = lc.container_pid(pod)
    assert "grm-operator" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    # The chart's podSecurityContext (runAsUser 65532) and securityContext (readOnlyRootFilesystem,
    # a writable emptyDir at /tmp), enforced by the kubelet and runc.
    assert _uids(pid) == ["65532"] * 4
    mounts = _mount_options(pid)
    assert "ro" in mounts["/"], mounts["/"]
    assert "rw" in mounts["/tmp"], mounts.get("/tmp")
    # It reached the API server through the `kubernetes` Service (kube-proxy) and took its Lease.
    # Ready comes first: the Lease is taken by the first acquire after start-up, or after the
    # previous holder's lease duration when an earlier operator pod held it.
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NS}/leases/grm-grm-operator"

    def holder() -> str | None:
        status, lease = lc.api("GET", lease_path)
        assert status in (200, 404), (status, lease)
        return str(lease["spec"].get("holderIdentity")) if status == 200 else None

    lc.wait_for(lambda: (holder() or "").startswith(pod["metadata"]["name"]), 120, "the operator's Lease")
