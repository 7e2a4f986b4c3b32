"""The local cluster itself, end to end: the control plane, the real node (kubelet + containerd),
the real kube-proxy (nftables) and Prometheus inside a network namespace of their own.

One cluster (2 GPUs) serves the module; short-lived ones check the operator installed by helm,
that teardown leaves nothing behind, the command line, and that a dead component stops the
cluster. Workloads run upstream's e2e test image `agnhost` (`netexec`: answers `/hostname` with
its pod's name; `porter`: serves an environment variable's value on a port), the worker and
operator tests the project's images (`grm_testkit.cluster.pyimages`). What the kubelet itself
does (probes, hooks, restarts, init containers, securityContext) is upstream's to test;
testkit/tests/test_realnode.py checks the node's setup.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from grm_testkit.cluster import pyimages, tools
from grm_testkit.cluster.clusteroptions import API_ADDRESS, PROMETHEUS_PORT
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.cluster.realnode import default_images
from support.paths import EXAMPLES, REPO

pytestmark = pytest.mark.e2e

NS = "lc-test"


def _skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _require_cluster(*, images: bool = False) -> None:
    why = LocalCluster.unavailable() or (pyimages.missing() if images else None)
    if why is not None:
        _skip_or_fail(why)
    if tools.kubectl() is None or tools.helm() is None:
        _skip_or_fail(f"kubectl/helm not installed in {tools.tools_bin_dir()} (run `make tools`)")


@pytest.fixture(scope="module")
def lc() -> Iterator[LocalCluster]:
    _require_cluster()
    with LocalCluster(gpus=2, scrape_interval_s=1.0) as cluster:
        cluster.kubectl("create", "namespace", NS)
        yield cluster


def _agnhost() -> str:
    (image,) = [i for i in default_images() if i.name == "agnhost"]
    return image.reference()


def _apply(lc: LocalCluster, *docs: dict[str, Any]) -> None:
    lc.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def _netexec(**extra: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "image": _agnhost(),
        "imagePullPolicy": "Never",
        "args": ["netexec", "--http-port=8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
        **extra,
    }


def _deployment(name: str, replicas: int, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container], **spec}},
        },
    }


def _service(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    }


def _pods(lc: LocalCluster, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lc.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={selector}")["items"]
    return items


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _ready_pods(lc: LocalCluster, selector: str, count: int, timeout_s: float = 120) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        pods = [p for p in _pods(lc, selector) if not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == count and all(_ready(p) for p in pods) else None

    result: list[dict[str, Any]] = lc.wait_for(check, timeout_s, f"{count} ready pods {selector}")
    return result


def _get(url: str) -> str:
    # A connection per request (`Connection: close`): kube-proxy picks a pod per connection.
    request = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(resp.read().decode())


def _get_json(url: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_get(url))
    return data


def _answering(url: str, requests: int = 30) -> set[str] | None:
    """The pods (netexec's `/hostname`: the pod's name) that answered `requests` requests, each
    on a new connection, or None when one failed (the callers poll until a full round answers)."""
    try:
        return {_get(f"{url}/hostname") for _ in range(requests)}
    except OSError:  # URLError, ConnectionResetError, RemoteDisconnected, timeouts
        return None


def test_cluster_is_up_and_sealed(lc: LocalCluster) -> None:
    nodes = lc.get("/api/v1/nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["local-node-0"]
    assert nodes[0]["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in nodes[0]["status"]["conditions"])
    # The kubelet's lease controller creates its Lease after the Node registered.
    path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/local-node-0"
    lease = lc.wait_for(lambda: (r := lc.api("GET", path))[0] == 200 and r[1], 60, "the node's Lease")
    assert lease["spec"]["holderIdentity"] == "local-node-0"
    # kubectl inside reaches the API server on 10.244.255.2; the `kubernetes` Service answers through
    # kube-proxy (10.96.0.1:443 → the endpoint 10.244.255.2:6443 kept by the real controller).
    assert lc.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    probe = (
        "import socket\n"
        "s = socket.create_connection(('10.96.0.1', 443), timeout=5); s.close()\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 80), timeout=5)\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    out = lc.run([sys.executable, "-c", probe]).stdout.strip()
    assert out in ("101", "113")  # ENETUNREACH / EHOSTUNREACH: no route leaves the namespace
    assert lc.api_url == f"https://{API_ADDRESS}:6443"


def test_deployment_service_and_scaling(lc: LocalCluster) -> None:
    # As the operator's workers do: leave the endpoints before SIGTERM. 5 s: the EndpointSlice
    # controller and kube-proxy each take about a second, more on a busy 2-core machine.
    web = _deployment(
        "web",
        2,
        _netexec(lifecycle={"preStop": {"sleep": {"seconds": 5}}}),
        terminationGracePeriodSeconds=30,
    )
    _apply(lc, web, _service("web", 80))
    pods = _ready_pods(lc, "app=web", 2)
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2 and all(ip.startswith("10.245.0.") for ip in ips)

    url = lc.service_url(NS, "web", 80)
    names = {p["metadata"]["name"] for p in pods}
    lc.wait_for(lambda: _answering(url) == names or None, 60, "both pods behind the Service")
    # Inside the namespace the ClusterIP itself answers.
    inner = lc.run(["curl", "-sf", "--max-time", "5", f"{lc.service_address(NS, 'web', 80)}/hostname"])
    assert inner.stdout.strip() in names

    # kube-proxy balances per connection (L4): every request on one keep-alive connection
    # reaches the same pod.
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    on_one_connection = set()
    for _ in range(20):
        conn.request("GET", "/hostname")
        on_one_connection.add(conn.getresponse().read().decode())
    conn.close()
    assert len(on_one_connection) == 1 and on_one_connection <= names

    lc.kubectl("-n", NS, "scale", "deployment/web", "--replicas=3")
    three = {p["metadata"]["name"] for p in _ready_pods(lc, "app=web", 3)}
    lc.wait_for(lambda: _answering(url, 45) == three or None, 60, "the third pod behind the Service")

    # Scale in under a steady client (a connection per request): no request fails, since a pod
    # leaves the endpoints (preStop sleep) before its SIGTERM.
    stop = threading.Event()
    outcomes: Counter[str] = Counter()

    def client() -> None:
        while not stop.is_set():
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                conn.request("GET", "/hostname", headers={"Connection": "close"})
                resp = conn.getresponse()
                resp.read()
                outcomes[str(resp.status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                outcomes[type(exc).__name__] += 1
            finally:
                conn.close()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        lc.kubectl("-n", NS, "scale", "deployment/web", "--replicas=1")
        (last,) = _ready_pods(lc, "app=web", 1)
        lc.wait_for(
            lambda: (
                not [p for p in _pods(lc, "app=web") if p["metadata"]["name"] != last["metadata"]["name"]]
            ),
            90,
            "the removed pods gone",
        )
    finally:
        stop.set()
        thread.join()
    assert outcomes["200"] > 20 and set(outcomes) == {"200"}, outcomes
    lc.wait_for(lambda: _answering(url) == {last["metadata"]["name"]} or None, 30, "only the remaining pod")
    lc.kubectl("-n", NS, "delete", "deployment", "web", "--wait=false")


def test_kube_proxy_programs_services_in_nftables(lc: LocalCluster) -> None:
    """The real kube-proxy serves Services: its nftables table maps each ClusterIP port to the
    Service's endpoints, and, as on any nftables-mode node, it rejects a ClusterIP port no Service
    defines and a Service without endpoints (connection refused at once, never a hang)."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "empty", "namespace": NS},
        "spec": {"selector": {"app": "nobody"}, "ports": [{"port": 8080}]},
    }
    _apply(lc, service)
    ip = lc.cluster_ip(NS, "empty")

    def listed() -> str | None:
        ruleset = lc.run(["nft", "list", "table", "ip", "kube-proxy"]).stdout
        return ruleset if f"{ip} . tcp . 8080" in ruleset else None

    ruleset = lc.wait_for(listed, 30, "the Service in kube-proxy's no-endpoint map")
    assert "10.96.0.1 . tcp . 443 : goto service-" in ruleset  # `kubernetes`, with its endpoint
    probe = (
        "import socket\n"
        "for port in (8080, 9999):\n"
        "    try:\n"
        f"        socket.create_connection(('{ip}', port), timeout=5)\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n"
    )
    assert lc.run([sys.executable, "-c", probe]).stdout.split() == ["ConnectionRefusedError"] * 2
    lc.kubectl("-n", NS, "delete", "service", "empty")


def test_unready_pod_gets_no_new_connections(lc: LocalCluster, tmp_path: Path) -> None:
    """An exec readiness probe fails on one pod: the real endpointslice controller marks it not
    ready and kube-proxy stops sending it connections; it returns when the probe passes again.

    The probe (`agnhost mounttest --file_mode`) passes while `/flags/ready` exists; `/flags` is
    the pod's own directory under `tmp_path` (a hostPath with `subPathExpr: $(POD_NAME)`)."""
    container = _netexec(
        env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        volumeMounts=[{"name": "flags", "mountPath": "/flags", "subPathExpr": "$(POD_NAME)"}],
        readinessProbe={
            "exec": {"command": ["/agnhost", "mounttest", "--file_mode=/flags/ready"]},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    )
    volumes = [{"name": "flags", "hostPath": {"path": str(tmp_path), "type": "Directory"}}]
    _apply(lc, _deployment("flip", 2, container, volumes=volumes), _service("flip", 8080))

    def running() -> list[str] | None:
        pods = [p for p in _pods(lc, "app=flip") if p["status"].get("phase") == "Running"]
        return sorted(p["metadata"]["name"] for p in pods) if len(pods) == 2 else None

    first, second = lc.wait_for(running, 120, "2 flip pods running (not ready yet)")
    for name in (first, second):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "ready").touch()
    _ready_pods(lc, "app=flip", 2)
    url = lc.service_url(NS, "flip", 8080)
    lc.wait_for(lambda: _answering(url) == {first, second} or None, 60, "both pods answer")

    (tmp_path / first / "ready").unlink()
    lc.wait_for(lambda: _answering(url) == {second} or None, 60, "only the ready pod answers")
    pod = lc.get(f"/api/v1/namespaces/{NS}/pods/{first}")
    assert not _ready(pod) and pod["status"]["phase"] == "Running"  # not ready, still running

    (tmp_path / first / "ready").touch()
    lc.wait_for(lambda: _answering(url) == {first, second} or None, 60, "both pods again")
    lc.kubectl("-n", NS, "delete", "deployment", "flip", "--wait=false")


@pytest.mark.prometheus
def test_prometheus_scrapes_pods_with_grm_labels(lc: LocalCluster) -> None:
    """Prometheus finds a pod with grm labels by Kubernetes SD and scrapes its `http` port: the
    pod (`agnhost porter`) serves one sample there, as the text exposition format."""
    if lc.prometheus_url is None:
        _skip_or_fail("prometheus with Kubernetes SD is not built (make control-plane)")
    container = {
        "name": "metrics",
        "image": _agnhost(),
        "imagePullPolicy": "Never",
        "args": ["porter"],
        "env": [{"name": "SERVE_PORT_8080", "value": "lc_test_requests_total 1\n"}],
        "ports": [{"name": "http", "containerPort": 8080}],
    }
    scraped = _deployment("scraped", 1, container)
    labels = {"grm.dev/deployment": "scraped", "grm.dev/variant": "bf16"}
    scraped["spec"]["template"]["metadata"]["labels"].update(labels)
    _apply(lc, scraped)
    (pod,) = _ready_pods(lc, "app=scraped", 1)
    host, port = lc.prometheus_url.removeprefix("http://").split(":")
    assert int(port) == PROMETHEUS_PORT
    query = urllib.parse.quote('lc_test_requests_total{grm_dev_deployment="scraped"}')
    url = f"{lc.url(host, int(port))}/api/v1/query?query={query}"

    def series() -> list[dict[str, Any]] | None:
        try:
            result: list[dict[str, Any]] = _get_json(url)["data"]["result"]
        except (OSError, urllib.error.URLError):
            return None
        return result or None

    (found,) = lc.wait_for(series, 60, "the pod's series in Prometheus")
    assert found["metric"]["grm_dev_variant"] == "bf16"
    assert found["metric"]["namespace"] == NS
    assert found["metric"]["pod"] == pod["metadata"]["name"]
    lc.kubectl("-n", NS, "delete", "deployment", "scraped", "--wait=false")


def test_worker_pods_from_the_operators_builders(lc: LocalCluster) -> None:
    """The operator's own worker Deployment, ConfigMap and Service (sim engine, the worker image
    built here) run unchanged: two replicas share port 8000 on distinct pod IPs, the
    startup/readiness probes pass, and the Service answers the OpenAI API."""
    if pyimages.missing() is not None:
        _skip_or_fail(str(pyimages.missing()))
    import yaml

    from grm_operator.api.models import GRMDeployment
    from grm_operator.control.admintoken import admin_token_secret, new_token
    from grm_operator.control.builders import build_children
    from grm_operator.control.builders.layout import HTTP_PORT
    from grm_operator.control.builders.metadata import LABEL_VARIANT, Owner
    from grm_operator.control.builders.workerconfig import ANNOTATION_WORKER_ENGINE
    from grm_operator.settings import OperatorSettings

    worker = pyimages.reference(pyimages.WORKER_SIM)
    lc.load_image(pyimages.build(pyimages.WORKER_SIM), worker)
    body = yaml.safe_load(EXAMPLES.joinpath("grmd-ladder.yaml").read_text())
    body["metadata"].update(
        namespace=NS,
        uid="00000000-0000-4000-8000-000000000001",
        annotations={ANNOTATION_WORKER_ENGINE: "sim"},
    )
    # A PVC-backed model would leave the pods unschedulable here (no such claim, no volume
    # provisioner); the sim engine never reads the weights anyway.
    body["spec"]["model"]["uri"] = "hf://deepseek-ai/DeepSeek-GRM-27B"
    grmd = GRMDeployment.model_validate(body)
    settings = OperatorSettings(worker_image=worker, worker_image_pull_policy="Never")
    children = build_children(grmd, {"fp8": 2}, settings)
    # The admin token's Secret, which the operator creates before any worker Deployment (their
    # pods read GRM_ADMIN_TOKEN from it).
    owner = Owner(name=grmd.metadata.name, namespace=NS, uid=body["metadata"]["uid"])
    secret = admin_token_secret(owner, new_token())
    docs = [secret, children.config_maps["fp8"], children.deployments["fp8"], children.service]
    for doc in docs:
        # No GRMDeployment object exists here: an owner reference to it would be collected.
        doc["metadata"].pop("ownerReferences", None)
    _apply(lc, *docs)
    pods = _ready_pods(lc, f"{LABEL_VARIANT}=fp8", 2, timeout_s=180)
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {worker}
    assert len({p["status"]["podIP"] for p in pods}) == 2
    url = lc.service_url(NS, children.service["metadata"]["name"], HTTP_PORT)
    models = _get_json(f"{url}/v1/models")
    assert models["data"], models
    lc.kubectl(
        "-n", NS, "delete", "deployment", children.deployments["fp8"]["metadata"]["name"], "--wait=false"
    )


def test_operator_installed_with_helm_runs_on_the_real_node() -> None:
    """The chart's operator Deployment runs the operator image (`grm-operator run`) with its
    ServiceAccount's token and the chart's RBAC; it turns the sim demo GRMDeployment into worker
    pods that become Ready and answer through the GRMDeployment's Service."""
    _require_cluster(images=True)
    with LocalCluster(gpus=4, prometheus=False) as cluster:
        values = pyimages.load_project_images(cluster)
        chart = str(REPO / "helm" / "grm-operator")
        cluster.helm("install", "grm", chart, "-n", "grm-system", "--create-namespace", *values)

        def operator_pod() -> dict[str, Any] | None:
            pods = cluster.get("/api/v1/namespaces/grm-system/pods")["items"]
            return pods[0] if len(pods) == 1 and _ready(pods[0]) else None

        pod = cluster.wait_for(operator_pod, 180, "the operator pod Ready")
        assert pod["spec"]["serviceAccountName"] != "default"
        assert pod["spec"]["containers"][0]["image"] == pyimages.reference(pyimages.OPERATOR)
        cluster.kubectl("apply", "-f", str(REPO / "examples" / "grmd-sim-demo.yaml"))

        def grmd_ready() -> bool:
            status, body = cluster.api("GET", "/apis/grm.dev/v1alpha1/namespaces/default/grmdeployments/demo")
            conditions = (body.get("status") or {}).get("conditions") or [] if status == 200 else []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        cluster.wait_for(grmd_ready, 180, "the GRMDeployment Ready")
        models = _get_json(f"{cluster.service_url('default', 'demo', 8000)}/v1/models")
        assert models["data"]


def _alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (exited, its parent — init, for the orphans a cluster leaves
    when it stops — not yet having reaped it) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _still_running(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """The processes of `pids` still running after `timeout_s`: the shim of a deleted task exits
    on its own once containerd asked it to, which can land a moment after `stop()` returned."""
    deadline = time.monotonic() + timeout_s
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _parent(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _mounts_below(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(prefix)]


def test_teardown_leaves_no_processes_or_mounts() -> None:
    _require_cluster()
    cluster = LocalCluster(gpus=1, prometheus=False)
    cluster.start()
    try:
        sleeper = {"name": "s", "image": _agnhost(), "imagePullPolicy": "Never", "args": ["pause"]}
        meta = {"name": "sleeper", "namespace": "default"}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [sleeper]}}
        status, body = cluster.api("POST", "/api/v1/namespaces/default/pods", pod)
        assert status == 201, body

        def running() -> dict[str, Any] | None:
            found: dict[str, Any] = cluster.get("/api/v1/namespaces/default/pods/sleeper")
            statuses = found["status"].get("containerStatuses") or [{}]
            return found if "running" in (statuses[0].get("state") or {}) else None

        pod_pid = cluster.container_pid(cluster.wait_for(running, 120, "the pod's container running"))
        shim = _parent(pod_pid)  # containerd-shim-runc-v2: it outlives containerd unless killed
        supervisor = cluster.pid
        children = [
            int(p) for p in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        ]
        workdir, state_dir = cluster.workdir, cluster.state_dir
        netns_inode = os.stat(f"/proc/{supervisor}/ns/net").st_ino
        mounted = _mounts_below(workdir)
        # etcd, apiserver, kcm, scheduler, kube-proxy, containerd, kubelet
        assert _alive(pod_pid) and _alive(shim) and len(children) >= 7
        assert mounted  # the container's rootfs and the pod's volumes, at least
    finally:
        cluster.stop()
    leftovers = {pid: _comm(pid) for pid in _still_running([supervisor, pod_pid, shim, *children])}
    assert leftovers == {}
    assert not workdir.exists() and not state_dir.exists()
    assert _mounts_below(workdir) == []
    in_netns = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.stat(proc / "ns" / "net").st_ino == netns_inode:
                    in_netns.append(proc.name)
            except OSError:
                continue
    assert in_netns == []  # no process holds the namespace: it is gone


def test_command_line_up_exec_down(tmp_path: Path) -> None:
    _require_cluster()
    kubectl = tools.kubectl()
    assert kubectl is not None
    state_dir = tmp_path / "state"

    def cli(sub: str, *rest: str) -> subprocess.CompletedProcess[str]:
        module = "grm_testkit.cluster.localcluster_cli"  # the `grm-local-cluster` script
        argv = [sys.executable, "-m", module, sub, "--state-dir", str(state_dir), *rest]
        return subprocess.run(argv, capture_output=True, text=True, timeout=360, check=False)

    up = cli("up", "--detach", "--gpus", "3", "--no-prometheus", "--timeout", "300")
    assert up.returncode == 0, up.stderr + (state_dir / "supervisor.log").read_text()
    try:
        state = json.loads((state_dir / "state.json").read_text())
        assert state["gpus"] == 3 and state["prometheus_url"] is None
        assert cli("up", "--detach").returncode == 1  # one cluster per state dir
        # Inside: KUBECONFIG is set and the API server's address is local; outside it is not.
        inside = cli("exec", "--", "sh", "-c", 'test -f "$KUBECONFIG" && ip -o route show table local')
        assert inside.returncode == 0, inside.stderr
        assert "10.244.0.0/16" in inside.stdout and "10.96.0.0/12" in inside.stdout
        gpus = cli(
            "exec",
            "--",
            str(kubectl),
            "get",
            "node",
            "local-node-0",
            "-o",
            "jsonpath={.status.capacity.nvidia\\.com/gpu}",
        )
        assert gpus.stdout == "3", gpus.stderr
        assert cli("exec", "--", "sh", "-c", "exit 7").returncode == 7
        assert cli("status").returncode == 0
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr + (state_dir / "supervisor.log").read_text()[-5000:]
    assert not _alive(state["pid"])
    assert cli("status").returncode == 1


def test_a_dead_control_plane_component_stops_the_cluster() -> None:
    """A test on a broken cluster fails at once instead of waiting out its deadlines."""
    _require_cluster()
    cluster = LocalCluster(gpus=1, prometheus=False)
    cluster.start()
    try:
        assert cluster.proc is not None
        scheduler = cluster.run(["pgrep", "-P", str(cluster.pid), "kube-scheduler"]).stdout.split()
        os.kill(int(scheduler[0]), signal.SIGKILL)
        try:
            code = cluster.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor did not stop; its log:\n{cluster.log_tail(80)}")
        assert code == 1
        log = cluster.log_tail(200)
        assert "a control-plane process died" in log and "last lines of kube-scheduler" in log
    finally:
        cluster.stop()
