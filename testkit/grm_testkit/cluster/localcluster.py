"""The local cluster: the whole system on one machine, in a network namespace of its own, made of
real Kubernetes parts (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
helm, kube-proxy in nftables mode, Prometheus, per node the kubelet with containerd) — and
`LocalCluster`, the handle a test, the demo or `grm-local-cluster` uses to start it (or attach to
it), stop it and talk to it. What runs inside the namespace is the `supervisor`; the options and
the state directory they share are in `clusteroptions`.

The way in — the *state directory* holds `state.json` (supervisor PID, kubeconfig, URLs), the
admin `kubeconfig` (server https://10.244.255.2:6443) and `connect.sock`:
* people and scripts: `grm-local-cluster shell | exec -- CMD` — `nsenter` into the
  supervisor's network namespace (/proc/PID/ns/net) with `KUBECONFIG` and the real kubectl and
  helm on `PATH`;
* tests and the demo, from the host side: `LocalCluster` (a context manager). Code that must
  run *inside* (the operator, load generators that should see pod IPs) goes through
  `lc.run`/`lc.popen` (nsenter). To reach an in-cluster address from the test process itself,
  `lc.forward(ip, port)` opens a loopback port on the host whose connections travel over
  `connect.sock` to the supervisor, which connects to the target *inside* (`connectsocket`).
  `lc.service_url(ns, name, port)` and `lc.host_kubeconfig` are built on it.

One concept in one module (the handle a test or the CLI holds on a running local cluster).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import yaml

from grm_testkit.cluster import kubeproxy, lifetime, netns, realnode, tools
from grm_testkit.cluster.clusteroptions import (
    API_ADDRESS,
    API_PORT,
    PROMETHEUS_ADDRESS,
    PROMETHEUS_PORT,
    ClusterOptions,
    LocalClusterError,
    read_state,
    tool_path,
)
from grm_testkit.cluster.connectsocket import Forwarder
from grm_testkit.cluster.kubeclient import Json, json_exchange, load_kubeconfig
from grm_testkit.cluster.supervisor import prepare_state_dir, supervisor_argv

log = logging.getLogger(__name__)


class LocalCluster:
    """The local cluster as a Python object for tests and the demo.

        with LocalCluster(gpus=8) as lc:
            lc.kubectl("apply", "-f", "examples/...")
            url = lc.service_url("rl", "reward", 8000)   # http://127.0.0.1:PORT on the host
            lc.popen(["grm-operator", "run"])            # a process inside the namespace

    `kubeconfig` is the admin kubeconfig for processes *inside* (lc.run/popen/kubectl);
    `host_kubeconfig` one for clients in the calling process (through a forwarded port).
    """

    def __init__(
        self,
        gpus: int = 8,
        *,
        nodes: int = 1,
        prometheus: bool | None = None,
        scrape_interval_s: float = 2.0,
        state_dir: Path | None = None,
        start_timeout_s: float = 300.0,
        log_level: str = "INFO",
    ) -> None:
        self.options = ClusterOptions(
            gpus=gpus,
            nodes=nodes,
            prometheus=prometheus,
            scrape_interval_s=scrape_interval_s,
            log_level=log_level,
        )
        self._own_state_dir = state_dir is None
        # A fresh temp dir is made by start(), so an instance never started leaves nothing behind.
        self.state_dir = state_dir or Path(tempfile.gettempdir()) / "grm-lc-state-unstarted"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: Json = {}
        self._forwarder: Forwarder | None = None
        self._children: list[subprocess.Popen[Any]] = []
        self._host_kubeconfig: Path | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @staticmethod
    def unavailable() -> str | None:
        """Why a local cluster cannot run here (missing control-plane binaries, kube-proxy's
        nftables, network namespaces, or the real node's kubelet, containerd, runc and CNI
        plugins), or None."""
        absent = tools.missing(tools.k8s_bin_dir(), tools.CONTROL_PLANE_BINARIES)
        if absent:
            return (
                f"control-plane binaries {absent} missing in {tools.k8s_bin_dir()} (run `make control-plane`)"
            )
        why = kubeproxy.missing()
        if why is not None:
            return why
        return netns.probe_support() or realnode.missing()

    def start(self) -> None:
        why = self.unavailable()
        if why is not None:
            raise LocalClusterError(why)
        if self._own_state_dir:
            self.state_dir = Path(tempfile.mkdtemp(prefix="grm-lc-state-"))
        prepare_state_dir(self.state_dir, self.options)
        log_path = self.state_dir / "supervisor.log"
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                supervisor_argv(self.state_dir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PATH": tool_path()},
                preexec_fn=lifetime.die_with_parent
                if threading.current_thread() is threading.main_thread()
                else None,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            state = read_state(self.state_dir)
            if state is not None:
                self.state = state
                break
            if self.proc.poll() is not None:
                raise LocalClusterError(
                    f"the supervisor exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise LocalClusterError(f"not ready after {self.start_timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        self._forwarder = Forwarder(self.state["connect_socket"])
        log.info("local cluster up (pid %d) in %.1f s", self.pid, self.state["started_s"])

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ends the children started through `popen`, then the supervisor (which ends pods and
        the control plane); the namespace goes with its last process."""
        for child in self._children:
            if child.poll() is None:
                child.terminate()
        for child in self._children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children.clear()
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("supervisor did not stop in %.0f s; killing it", timeout_s)
                self.proc.kill()
                self.proc.wait()
        if self._own_state_dir and self.proc is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = (self.state_dir / "supervisor.log").read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    # --- where things are --------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return int(self.state["pid"])

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig for processes inside the namespace (server https://10.244.255.2:6443)."""
        return Path(self.state["kubeconfig"])

    @property
    def api_url(self) -> str:
        return str(self.state["api_url"])

    @property
    def prometheus_url(self) -> str | None:
        """Prometheus as seen from inside (http://10.244.255.1:9090), None when not running."""
        url = self.state.get("prometheus_url")
        return str(url) if url else None

    @property
    def workdir(self) -> Path:
        return Path(self.state["workdir"])

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a process inside: ours plus KUBECONFIG and the tools on PATH."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": tool_path()}
        if self.prometheus_url:
            env["GRM_LOCAL_PROMETHEUS_URL"] = self.prometheus_url
        env.update(extra or {})
        return env

    # --- running things inside ---------------------------------------------------------------
    def inside(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside the cluster's network namespace."""
        return netns.nsenter_argv(self.pid, list(argv), root=bool(self.state.get("root", netns.is_root())))

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        input: str | None = None,
        timeout_s: float = 120.0,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs `argv` inside to completion (text output captured), in `cwd` if given."""
        result = subprocess.run(
            self.inside(argv),
            env=self.env(env),
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise LocalClusterError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr[-2000:]}")
        return result

    def popen(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Starts `argv` inside; it is ended by `stop()` if still running."""
        child: subprocess.Popen[Any] = subprocess.Popen(self.inside(argv), env=self.env(env), **kwargs)
        self._children.append(child)
        return child

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl (`make tools`) against the cluster, run inside."""
        binary = tools.kubectl()
        if binary is None:
            raise LocalClusterError(f"kubectl not installed in {tools.tools_bin_dir()} (run `make tools`)")
        return self.run([str(binary), *args], input=input, check=check, timeout_s=timeout_s)

    def helm(
        self, *args: str, check: bool = True, timeout_s: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """The real helm (`make tools`) against the cluster, run inside."""
        binary = tools.helm()
        if binary is None:
            raise LocalClusterError(f"helm not installed in {tools.tools_bin_dir()} (run `make tools`)")
        return self.run([str(binary), *args], check=check, timeout_s=timeout_s)

    # --- reaching in from the host -----------------------------------------------------------
    def forward(self, host: str, port: int) -> tuple[str, int]:
        """A loopback address on the host that reaches `host:port` inside the namespace."""
        if self._forwarder is None:
            raise LocalClusterError("the local cluster is not started")
        if not netns.in_local_ranges(host):
            raise LocalClusterError(f"{host} is not an address of the local cluster")
        return "127.0.0.1", self._forwarder.port(host, port)

    def url(self, host: str, port: int, scheme: str = "http") -> str:
        fhost, fport = self.forward(host, port)
        return f"{scheme}://{fhost}:{fport}"

    @property
    def host_kubeconfig(self) -> Path:
        """An admin kubeconfig for clients in this (host-side) process, via a forwarded port."""
        if self._host_kubeconfig is None:
            doc = yaml.safe_load(self.kubeconfig.read_text())
            doc["clusters"][0]["cluster"]["server"] = self.url(API_ADDRESS, API_PORT, "https")
            path = self.state_dir / "host-kubeconfig"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                yaml.safe_dump(doc, fh)
            self._host_kubeconfig = path
        return self._host_kubeconfig

    def api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """One admin request from the host side: (status, decoded JSON)."""
        creds = load_kubeconfig(self.host_kubeconfig)
        host, _, port = creds.server.removeprefix("https://").rpartition(":")
        conn = http.client.HTTPSConnection(host, int(port), context=creds.ssl, timeout=30)
        return json_exchange(conn, method, path, body)

    def get(self, path: str) -> Json:
        status, body = self.api("GET", path)
        if status != 200:
            raise LocalClusterError(f"GET {path}: {status} {body}")
        result: Json = body
        return result

    def cluster_ip(self, namespace: str, service: str) -> str:
        svc = self.get(f"/api/v1/namespaces/{quote(namespace)}/services/{quote(service)}")
        return str(svc["spec"]["clusterIP"])

    def service_url(
        self, namespace: str, service: str, port: int, scheme: str = "http", *, routed: bool = True
    ) -> str:
        """A host URL for Service `namespace/service` port `port`: through the forwarder to the
        ClusterIP, i.e. through kube-proxy (one ready pod per connection, chosen when it opens).

        With `routed` (the default) it first waits (`wait_routed`) until kube-proxy sends new
        connections to every ready pod the Service selects, so a client's first request does not
        meet the window, right after the pods got Ready, in which a real node rejects it."""
        if routed:
            self.wait_routed(namespace, service, port)
        return self.url(self.cluster_ip(namespace, service), port, scheme)

    def ready_pod_ips(self, namespace: str, service: str) -> set[str]:
        """The IPs of the Ready, not terminating pods that Service `namespace/service` selects."""
        svc = self.get(f"/api/v1/namespaces/{quote(namespace)}/services/{quote(service)}")
        selector = ",".join(f"{k}={v}" for k, v in sorted((svc["spec"].get("selector") or {}).items()))
        if not selector:
            return set()
        pods = self.get(f"/api/v1/namespaces/{quote(namespace)}/pods?labelSelector={quote(selector)}")
        return {
            str(pod["status"]["podIP"])
            for pod in pods["items"]
            if pod["status"].get("podIP")
            and not pod["metadata"].get("deletionTimestamp")
            and any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in pod["status"].get("conditions") or []
            )
        }

    def wait_routed(self, namespace: str, service: str, port: int, timeout_s: float = 60.0) -> set[str]:
        """Waits until kube-proxy's nftables table sends new connections for the Service's `port`
        to every Ready pod the Service selects (at least one), and returns their IPs.

        A pod's Ready reaches kube-proxy through the EndpointSlice controller and then kube-proxy's
        own sync (about a second each, more on a busy machine); a connection in between finds no
        endpoint and is rejected — as on any cluster, which is why a test must wait for this and not
        for Ready alone."""
        svc = self.get(f"/api/v1/namespaces/{quote(namespace)}/services/{quote(service)}")
        names = [p.get("name") or "" for p in svc["spec"].get("ports") or [] if p.get("port") == port]
        if not names:
            raise LocalClusterError(f"Service {namespace}/{service} has no port {port}")

        def routed() -> set[str] | None:
            ready = self.ready_pod_ips(namespace, service)
            table = self.run(["nft", "list", "table", "ip", "kube-proxy"], check=False).stdout
            ips = kubeproxy.routed_endpoints(table, namespace, service, names[0])
            return ready if ready and ready <= ips else None

        result: set[str] = self.wait_for(
            routed, timeout_s, f"kube-proxy routing {namespace}/{service}:{port} to its ready pods", 0.25
        )
        return result

    def service_address(self, namespace: str, service: str, port: int, scheme: str = "http") -> str:
        """The in-cluster URL (for processes inside), e.g. http://10.96.12.7:8000."""
        return f"{scheme}://{self.cluster_ip(namespace, service)}:{port}"

    def load_image(self, tarball: Path, reference: str) -> None:
        """Imports an OCI image tarball (tagged as `reference`'s tag) into every real node's
        containerd as `reference` (`docker.io/local/NAME:TAG`), as `kind load image-archive` does;
        pods then run it with `imagePullPolicy: Never` or `IfNotPresent`."""
        if not self.state:
            raise LocalClusterError("the local cluster is not started")
        for node in self.state["nodes"]:
            socket = realnode.containerd_socket(self.workdir, node["name"])
            realnode.import_tarball(socket, tarball, reference)

    def container_pid(self, pod: Mapping[str, Any], container: int = 0) -> int:
        """The host PID of a running container's process on a real node (its containerd task), to
        read what the kubelet and runc enforce from `/proc/<pid>` (uid, mounts, cgroup)."""
        container_id = str(pod["status"]["containerStatuses"][container]["containerID"])
        container_id = container_id.removeprefix("containerd://")
        socket = realnode.containerd_socket(self.workdir, str(pod["spec"]["nodeName"]))
        ctr = ["ctr", "--address", str(socket), "--namespace", "k8s.io"]
        tasks = realnode.run_program([*ctr, "tasks", "ls"])
        for line in tasks.splitlines():
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1])
        raise LocalClusterError(f"no running task {container_id} in containerd:\n{tasks}")

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """A container's output as `kubectl logs` shows it: the previous run's (the kubelet keeps
        one), then the current one's."""
        which = ["-c", container] if container else ["--all-containers"]
        runs = [
            self.kubectl("-n", namespace, "logs", name, *which, *previous, check=False).stdout
            for previous in (["--previous"], [])
        ]
        return "".join(runs)

    # --- Prometheus outages ---------------------------------------------------------------------
    def _control(self, command: str, timeout_s: float) -> str:
        """One control command to the supervisor over connect.sock; its `OK …` reply."""
        if not self.state:
            raise LocalClusterError("the local cluster is not started")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(self.state["connect_socket"]))
            sock.sendall(command.encode() + b"\n")
            reply = sock.makefile("rb").readline().decode().strip()
        if not reply.startswith("OK"):
            raise LocalClusterError(f"{command}: {reply or 'no reply (see the supervisor log)'}")
        return reply

    def stop_prometheus(self, timeout_s: float = 30.0) -> None:
        """Stops the cluster's Prometheus for real (SIGTERM; the process exits, its address
        refuses connections) without stopping the cluster; `start_prometheus` brings it back."""
        if self.prometheus_url is None:
            raise LocalClusterError("this local cluster runs no Prometheus")
        self._control("PROMETHEUS STOP", timeout_s)

    def start_prometheus(self, timeout_s: float = 60.0) -> None:
        """Starts Prometheus again on the same address with the same TSDB and waits until it
        answers `/-/ready` (scrapes resume with the current pods; a new sample is queryable a few
        seconds later)."""
        if self.prometheus_url is None:
            raise LocalClusterError("this local cluster runs no Prometheus")
        self._control("PROMETHEUS START", timeout_s)
        ready = self.url(PROMETHEUS_ADDRESS, PROMETHEUS_PORT) + "/-/ready"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(ready, timeout=2) as resp:
                    return bool(resp.status == 200)
            except (OSError, ValueError):
                return False

        self.wait_for(answers, timeout_s, "prometheus ready after its start", 0.1)

    @contextlib.contextmanager
    def prometheus_stopped(self) -> Iterator[None]:
        """`with lc.prometheus_stopped(): ...` — an outage that ends (Prometheus started again)
        however the block exits."""
        self.stop_prometheus()
        try:
            yield
        finally:
            self.start_prometheus()

    def wait_for(
        self, predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2
    ) -> Any:
        """Polls `predicate` until it returns something truthy (returned) or the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                raise LocalClusterError(f"{what}: the supervisor died:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"{what}: not within {timeout_s:.0f} s; supervisor log:\n{self.log_tail(30)}"
                )
            time.sleep(interval_s)
