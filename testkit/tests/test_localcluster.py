"""The local cluster itself, end to end: the control plane, our node agent, the real kube-proxy
(nftables) and Prometheus inside a network namespace of their own.

One cluster (2 GPUs) serves the module; a second, short-lived one checks that teardown leaves no
process behind. Workloads run the `local/python` stand-in image (the pod's own command with this
Python): a small HTTP server from a ConfigMap that answers with its pod's name and the values of
its env, so one request shows the ConfigMap volume, path mapping, env references and pod IP.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grm_testkit.cluster.clusteroptions import API_ADDRESS, PROMETHEUS_PORT
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.cluster.podspec import PYTHON_IMAGE
from support.paths import EXAMPLES, REPO

pytestmark = pytest.mark.e2e

NS = "lc-test"

SERVER = textwrap.dedent(
    """
    import http.server, json, os, signal, sys

    def on_term(signum, frame):
        if os.environ.get("EVENTS"):
            with open(os.environ["EVENTS"], "a") as f:
                f.write(f"sigterm {os.environ['POD_NAME']}\\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            if self.path == "/metrics":
                body = b"lc_test_requests_total 1\\n"
                # Prometheus 3 refuses a scrape without a valid exposition Content-Type.
                kind = "text/plain; version=0.0.4"
            else:
                keys = ("POD_NAME", "POD_IP", "POD_NAMESPACE", "GREETING", "TOKEN", "CONFIG_DIR")
                body = json.dumps({k: os.environ.get(k) for k in keys}).encode()
                kind = "application/json"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8080), Handler).serve_forever()
    """
)


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def lc() -> Iterator[LocalCluster]:
    why = LocalCluster.unavailable()
    if why is not None:
        _skip_or_fail(why)
    from grm_testkit.cluster import tools

    if tools.kubectl() is None:
        _skip_or_fail(f"kubectl not installed in {tools.tools_bin_dir()} (run `make tools`)")
    with LocalCluster(gpus=2, scrape_interval_s=1.0) as cluster:
        cluster.kubectl("create", "namespace", NS)
        cluster.kubectl(
            "-n",
            NS,
            "create",
            "configmap",
            "app",
            "--from-literal=greeting=hello",
            f"--from-literal=server.py={SERVER}",
        )
        cluster.kubectl("-n", NS, "create", "secret", "generic", "app", "--from-literal=token=s3cret")
        yield cluster


def _apply(lc: LocalCluster, *docs: dict[str, Any]) -> None:
    lc.kubectl("apply", "-f", "-", input="\n".join(json.dumps(d) for d in docs))


def _container(name: str = "app", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": PYTHON_IMAGE,
        "command": ["python", "/app/server.py"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "greeting"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "app", "key": "token"}}},
            {"name": "CONFIG_DIR", "value": "/app"},
        ],
        "volumeMounts": [{"name": "app", "mountPath": "/app", "readOnly": True}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
        **extra,
    }


def _pod_spec(*containers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "containers": list(containers) or [_container()],
        "volumes": [{"name": "app", "configMap": {"name": "app"}}],
        "terminationGracePeriodSeconds": 10,
        **extra,
    }


def _deployment(
    name: str, replicas: int, gpus: int = 0, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    container = _container()
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **(labels or {})}},
                "spec": _pod_spec(container),
            },
        },
    }


def _pods(lc: LocalCluster, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lc.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={selector}")["items"]
    return items


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _ready_pods(lc: LocalCluster, selector: str, count: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        pods = [p for p in _pods(lc, selector) if not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == count and all(_ready(p) for p in pods) else None

    result: list[dict[str, Any]] = lc.wait_for(check, timeout_s, f"{count} ready pods {selector}")
    return result


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def _answering(url: str, requests: int = 30) -> set[str] | None:
    """The pods that answered ``requests`` requests, or None when one failed: a pod whose exec
    readiness probe passes before its server listens refuses the front's connection, and the
    front then closes ours (seen once in a CI run). The callers poll until a full round answers."""
    try:
        return {_get_json(url)["POD_NAME"] for _ in range(requests)}
    except OSError:  # URLError, ConnectionResetError, RemoteDisconnected, timeouts
        return None


def test_cluster_is_up_and_sealed(lc: LocalCluster) -> None:
    nodes = lc.get("/api/v1/nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["local-node-0"]
    assert nodes[0]["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in nodes[0]["status"]["conditions"])
    lease = lc.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/local-node-0")
    assert lease["spec"]["holderIdentity"] == "local-node-0"
    # kubectl inside reaches the API server on 10.244.255.2; the `kubernetes` Service answers through
    # kube-proxy (10.96.0.1:443 → the endpoint 10.244.255.2:6443 kept by the real controller).
    assert lc.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    probe = (
        "import socket, ssl, sys\n"
        "s = socket.create_connection(('10.96.0.1', 443), timeout=5); s.close()\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 80), timeout=5)\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    out = lc.run(["python", "-c", probe]).stdout.strip()
    assert out in ("101", "113")  # ENETUNREACH / EHOSTUNREACH: no route leaves the namespace
    assert lc.api_url == f"https://{API_ADDRESS}:6443"


def test_deployment_service_and_scaling(lc: LocalCluster) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    web = _deployment("web", 2)
    # As the operator's workers do: leave the endpoints before SIGTERM.
    web["spec"]["template"]["spec"]["containers"][0]["lifecycle"] = {"preStop": {"sleep": {"seconds": 2}}}
    _apply(lc, web, service)
    pods = _ready_pods(lc, "app=web", 2)
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2 and all(ip.startswith("10.244.0.") for ip in ips)
    assert all(p["status"]["phase"] == "Running" for p in pods)

    url = lc.service_url(NS, "web", 80)
    names = {p["metadata"]["name"] for p in pods}
    seen = lc.wait_for(lambda: _answering(url) == names or None, 30, "both pods behind the Service")
    assert seen
    answer = _get_json(url)
    assert answer["POD_IP"] in ips
    assert answer["GREETING"] == "hello" and answer["TOKEN"] == "s3cret"
    assert answer["POD_NAMESPACE"] == NS
    # /app is the pod's ConfigMap volume: the mount path was rewritten to the pod directory.
    assert answer["CONFIG_DIR"] != "/app" and answer["CONFIG_DIR"].endswith("/volumes/app")
    # Inside the namespace the ClusterIP itself answers.
    fetch = (
        f"import urllib.request as u; print(u.urlopen('{lc.service_address(NS, 'web', 80)}').read().decode())"
    )
    inner = lc.run(["python", "-c", fetch])
    assert json.loads(inner.stdout)["POD_NAME"] in names

    # kube-proxy balances per connection (L4). The server answers HTTP/1.0 and closes each
    # connection, so consecutive requests are new connections and reach both pods.
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    on_one_connection = set()
    for _ in range(20):
        conn.request("GET", "/")
        on_one_connection.add(json.loads(conn.getresponse().read())["POD_NAME"])
    conn.close()
    assert on_one_connection == names

    lc.kubectl("-n", NS, "scale", "deployment/web", "--replicas=3")
    three = {p["metadata"]["name"] for p in _ready_pods(lc, "app=web", 3)}
    lc.wait_for(lambda: _answering(url, 45) == three or None, 30, "the third pod behind the Service")

    # Scale in under a steady client (a connection per request, as the server closes each): no
    # request fails, since a pod leaves the endpoints (preStop sleep) before its SIGTERM.
    stop = threading.Event()
    outcomes: Counter[str] = Counter()

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while not stop.is_set():
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                outcomes[str(resp.status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                outcomes[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
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
            30,
            "the removed pods gone",
        )
    finally:
        stop.set()
        thread.join()
    assert outcomes["200"] > 20 and set(outcomes) == {"200"}, outcomes
    lc.wait_for(lambda: _answering(url) == {last["metadata"]["name"]} or None, 30, "only the remaining pod")


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
        f"for port in (8080, 9999):\n"
        "    try:\n"
        f"        socket.create_connection(('{ip}', port), timeout=5)\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n"
    )
    assert lc.run(["python", "-c", probe]).stdout.split() == ["ConnectionRefusedError"] * 2
    lc.kubectl("-n", NS, "delete", "service", "empty")


def test_unready_pod_gets_no_new_connections(lc: LocalCluster, tmp_path: Path) -> None:
    """An exec readiness probe fails on one pod: the real endpointslice controller marks it not
    ready and kube-proxy stops sending it connections; it returns when the probe passes again."""
    probe = {
        "exec": {"command": ["sh", "-c", 'test ! -e "$OUT/unready-$POD_NAME"']},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    deployment = _deployment("flip", 2)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"] = probe
    container["env"].append({"name": "OUT", "value": "/out"})
    container["volumeMounts"].append({"name": "out", "mountPath": "/out"})
    deployment["spec"]["template"]["spec"]["volumes"].append(
        {"name": "out", "hostPath": {"path": str(tmp_path)}}
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "flip", "namespace": NS},
        "spec": {"selector": {"app": "flip"}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }
    _apply(lc, deployment, service)
    first, second = sorted(p["metadata"]["name"] for p in _ready_pods(lc, "app=flip", 2))
    url = lc.service_url(NS, "flip", 8080)
    lc.wait_for(lambda: _answering(url) == {first, second} or None, 30, "both pods answer")

    (tmp_path / f"unready-{first}").touch()
    lc.wait_for(lambda: _answering(url) == {second} or None, 30, "only the ready pod answers")
    pod = lc.get(f"/api/v1/namespaces/{NS}/pods/{first}")
    assert not _ready(pod) and pod["status"]["phase"] == "Running"  # not ready, still running

    (tmp_path / f"unready-{first}").unlink()
    lc.wait_for(lambda: _answering(url) == {first, second} or None, 30, "both pods again")
    lc.kubectl("-n", NS, "delete", "deployment", "flip", "--wait=false")


def test_pods_beyond_the_gpu_budget_stay_pending(lc: LocalCluster) -> None:
    _apply(lc, _deployment("gpu", 3, gpus=1))

    def settled() -> list[dict[str, Any]] | None:
        pods = _pods(lc, "app=gpu")
        running = [p for p in pods if _ready(p)]
        pending = [p for p in pods if p["status"].get("phase") == "Pending" and not p["spec"].get("nodeName")]
        return pods if len(running) == 2 and len(pending) == 1 else None

    pods = lc.wait_for(settled, 60, "2 pods on GPUs, 1 pending")
    (pending,) = [p for p in pods if not p["spec"].get("nodeName")]
    scheduled = next(c for c in pending["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "False" and scheduled["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in scheduled["message"]
    lc.kubectl("-n", NS, "delete", "deployment", "gpu", "--wait=false")


def test_delete_runs_prestop_then_sigterm(lc: LocalCluster, tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.touch()
    container = _container(
        env=[*_container()["env"], {"name": "EVENTS", "value": "/out/events"}],
        volumeMounts=[{"name": "app", "mountPath": "/app"}, {"name": "out", "mountPath": "/out"}],
        lifecycle={"preStop": {"exec": {"command": ["sh", "-c", 'echo "prestop $POD_NAME" >> "$EVENTS"']}}},
    )
    spec = _pod_spec(container)
    spec["volumes"].append({"name": "out", "hostPath": {"path": str(tmp_path)}})
    meta = {"name": "stopper", "namespace": NS, "labels": {"app": "stopper"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    _apply(lc, pod)
    _ready_pods(lc, "app=stopper", 1)
    started = time.monotonic()
    lc.kubectl("-n", NS, "delete", "pod", "stopper", "--wait=false")
    lc.wait_for(lambda: not _pods(lc, "app=stopper"), 30, "the pod deleted")
    assert events.read_text().splitlines() == ["prestop stopper", "sigterm stopper"]
    # The process exits on SIGTERM at once: nowhere near the 10 s grace period.
    assert time.monotonic() - started < 8


def test_crashed_container_restarts(lc: LocalCluster) -> None:
    crash = {
        "name": "crash",
        "image": PYTHON_IMAGE,
        "command": ["python", "-c", "import sys; print('boom'); sys.exit(3)"],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "crasher", "namespace": NS},
        "spec": {"containers": [crash], "restartPolicy": "Always"},
    }
    _apply(lc, pod)

    def restarted() -> dict[str, Any] | None:
        status = lc.get(f"/api/v1/namespaces/{NS}/pods/crasher")["status"]
        (cs,) = status.get("containerStatuses") or [{}]
        return cs if cs.get("restartCount", 0) >= 2 and "lastState" in cs else None

    cs = lc.wait_for(restarted, 30, "two restarts")
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert lc.pod_log(NS, "crasher").count("start: ") >= 3
    # The real kubectl reads the previous run's output through the API server and our kubelet API.
    assert lc.kubectl("-n", NS, "logs", "crasher", "--previous").stdout == "boom\n"
    lc.kubectl("-n", NS, "delete", "pod", "crasher", "--wait=false")


def test_init_containers_run_to_completion_first(lc: LocalCluster) -> None:
    write = {
        "name": "write",
        "image": PYTHON_IMAGE,
        "command": ["python", "-c", "open('/work/msg', 'w').write('from init')"],
        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
    }
    main = {
        "name": "main",
        "image": PYTHON_IMAGE,
        "command": [
            "python",
            "-c",
            "print(open('/work/msg').read(), flush=True); import time; time.sleep(600)",
        ],
        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
    }
    spec = {
        "initContainers": [write],
        "containers": [main],
        "volumes": [{"name": "work", "emptyDir": {}}],
        "terminationGracePeriodSeconds": 1,
    }
    _apply(
        lc,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "initialised", "namespace": NS},
            "spec": spec,
        },
    )
    pod = lc.wait_for(
        lambda: (p := lc.get(f"/api/v1/namespaces/{NS}/pods/initialised")) and _ready(p) and p,
        30,
        "the pod Ready after its init container",
    )
    (init,) = pod["status"]["initContainerStatuses"]
    assert (
        init["state"]["terminated"]["exitCode"] == 0 and init["state"]["terminated"]["reason"] == "Completed"
    )
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Initialized"] == "True"
    logs = lc.wait_for(
        lambda: lc.kubectl("-n", NS, "logs", "initialised", "-c", "main").stdout, 10, "main's output"
    )
    assert logs == "from init\n"
    lc.kubectl("-n", NS, "delete", "pod", "initialised", "--wait=false")


@pytest.mark.prometheus
def test_prometheus_scrapes_pods_with_grm_labels(lc: LocalCluster) -> None:
    if lc.prometheus_url is None:
        _skip_or_fail("prometheus with Kubernetes SD is not built (make control-plane)")
    labels = {"grm.dev/deployment": "scraped", "grm.dev/variant": "bf16"}
    _apply(lc, _deployment("scraped", 1, labels=labels))
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
    """The operator's own worker Deployment, ConfigMap and Service (sim engine) run unchanged:
    the worker image runs `grm-worker serve --config /etc/grm/worker.json` bound to its pod IP,
    two replicas share port 8000 on distinct IPs, the startup/readiness probes pass, and the
    Service answers the OpenAI API."""
    import yaml

    from grm_operator.api.models import GRMDeployment
    from grm_operator.control.admintoken import admin_token_secret, new_token
    from grm_operator.control.builders import build_children
    from grm_operator.control.builders.layout import HTTP_PORT
    from grm_operator.control.builders.metadata import LABEL_VARIANT, Owner
    from grm_operator.control.builders.workerconfig import ANNOTATION_WORKER_ENGINE
    from grm_operator.settings import OperatorSettings

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
    children = build_children(grmd, {"fp8": 2}, OperatorSettings())
    # The admin token's Secret, which the operator creates before any worker Deployment (their
    # pods read GRM_ADMIN_TOKEN from it).
    owner = Owner(name=grmd.metadata.name, namespace=NS, uid=body["metadata"]["uid"])
    secret = admin_token_secret(owner, new_token())
    docs = [secret, children.config_maps["fp8"], children.deployments["fp8"], children.service]
    for doc in docs:
        # No GRMDeployment object exists here: an owner reference to it would be collected.
        doc["metadata"].pop("ownerReferences", None)
    _apply(lc, *docs)
    selector = f"{LABEL_VARIANT}=fp8"
    pods = _ready_pods(lc, selector, 2, timeout_s=90)
    assert len({p["status"]["podIP"] for p in pods}) == 2
    url = lc.service_url(NS, children.service["metadata"]["name"], HTTP_PORT)
    models = _get_json(f"{url}/v1/models")
    assert models["data"], models
    log = lc.pod_log(NS, pods[0]["metadata"]["name"])
    assert f"--host {pods[0]['status']['podIP']}" in log and "/volumes/config/worker.json" in log
    lc.kubectl(
        "-n", NS, "delete", "deployment", children.deployments["fp8"]["metadata"]["name"], "--wait=false"
    )


def test_operator_installed_with_helm_runs_on_the_node_agent() -> None:
    """The chart's operator Deployment runs the operator image (`grm-operator run`) with its
    ServiceAccount's token and the chart's RBAC; it turns the sim demo GRMDeployment into worker
    pods that become Ready and answer through the GRMDeployment's Service."""
    from grm_testkit.cluster import tools

    why = LocalCluster.unavailable()
    if why is not None:
        _skip_or_fail(why)
    if tools.helm() is None:
        _skip_or_fail("helm not installed (run `make tools`)")
    repo = REPO
    with LocalCluster(gpus=4, prometheus=False) as cluster:
        cluster.helm(
            "install", "grm", str(repo / "helm" / "grm-operator"), "-n", "grm-system", "--create-namespace"
        )

        def operator_pod() -> dict[str, Any] | None:
            pods = cluster.get("/api/v1/namespaces/grm-system/pods")["items"]
            return pods[0] if len(pods) == 1 and _ready(pods[0]) else None

        pod = cluster.wait_for(operator_pod, 90, "the operator pod Ready")
        assert pod["spec"]["serviceAccountName"] != "default"
        cluster.kubectl("apply", "-f", str(repo / "examples" / "grmd-sim-demo.yaml"))

        def grmd_ready() -> bool:
            status, body = cluster.api("GET", "/apis/grm.dev/v1alpha1/namespaces/default/grmdeployments/demo")
            conditions = (body.get("status") or {}).get("conditions") or [] if status == 200 else []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        cluster.wait_for(grmd_ready, 120, "the GRMDeployment Ready")
        models = _get_json(f"{cluster.service_url('default', 'demo', 8000)}/v1/models")
        assert models["data"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_teardown_leaves_no_processes() -> None:
    why = LocalCluster.unavailable()
    if why is not None:
        _skip_or_fail(why)
    cluster = LocalCluster(gpus=1, prometheus=False)
    cluster.start()
    try:
        sleeper = {
            "name": "s",
            "image": PYTHON_IMAGE,
            "command": ["python", "-c", "import time; time.sleep(600)"],
        }
        meta = {"name": "sleeper", "namespace": "default"}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [sleeper]}}
        status, body = cluster.api("POST", "/api/v1/namespaces/default/pods", pod)
        assert status == 201, body

        def container_pid() -> int | None:
            st = cluster.get("/api/v1/namespaces/default/pods/sleeper")["status"]
            cid = ((st.get("containerStatuses") or [{}])[0]).get("containerID", "")
            return int(cid.removeprefix("grm://")) if cid.startswith("grm://") else None

        pod_pid = cluster.wait_for(container_pid, 60, "the pod's process")
        supervisor = cluster.pid
        children = [
            int(p) for p in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        ]
        workdir, state_dir = cluster.workdir, cluster.state_dir
        netns_inode = os.stat(f"/proc/{supervisor}/ns/net").st_ino
        assert _alive(pod_pid) and len(children) >= 5  # etcd, apiserver, kcm, scheduler, the pod
    finally:
        cluster.stop()
    leftovers = [pid for pid in [supervisor, pod_pid, *children] if _alive(pid)]
    assert leftovers == []
    assert not workdir.exists() and not state_dir.exists()
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
    why = LocalCluster.unavailable()
    if why is not None:
        _skip_or_fail(why)
    from grm_testkit.cluster import tools

    kubectl = tools.kubectl()
    if kubectl is None:
        _skip_or_fail(f"kubectl not installed in {tools.tools_bin_dir()} (run `make tools`)")
    state_dir = tmp_path / "state"

    def cli(sub: str, *rest: str) -> subprocess.CompletedProcess[str]:
        module = "grm_testkit.cluster.localcluster_cli"  # the `grm-local-cluster` script
        argv = [sys.executable, "-m", module, sub, "--state-dir", str(state_dir), *rest]
        return subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)

    up = cli("up", "--detach", "--gpus", "3", "--no-prometheus")
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
    why = LocalCluster.unavailable()
    if why is not None:
        _skip_or_fail(why)
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
