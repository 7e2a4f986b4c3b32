"""The local cluster: the whole system on one machine, in a network namespace of its own, made of
real Kubernetes parts (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
helm, Prometheus) plus our node agent (kubelet + runtime) and Service front (kube-proxy).

Process tree — one supervisor, started under `unshare`, so it and every child live inside the
namespace and die with it (each child has PR_SET_PDEATHSIG):

    supervisor (python -m grm_testkit.cluster.localcluster supervise, inside the namespace)
    ├── etcd, kube-apiserver (10.96.0.1:6443), kube-controller-manager, kube-scheduler
    ├── prometheus (10.244.255.1:9090, when installed)
    ├── node agent + Service front + Prometheus SD (asyncio tasks of the supervisor itself)
    └── pod processes (one process group per container, on pod IPs 10.244.<node>.x)

The way in — the *state directory* holds `state.json` (supervisor PID, kubeconfig, URLs), the
admin `kubeconfig` (server https://10.96.0.1:6443) and `connect.sock`:
* people and scripts: `grm-local-cluster shell | exec -- CMD` — `nsenter` into the
  supervisor's network namespace (/proc/PID/ns/net) with `KUBECONFIG` and the real kubectl and
  helm on `PATH`;
* tests and the demo, from the host side: `LocalCluster` (a context manager). Code that must
  run *inside* (the operator, load generators that should see pod IPs) goes through
  `lc.run`/`lc.popen` (nsenter). To reach an in-cluster address from the test process itself,
  `lc.forward(ip, port)` opens a loopback port on the host whose connections travel over
  `connect.sock` — a unix socket, which belongs to the file system, not to a network namespace —
  to the supervisor, which connects to the target *inside*. Only addresses of the namespace's
  own ranges are accepted, so this never opens a way out. `lc.service_url(ns, name, port)` and
  `lc.host_kubeconfig` are built on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import yaml

from grm_testkit.cluster import lifetime, netns, podspec, promsd, tools
from grm_testkit.cluster.controlplane import DEFAULT_CONTROLLERS, ControlPlane, ControlPlaneOptions
from grm_testkit.cluster.kubeclient import Json, KubeClient, KubeError, json_exchange, load_kubeconfig
from grm_testkit.cluster.nodeagent import AgentContext, NodeAgent, NodeConfig, default_bin_dirs
from grm_testkit.cluster.serviceproxy import splice

log = logging.getLogger(__name__)

API_ADDRESS = "10.96.0.1"
API_PORT = 6443
PROMETHEUS_ADDRESS = "10.244.255.1"
PROMETHEUS_PORT = 9090
STATE_FILE = "state.json"
CONNECT_SOCKET = "connect.sock"
# The legacy Endpoints controller too (some clients and `kubectl describe svc` still read them),
# and the node lifecycle controller: it lifts the `node.kubernetes.io/not-ready` taint that
# admission puts on every new Node once the node agent reports Ready (and would taint a node
# whose agent stopped renewing its Lease), as in a real cluster.
CONTROLLERS = (*DEFAULT_CONTROLLERS, "endpoints-controller", "node-lifecycle-controller")
# The node lifecycle controller looks at nodes every 5 s by default: 1 s makes a new node
# schedulable within about a second of start-up.
CONTROLLER_MANAGER_ARGS = ("--node-monitor-period=1s",)


class LocalClusterError(RuntimeError):
    """The local cluster failed to start, or an operation on it failed."""


@dataclass(frozen=True)
class ClusterOptions:
    """How big the local cluster is and what it runs (JSON-serialisable: it crosses into the
    supervisor process)."""

    gpus: int = 8
    nodes: int = 1
    # None: start Prometheus when the binary is installed; False: never; True: required.
    prometheus: bool | None = None
    scrape_interval_s: float = 2.0
    # Extra image → command rules:
    # {image: {"entrypoint": [...] | None, "bind_args": [...], "bind_env": {NAME: VALUE}}}.
    images: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    verbosity: int = 0
    log_level: str = "INFO"

    def node_configs(self) -> list[NodeConfig]:
        """`gpus` split over `nodes` (the first nodes get the remainder), one /24 each."""
        per, extra = divmod(self.gpus, max(1, self.nodes))
        return [
            NodeConfig(
                name=f"local-node-{i}",
                pod_cidr=f"10.244.{i}.0/24",
                gpus=per + (1 if i < extra else 0),
                backoff_base_s=self.backoff_base_s,
                backoff_cap_s=self.backoff_cap_s,
            )
            for i in range(max(1, self.nodes))
        ]

    def image_rules(self) -> dict[str, podspec.ImageRule]:
        rules = dict(podspec.DEFAULT_IMAGES)
        for image, rule in self.images.items():
            entry = rule.get("entrypoint")
            rules[image] = podspec.ImageRule(
                tuple(entry) if entry is not None else None,
                tuple(rule.get("bind_args") or ()),
                tuple((rule.get("bind_env") or {}).items()),
            )
        return rules


def default_state_dir() -> Path:
    """Where `grm-local-cluster` keeps its state unless told otherwise."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"grm-local-cluster-{os.getuid()}"


def read_state(state_dir: Path) -> Json | None:
    """The running cluster's state, or None when there is none (or its supervisor is gone)."""
    try:
        state: Json = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except (ProcessLookupError, PermissionError, KeyError, ValueError):
        return None
    return state


def tool_path() -> str:
    """PATH inside the cluster: kubectl and helm (`make tools`), the control plane, the venv."""
    dirs = [str(tools.tools_bin_dir()), str(tools.k8s_bin_dir()), str(Path(sys.executable).parent)]
    return os.pathsep.join([*dirs, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")])


# ================================================================================================
# The supervisor (inside the namespace)
# ================================================================================================


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

    def run(self) -> int:
        # A stop request while the control plane starts (before the event loop's handlers exist)
        # must still run the cleanup below: turn it into SystemExit.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)
        netns.setup_inside()
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
        proxy_client = KubeClient.from_kubeconfig(plane.kubeconfig_for_user("system:kube-proxy"))
        ctx = AgentContext(
            workdir=self.workdir,
            api_url=plane.url,
            ca_pem=plane.ca_pem,
            images=self.options.image_rules(),
            bin_dirs=(*default_bin_dirs(), tools.tools_bin_dir()),
        )
        from grm_testkit.cluster.serviceproxy import ServiceProxy

        proxy = ServiceProxy(proxy_client)
        agents: list[NodeAgent] = []
        clients = [admin, proxy_client]
        tasks: list[asyncio.Task[None]] = []
        connect_server: asyncio.AbstractServer | None = None
        try:
            await proxy.start()
            for node in self.options.node_configs():
                client = KubeClient.from_kubeconfig(plane.kubeconfig_for_node(node.name))
                clients.append(client)
                agent = NodeAgent(client, node, ctx, self._kubelet_cert(node))
                await agent.start()
                agents.append(agent)
            prometheus_url = self._start_prometheus()
            if prometheus_url is not None:
                tasks.append(asyncio.create_task(self._prometheus_sd(admin)))
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
            await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
            await proxy.stop()
            for client in clients:
                await client.close()

    async def _watch_components(self, stop: asyncio.Event) -> None:
        """Stops the cluster when a control-plane process or Prometheus dies: a test then fails
        at once (its supervisor is gone) instead of waiting out its deadlines."""
        assert self.plane is not None
        while True:
            await asyncio.sleep(1.0)
            dead = [] if self.plane.running else ["a control-plane process"]
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

    def _kubelet_cert(self, node: NodeConfig) -> tuple[Path, Path]:
        """The serving certificate of a node's kubelet API (its InternalIP), signed by the CA."""
        assert self.plane is not None
        pair = self.plane.serving_cert((podspec.PodIPs(node.pod_cidr).node_ip, node.name))
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
        schedulable (its not-ready taint lifted) and the Service front serves `kubernetes`."""
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
                    _, writer = await asyncio.open_connection(API_ADDRESS, 443)
                    writer.close()
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    "the cluster did not become ready (default ServiceAccount, Service front)"
                )
            await asyncio.sleep(0.1)

    def _start_prometheus(self) -> str | None:
        wanted = self.options.prometheus
        path = promsd.binary()
        if wanted is False:
            return None
        if path is None:
            if wanted:
                raise LocalClusterError("prometheus is not installed (apt-get install prometheus)")
            log.info("prometheus not installed: the Direct metrics source only")
            return None
        pdir = self.workdir / "prometheus"
        (pdir / "data").mkdir(parents=True)
        self.sd_file = pdir / "targets.json"
        promsd.write_targets(self.sd_file, [])
        promsd.write_config(pdir / "prometheus.yml", self.sd_file, self.options.scrape_interval_s)
        listen = f"{PROMETHEUS_ADDRESS}:{PROMETHEUS_PORT}"
        self._prometheus_argv = promsd.argv(path, pdir / "prometheus.yml", pdir / "data", listen)
        self._spawn_prometheus()
        return f"http://{listen}"

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
                # Polled, not waited: the node agent and the Service front share this event loop.
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
            await _connect_handler(reader, writer, line)
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

    async def _prometheus_sd(self, admin: KubeClient) -> None:
        pods: dict[str, Json] = {}
        async for kind, obj in admin.watch("/api/v1/pods"):
            if kind == "SYNC":
                pods = {p["metadata"]["uid"]: p for p in obj["items"]}
            elif kind == "DELETED":
                pods.pop(obj["metadata"]["uid"], None)
            else:
                pods[obj["metadata"]["uid"]] = obj
            if promsd.write_targets(self.sd_file, promsd.targets(pods.values())):
                log.debug("prometheus targets: %d", len(promsd.targets(pods.values())))


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


async def _connect_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> None:
    """One forwarded connection: `line` was `CONNECT ip:port`, then bytes both ways to that address."""
    try:
        verb, _, target = line.partition(" ")
        host, _, port = target.rpartition(":")
        if verb != "CONNECT" or not port.isdigit() or not netns.in_local_ranges(host):
            raise ValueError(f"refused: {line!r}")
        upstream = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    except (OSError, ValueError, TimeoutError) as exc:
        log.debug("connect socket: %s", exc)
        writer.close()
        return
    await splice((reader, writer), upstream)


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
            "grm_testkit.cluster.localcluster",
            "supervise",
            "--state-dir",
            str(state_dir),
        ]
    )


def prepare_state_dir(state_dir: Path, options: ClusterOptions) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    (state_dir / "options.json").write_text(json.dumps(asdict(options)))


# ================================================================================================
# The host side
# ================================================================================================


class _Forwarder:
    """Host loopback ports whose connections are carried into the namespace over connect.sock."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.loop = asyncio.new_event_loop()
        self._ports: dict[tuple[str, int], int] = {}
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="grm-forwarder", daemon=True)
        self._thread.start()

    def port(self, host: str, port: int) -> int:
        """A host loopback port for `host:port` inside the namespace (one per target)."""
        key = (host, port)
        if key not in self._ports:
            future = asyncio.run_coroutine_threadsafe(self._listen(host, port), self.loop)
            self._ports[key] = future.result(timeout=10)
        return self._ports[key]

    async def _listen(self, host: str, port: int) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                inner = await asyncio.open_unix_connection(self.socket_path)
            except OSError:
                writer.close()
                return
            inner[1].write(f"CONNECT {host}:{port}\n".encode())
            await splice((reader, writer), inner)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


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
        images: Mapping[str, Mapping[str, Any]] | None = None,
        state_dir: Path | None = None,
        start_timeout_s: float = 240.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        log_level: str = "INFO",
    ) -> None:
        self.options = ClusterOptions(
            gpus=gpus,
            nodes=nodes,
            prometheus=prometheus,
            scrape_interval_s=scrape_interval_s,
            images=dict(images or {}),
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
            log_level=log_level,
        )
        self._own_state_dir = state_dir is None
        # A fresh temp dir is made by start(), so an instance never started leaves nothing behind.
        self.state_dir = state_dir or Path(tempfile.gettempdir()) / "grm-lc-state-unstarted"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: Json = {}
        self._forwarder: _Forwarder | None = None
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
        """Why a local cluster cannot run here (missing binaries or namespaces), or None."""
        absent = tools.missing(tools.k8s_bin_dir(), tools.CONTROL_PLANE_BINARIES)
        if absent:
            return (
                f"control-plane binaries {absent} missing in {tools.k8s_bin_dir()} (run `make control-plane`)"
            )
        return netns.probe_support()

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
        self._forwarder = _Forwarder(self.state["connect_socket"])
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
        """Admin kubeconfig for processes inside the namespace (server https://10.96.0.1:6443)."""
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

    def service_url(self, namespace: str, service: str, port: int, scheme: str = "http") -> str:
        """A host URL for Service `namespace/service` port `port`: through the forwarder to the
        ClusterIP, i.e. through the Service front, so it follows the Service's ready pods."""
        return self.url(self.cluster_ip(namespace, service), port, scheme)

    def service_address(self, namespace: str, service: str, port: int, scheme: str = "http") -> str:
        """The in-cluster URL (for processes inside), e.g. http://10.96.12.7:8000."""
        return f"{scheme}://{self.cluster_ip(namespace, service)}:{port}"

    def pod_dir(self, namespace: str, name: str) -> Path | None:
        """A running pod's directory (volumes, logs, kubeconfig), or None."""
        matches = sorted((self.workdir / "pods").glob(f"{namespace}_{name}_*"))
        return matches[-1] if matches else None

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """A container's output (all its restarts), as `kubectl logs` would show it."""
        directory = self.pod_dir(namespace, name)
        if directory is None:
            return ""
        logs = sorted((directory / "logs").glob(f"{container or '*'}.log"))
        return "".join(p.read_text(errors="replace") for p in logs)

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


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "supervise":
        sys.exit(supervise_main(sys.argv[2:]))
    sys.exit("usage: python -m grm_testkit.cluster.localcluster supervise --state-dir DIR")
