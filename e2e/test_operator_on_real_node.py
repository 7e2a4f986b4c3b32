"""The quickstart on a real node: the operator from its image, under the chart's securityContext,
on the upstream kubelet with containerd; a sim GRMDeployment Ready and serving keep-alive clients
through real kube-proxy.

The operator and worker images are built here from the Dockerfiles' recipes
(`grm_testkit.cluster.pyimages`: debootstrap, the project's wheels, umoci) and loaded into the
node's containerd, as `kind load image-archive` does; `helm install` then names them with
`pullPolicy: Never`. What the node agent cannot show, the kubelet enforces here: the operator runs
as uid 65532 on a read-only root filesystem, workers as uid 1000, each in its own container with
its own network namespace on the CNI bridge, reaching the API server through the `kubernetes`
Service (kube-proxy) and each other by pod IP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_testkit.cluster import pyimages, realnode
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.traffic import ClientMix
from support.paths import EXAMPLES, REPO

pytestmark = pytest.mark.e2e

NS = "default"
OPERATOR_NS = "grm-system"
CHART = REPO / "helm" / "grm-operator"


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def real() -> Iterator[LocalCluster]:
    why = LocalCluster.real_node_unavailable() or pyimages.missing()
    if why is not None:
        _fail_or_skip(why)
    with LocalCluster(gpus=4, node_runtime="kubelet", prometheus=False, start_timeout_s=300) as cluster:
        sets = pyimages.load_project_images(cluster)
        cluster.helm("install", "grm", str(CHART), "-n", OPERATOR_NS, "--create-namespace", *sets)
        try:
            cluster.wait_for(lambda: _operator_pod(cluster), 240, "the operator pod Ready", 1.0)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{_describe(cluster, OPERATOR_NS)}") from exc
        yield cluster


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _operator_pod(lc: LocalCluster) -> dict[str, Any] | None:
    pods = [p for p in lc.get(f"/api/v1/namespaces/{OPERATOR_NS}/pods")["items"] if _ready(p)]
    return pods[0] if pods else None


def _describe(lc: LocalCluster, namespace: str) -> str:
    pods = lc.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
    events = lc.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
    logs = ""
    for name in lc.kubectl("-n", namespace, "get", "pods", "-o", "name", check=False).stdout.split():
        logs += f"--- {name}\n" + lc.kubectl("-n", namespace, "logs", name, "--tail=40", check=False).stdout
    return f"{pods}\n{events[-4000:]}\n{logs[-6000:]}"


def _container_pid(lc: LocalCluster, pod: dict[str, Any]) -> int:
    """The host PID of the pod's first container's process (its task in containerd)."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    node = pod["spec"]["nodeName"]
    socket = realnode.containerd_socket(lc.workdir, node)
    tasks = lc.run(["ctr", "--address", str(socket), "--namespace", "k8s.io", "tasks", "ls"]).stdout
    for line in tasks.splitlines():
        fields = line.split()
        if fields and fields[0] == container_id:
            return int(fields[1])
    raise AssertionError(f"no task {container_id} on {node}:\n{tasks}")


def test_operator_runs_from_its_image_under_the_charts_security_context(real: LocalCluster) -> None:
    pod = _operator_pod(real)
    assert pod is not None
    assert pod["spec"]["containers"][0]["image"] == pyimages.reference(pyimages.OPERATOR)
    pid = _container_pid(real, pod)
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["65532"] * 4, uid_line
    # The container's root is mounted read-only (readOnlyRootFilesystem), its /tmp writable.
    mounts = {
        fields[4]: fields[5].split(",")
        for fields in (line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines())
    }
    assert "ro" in mounts["/"], mounts["/"]
    assert "rw" in mounts["/tmp"], mounts.get("/tmp")
    assert "grm-operator" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


def _manifest() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "grmd-sim-demo.yaml").read_text())
    # As the quickstart has it; the sim workers' derived requests (a tenth of a CPU, 512Mi) fit
    # this 2-CPU node, a GPU worker's (2 + 1 CPU per GPU) would not.
    doc["metadata"]["name"] = "quickstart"
    return doc


def test_sim_grmdeployment_ready_and_serving_keepalive_clients(real: LocalCluster) -> None:
    real.kubectl("apply", "-f", "-", input=json.dumps(_manifest()))
    path = f"/apis/grm.dev/v1alpha1/namespaces/{NS}/grmdeployments/quickstart"

    def ready() -> bool:
        conditions = (real.get(path).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    try:
        real.wait_for(ready, 300, "the GRMDeployment Ready", 1.0)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_describe(real, NS)}\n{_describe(real, OPERATOR_NS)}") from exc
    workers = real.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=grm.dev/deployment=quickstart")["items"]
    ready_workers = [p for p in workers if _ready(p)]
    images = {p["spec"]["containers"][0]["image"] for p in workers}
    assert ready_workers and images == {pyimages.reference(pyimages.WORKER_SIM)}, images
    # Each worker in a container of its own, as uid 1000 (the Deployment's pod securityContext).
    status = Path(f"/proc/{_container_pid(real, ready_workers[0])}/status").read_text()
    assert next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1] == "1000"

    load = ClientMix(real.service_url(NS, "quickstart", 8000), lambda t: 2.0).start()
    try:
        real.wait_for(lambda: len(load.outcomes()) >= 20, 120, "20 answered score requests", 0.5)
    finally:
        outcomes = load.stop()
    failed = [o for o in outcomes if not o.ok]
    assert not failed, failed[:5]
    assert all(each for each in load.by_client().values()), {k: len(v) for k, v in load.by_client().items()}
