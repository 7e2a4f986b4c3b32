"""The local cluster's supervisor: the process that runs the whole cluster inside its network
namespace — the control plane, a real kubelet with containerd per node, kube-proxy,
Prometheus (Kubernetes SD against the API server), and `connect.sock` — until it is stopped or
a component dies.

Process tree — one supervisor, started under `unshare` (`supervisor_argv`), so it and every child
live inside the namespace and die with it (each child has PR_SET_PDEATHSIG):

    supervisor (python -m grm_testkit.cluster.supervisor supervise, inside the namespace)
    ├── etcd, kube-apiserver (10.244.255.2:6443), kube-controller-manager, kube-scheduler
    ├── kube-proxy (nftables; one for all nodes: they share the namespace)
    ├── prometheus (10.244.255.1:9090, when installed)
    └── per node: containerd + kubelet (`realnode`), whose pods run under containerd's shims
        on the node's CNI bridge (10.245.<node>.0/24)

Whoever starts it (`LocalCluster.start`, `grm-local-cluster up`) prepares the state directory
with the options (`prepare_state_dir`); the supervisor reads them, starts everything, and writes
`state.json` once the cluster is ready (`clusteroptions` describes the directory).

One concept in one module (the process that owns the cluster's namespace and every part in it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from grm_testkit.cluster import lifetime, netns, promsd, tools
from grm_testkit.cluster.clusteroptions import (
    API_ADDRESS,
    API_PORT,
    CONNECT_SOCKET,
    PROMETHEUS_ADDRESS,
    PROMETHEUS_PORT,
    STATE_FILE,
    ClusterOptions,
    LocalClusterError,
    NodeConfig,
)
from grm_testkit.cluster.connectsocket import serve_connect
from grm_testkit.cluster.controlplane import (
    DEFAULT_CONTROLLERS,
    ControlPlane,
    ControlPlaneOptions,
    first_service_ip,
)
from grm_testkit.cluster.kubeclient import KubeClient, KubeError
from grm_testkit.cluster.kubeproxy import KubeProxy
from grm_testkit.cluster.realnode import RealNode

log = logging.getLogger(__name__)

# The legacy Endpoints controller too (some clients and `kubectl describe svc` still read them),
# and the node lifecycle controller: it lifts the `node.kubernetes.io/not-ready` taint that
# admission puts on every new Node once its kubelet reports Ready (and would taint a node
# whose kubelet stopped renewing its Lease), as in any cluster.
CONTROLLERS = (*DEFAULT_CONTROLLERS, "endpoints-controller", "node-lifecycle-controller")
# The node lifecycle controller looks at nodes every 5 s by default: 1 s makes a new node
# schedulable within about a second of start-up.
CONTROLLER_MANAGER_ARGS = ("--node-monitor-period=1s",)


class Supervisor:
    """Runs the whole cluster inside the current (fresh) network namespace until stopped."""

    def __init__(self, options: ClusterOptions, state_dir: Path) -> None:
        self.options = options
        self.state_dir = state_dir
        self.plane: ControlPlane | None = None
        self.prometheus: subprocess.Popen[bytes] | None = None
        # Set by `_start_prometheus`: how to start it again after a requested stop.
        self._prometheus_argv: list[str] = []
        # True between a requested `PROMETHEUS STOP` and the next start: its exit is then no
        # component failure, and the watchdog must not stop the cluster for it.
        self.prometheus_stopped = False
        self.workdir = Path(tempfile.mkdtemp(prefix="grm-local-"))
        self.kube_proxy: KubeProxy | None = None
        self.real_nodes: list[RealNode] = []

    def run(self) -> int:
        # A stop request while the control plane starts (before the event loop's handlers exist)
        # must still run the cleanup below: turn it into SystemExit.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)
        netns.setup_inside()
        netns.add_addresses([n.node_ip for n in self.options.node_configs()])
        if not netns.outside_is_unreachable():
            raise LocalClusterError("the network namespace has a route out; refusing to start")
        t0 = time.monotonic()
        self.plane = ControlPlane(
            ControlPlaneOptions(
                bind_address=API_ADDRESS,
                secure_port=API_PORT,
                service_cluster_ip_range=netns.SERVICE_CIDR,
                controller_manager=True,
                scheduler=True,
                controllers=CONTROLLERS,
                controller_manager_args=CONTROLLER_MANAGER_ARGS,
                # `kubectl logs` through the API server dials the node's InternalIP, never its
                # name (there is no DNS in the namespace).
                apiserver_args=("--kubelet-preferred-address-types=InternalIP",),
                workdir_parent=self.workdir,
                verbosity=self.options.verbosity,
            )
        )
        try:
            self.plane.start()
            log.info("control plane up in %.1f s", time.monotonic() - t0)
            return asyncio.run(self._main(t0))
        finally:
            self._stop_prometheus()
            if self.kube_proxy is not None:
                self.kube_proxy.stop()
            self.plane.stop()
            for name in (STATE_FILE, CONNECT_SOCKET, "kubeconfig"):
                with contextlib.suppress(OSError):
                    (self.state_dir / name).unlink()
            shutil.rmtree(self.workdir, ignore_errors=True)
            log.info("local cluster stopped")

    async def _main(self, t0: float) -> int:
        assert self.plane is not None
        plane = self.plane
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        kubeconfig = self.state_dir / "kubeconfig"
        shutil.copyfile(plane.kubeconfig, kubeconfig)
        admin = KubeClient.from_kubeconfig(plane.kubeconfig)
        tasks: list[asyncio.Task[None]] = []
        connect_server: asyncio.AbstractServer | None = None
        try:
            for node in self.options.node_configs():
                await self._start_real_node(admin, node)
            await self._start_kube_proxy()
            prometheus_url = self._start_prometheus()
            connect_server = await asyncio.start_unix_server(
                self._connect_or_control, str(self.state_dir / CONNECT_SOCKET)
            )
            await self._wait_ready(admin)
            state = {
                "pid": os.getpid(),
                "kubeconfig": str(kubeconfig),
                "api_url": plane.url,
                "prometheus_url": prometheus_url,
                "connect_socket": str(self.state_dir / CONNECT_SOCKET),
                "workdir": str(self.workdir),
                "nodes": [asdict(n) for n in self.options.node_configs()],
                "gpus": self.options.gpus,
                "root": netns.is_root(),
                "started_s": round(time.monotonic() - t0, 2),
            }
            tmp = self.state_dir / (STATE_FILE + ".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(self.state_dir / STATE_FILE)
            log.info("local cluster ready in %.1f s: KUBECONFIG=%s", time.monotonic() - t0, kubeconfig)
            watchdog = asyncio.create_task(self._watch_components(stop))
            tasks.append(watchdog)
            await stop.wait()
            log.info("stopping the local cluster")
            return 1 if watchdog.done() else 0
        finally:
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
            if connect_server is not None:
                connect_server.close()
            for task in tasks:
                task.cancel()
            await self._stop_real_nodes(admin)
            await admin.close()

    async def _watch_components(self, stop: asyncio.Event) -> None:
        """Stops the cluster when a control-plane process or Prometheus dies: a test then fails
        at once (its supervisor is gone) instead of waiting out its deadlines."""
        assert self.plane is not None
        while True:
            await asyncio.sleep(1.0)
            dead = [] if self.plane.running else ["a control-plane process"]
            if self.kube_proxy is not None and not self.kube_proxy.running:
                dead.append("kube-proxy")
            dead += [f"the kubelet or containerd of {n.name}" for n in self.real_nodes if not n.running]
            if (
                self.prometheus is not None
                and not self.prometheus_stopped
                and self.prometheus.poll() is not None
            ):
                dead.append(f"prometheus (exit {self.prometheus.returncode})")
            if dead:
                log.error("%s died; stopping the local cluster", ", ".join(dead))
                self._save_component_logs()
                stop.set()
                return

    def _save_component_logs(self, lines: int = 15) -> None:
        """Copies the control plane's logs into the state dir (the work dir is removed on stop)
        and puts their last lines into the supervisor's log."""
        assert self.plane is not None
        for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            path = self.plane.log_path(component)
            with contextlib.suppress(OSError):
                shutil.copyfile(path, self.state_dir / f"{component}.log")
                last = path.read_text(errors="replace").splitlines()[-lines:]
                log.error("last lines of %s:\n%s", component, "\n".join(last))

    async def _start_kube_proxy(self) -> None:
        """The real kube-proxy (nftables) for every node: they share this namespace. Started
        once the nodes registered (it reads its Node), ready after its first full sync."""
        assert self.plane is not None
        first = self.options.node_configs()[0]
        self.kube_proxy = KubeProxy(
            self.workdir,
            self.plane.kubeconfig_for_user("system:kube-proxy"),
            first.name,
            first.node_ip,
            # The cluster's own addresses: pods on 10.245/16, the nodes, the API server and
            # Prometheus on 10.244/16.
            "10.244.0.0/15",
            self.options.verbosity,
        )
        t0 = time.monotonic()
        self.kube_proxy.spawn()
        await self.kube_proxy.wait_synced()
        log.info("kube-proxy (nftables) up in %.1f s", time.monotonic() - t0)

    async def _start_real_node(self, admin: KubeClient, node: NodeConfig) -> None:
        """containerd (images imported) and the real kubelet for `node`; returns once the Node
        registered and advertises its GPUs (`nvidia.com/gpu` in status.capacity by PATCH, as
        Kubernetes documents for node-level extended resources)."""
        assert self.plane is not None
        real = RealNode(
            name=node.name,
            index=node.index,
            node_ip=node.node_ip,
            workdir=self.workdir,
            kubeconfig=self.plane.kubeconfig_for_node(node.name),
            cert=self._kubelet_cert(node),
            image_cache=tools.repo_root() / ".cache" / "images",
            verbosity=self.options.verbosity,
        )
        self.real_nodes.append(real)
        t0 = time.monotonic()
        real.start_runtime()
        real.start_kubelet()
        path = f"/api/v1/nodes/{node.name}"
        deadline = time.monotonic() + 120
        while not await admin.get(path, ok_missing=True):
            if not real.running or time.monotonic() > deadline:
                raise LocalClusterError(
                    f"kubelet of {node.name} did not register:\n{real.tail('kubelet.log')}\n"
                    f"{real.tail('containerd.log', 10)}"
                )
            await asyncio.sleep(0.2)
        gpus = str(node.gpus)
        await admin.merge_patch(f"{path}/status", {"status": {"capacity": {"nvidia.com/gpu": gpus}}})
        # The kubelet derives allocatable from capacity at its next status update (every 10 s):
        # until then the scheduler would leave GPU pods Pending, so the node is not ready before.
        while (await admin.get(path))["status"].get("allocatable", {}).get("nvidia.com/gpu") != gpus:
            if not real.running or time.monotonic() > deadline:
                why = real.tail("kubelet.log")
                raise LocalClusterError(f"{node.name} does not advertise its GPUs:\n{why}")
            await asyncio.sleep(0.2)
        log.info("real node %s registered (kubelet + containerd) in %.1f s", node.name, time.monotonic() - t0)

    async def _stop_real_nodes(self, admin: KubeClient) -> None:
        """Stops kubelets and containerd and cleans up what they leave (containers, shims,
        mounts, cgroups). Pods are not deleted through the API first: their controllers would
        only make new ones while the cluster goes away."""
        for real in self.real_nodes:
            await asyncio.to_thread(real.stop)

    def _kubelet_cert(self, node: NodeConfig) -> tuple[Path, Path]:
        """The serving certificate of a node's kubelet API (its InternalIP), signed by the CA."""
        assert self.plane is not None
        pair = self.plane.serving_cert((node.node_ip, node.name))
        directory = self.workdir / "kubelet-pki"
        directory.mkdir(exist_ok=True)
        paths = (directory / f"{node.name}.crt", directory / f"{node.name}.key")
        for path, data in zip(paths, (pair.cert_pem, pair.key_pem), strict=True):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        return paths

    async def _wait_ready(self, admin: KubeClient, timeout_s: float = 120.0) -> None:
        """Ready for work: the `default` ServiceAccount exists (pods need it), every node is
        schedulable (its not-ready taint lifted) and kube-proxy serves `kubernetes` (10.96.0.1:443)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                found = await admin.get("/api/v1/namespaces/default/serviceaccounts/default", ok_missing=True)
                nodes = (await admin.get("/api/v1/nodes"))["items"]
            except KubeError:
                found, nodes = {}, []
            schedulable = len(nodes) == self.options.nodes and not any(
                t["key"] == "node.kubernetes.io/not-ready"
                for n in nodes
                for t in n["spec"].get("taints") or []
            )
            if found and schedulable:
                try:
                    kubernetes_service = first_service_ip(netns.SERVICE_CIDR)
                    _, writer = await asyncio.open_connection(kubernetes_service, 443)
                    writer.close()
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    "the cluster did not become ready (default ServiceAccount, nodes, kube-proxy)"
                )
            await asyncio.sleep(0.1)

    def _start_prometheus(self) -> str | None:
        wanted = self.options.prometheus
        path = promsd.binary()
        if wanted is False:
            return None
        if path is None:
            if wanted:
                raise LocalClusterError(f"prometheus with Kubernetes SD is not built ({promsd.HOW_TO_GET})")
            log.info("prometheus not built (%s): the Direct metrics source only", promsd.HOW_TO_GET)
            return None
        assert self.plane is not None
        pdir = self.workdir / "prometheus"
        (pdir / "data").mkdir(parents=True)
        token_file = self._prometheus_token(pdir)
        promsd.write_config(
            pdir / "prometheus.yml",
            self.plane.url,
            self.plane.ca_path,
            token_file,
            self.options.scrape_interval_s,
        )
        listen = f"{PROMETHEUS_ADDRESS}:{PROMETHEUS_PORT}"
        self._prometheus_argv = promsd.argv(path, pdir / "prometheus.yml", pdir / "data", listen)
        self._spawn_prometheus()
        return f"http://{listen}"

    def _prometheus_token(self, pdir: Path) -> Path:
        """Prometheus' RBAC (list and watch pods) and a bound token of its ServiceAccount, in a
        file only the supervisor's user reads; returns the file."""
        assert self.plane is not None
        for doc in promsd.rbac_objects():
            plural = "clusterroles" if doc["kind"] == "ClusterRole" else "clusterrolebindings"
            status, body = self.plane.request("POST", f"/apis/rbac.authorization.k8s.io/v1/{plural}", doc)
            if status not in (201, 409):
                raise LocalClusterError(f"creating {doc['kind']} for prometheus: {status} {body}")
        namespace, name = promsd.SERVICE_ACCOUNT
        token = self.plane.service_account_token(namespace, name, expiration_s=promsd.TOKEN_EXPIRATION_S)
        path = pdir / "token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        return path

    def _spawn_prometheus(self) -> None:
        """Starts Prometheus with the argv of `_start_prometheus`: same address, same TSDB."""
        pdir = self.workdir / "prometheus"
        with (pdir / "prometheus.log").open("ab") as out:
            self.prometheus = subprocess.Popen(
                self._prometheus_argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=lifetime.die_with_parent,
            )
        self.prometheus_stopped = False
        listen = f"{PROMETHEUS_ADDRESS}:{PROMETHEUS_PORT}"
        log.info("prometheus on http://%s (pid %d)", listen, self.prometheus.pid)

    async def _control_prometheus(self, verb: str) -> str:
        """`PROMETHEUS STOP|START` from the host (`LocalCluster.stop_prometheus`/`start_prometheus`):
        a real stop — SIGTERM, Prometheus closes its listener and TSDB, the process exits, so
        clients get "connection refused" at once — and a start on the same address and TSDB.
        Returns the reply line."""
        proc = self.prometheus
        if proc is None:
            raise ValueError("prometheus is not part of this cluster")
        if verb == "STOP":
            self.prometheus_stopped = True
            if proc.poll() is None:
                proc.terminate()
                # Polled, not waited: the connect socket's forwarded connections share this loop.
                # A clean shutdown of this small TSDB took 0.05 s here (a start to /-/ready 0.14 s).
                deadline = time.monotonic() + 20.0
                while proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if proc.poll() is None:
                    proc.kill()
                    while proc.poll() is None:
                        await asyncio.sleep(0.05)
            log.info("prometheus stopped on request (exit %s)", proc.returncode)
            return f"OK stopped pid {proc.pid} exit {proc.returncode}"
        if verb == "START":
            if proc.poll() is None:
                raise ValueError(f"prometheus is running already (pid {proc.pid})")
            self._spawn_prometheus()
            assert self.prometheus is not None
            return f"OK started pid {self.prometheus.pid}"
        raise ValueError(f"unknown verb {verb!r}")

    async def _connect_or_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The first line on connect.sock: `CONNECT ip:port` (a forwarded connection), or
        `PROMETHEUS STOP|START` (answered with one line `OK …` or `ERROR …`)."""
        try:
            line = (await asyncio.wait_for(reader.readline(), 10)).decode().strip()
        except (OSError, TimeoutError, UnicodeDecodeError) as exc:
            log.debug("connect socket: %s", exc)
            writer.close()
            return
        word, _, rest = line.partition(" ")
        if word != "PROMETHEUS":
            await serve_connect(reader, writer, line)
            return
        try:
            reply = await self._control_prometheus(rest.strip().upper())
        except ValueError as exc:
            reply = f"ERROR {exc}"
        with contextlib.suppress(OSError):
            writer.write(reply.encode() + b"\n")
            await writer.drain()
        writer.close()

    def _stop_prometheus(self) -> None:
        proc = self.prometheus
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def supervise_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the supervisor process (started under unshare)."""
    parser = argparse.ArgumentParser(prog="grm-local-cluster-supervisor")
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir
    options = ClusterOptions(**json.loads((state_dir / "options.json").read_text()))
    logging.basicConfig(
        level=getattr(logging, options.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return Supervisor(options, state_dir).run()


def supervisor_argv(state_dir: Path) -> list[str]:
    """The supervisor's command line, wrapped in `unshare`."""
    return netns.unshare_argv(
        [
            sys.executable,
            "-m",
            "grm_testkit.cluster.supervisor",
            "supervise",
            "--state-dir",
            str(state_dir),
        ]
    )


def prepare_state_dir(state_dir: Path, options: ClusterOptions) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    (state_dir / "options.json").write_text(json.dumps(asdict(options)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "supervise":
        sys.exit(supervise_main(sys.argv[2:]))
    sys.exit("usage: python -m grm_testkit.cluster.supervisor supervise --state-dir DIR")
