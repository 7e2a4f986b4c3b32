"""A real Kubernetes control plane run from the binaries that `make control-plane` builds: etcd and
kube-apiserver (always), kube-controller-manager and kube-scheduler (on request) — their
processes: starting each, waiting until it is ready, stopping them all.

Modelled on controller-runtime's envtest control plane (pkg/internal/testing/controlplane): each
run gets a temporary directory holding a fresh PKI and the kubeconfigs (`credentials`: one CA
for serving and client certificates, an ECDSA service-account signing key), etcd's data and each
process's log. The API server authorises with Node and RBAC, so permission tests go through the
real authoriser; the admin identity is a client certificate in group `system:masters`.

Start-up is measured (`ControlPlane.timings`) and polled with a deadline, never slept for. Each
process gets ports picked free a moment before it binds them; one that loses a port to another
process in between (it exits with "address already in use", or another process answers its
health probe) is started again on fresh ports (`grm_testkit.cluster.ports`).

One concept over ~400 lines: the lifecycle of these four processes. The order they start in,
each one's flags and readiness probe, the retry on a lost port and the stop share one run's
state (work dir, ports, credentials) and are read together; what the identities are and how
they are issued is in `credentials`.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from grm_testkit.cluster import lifetime, pki, ports, tools
from grm_testkit.cluster.credentials import ControlPlaneCredentials
from grm_testkit.cluster.kubeclient import json_exchange
from grm_testkit.cluster.ports import PortClash
from grm_testkit.cluster.ports import free_port as free_port

log = logging.getLogger(__name__)

# The controllers an operator's tests need from kube-controller-manager: Deployments create
# ReplicaSets create Pods, owner references are garbage-collected, Services get EndpointSlices,
# namespaces are finalised, every namespace gets a `default` ServiceAccount and the root CA
# ConfigMap that projected service-account volumes read, PDBs get status and the aggregated
# admin/edit/view ClusterRoles get their rules, Jobs (the quality gate's builds and evaluations) get
# their pods and their Complete/Failed conditions. Names are the
# v1.28+ spellings (`kube-controller-manager --help` lists them).
DEFAULT_CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "disruption-controller",
    "clusterrole-aggregation-controller",
    "job-controller",
)

_POLL_S = 0.05
_LOG_TAIL_LINES = 40


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or a request to it failed."""


@dataclass(frozen=True)
class ControlPlaneOptions:
    """What to start and where.

    `bind_address` is the API server's address: loopback by default; an address such as
    10.96.0.1 when run inside a network namespace of the local cluster (etcd and the other
    components always talk over the namespace's own 127.0.0.1).
    """

    bind_address: str = "127.0.0.1"
    # None: the port is picked free on `bind_address`.
    secure_port: int | None = None
    # The address the API server publishes for the `kubernetes` Service; None means the bind
    # address. Loopback addresses are rejected in Endpoints, so then no reconciler runs.
    advertise_address: str | None = None
    service_cluster_ip_range: str = "10.0.0.0/24"
    controller_manager: bool = False
    scheduler: bool = False
    controllers: tuple[str, ...] = DEFAULT_CONTROLLERS
    # etcd+apiserver start in ~3-6 s on 2 idle cores; a loaded CI machine needs headroom.
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 15.0
    apiserver_args: tuple[str, ...] = ()
    controller_manager_args: tuple[str, ...] = ()
    scheduler_args: tuple[str, ...] = ()
    bin_dir: Path | None = None
    # Parent of the per-run temp dir (None: the system default).
    workdir_parent: Path | None = None
    # Keep the temp dir (logs, certs) after stop(), for debugging.
    keep_workdir: bool = False
    # Log verbosity of the Kubernetes components (klog -v).
    verbosity: int = 1


@dataclass
class _Process:
    """One child process whose stdout and stderr go to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    # Where this start's lines begin in the log (a retried start appends to the same file).
    log_offset: int = 0

    def start(self, env: Mapping[str, str]) -> None:
        main_thread = threading.current_thread() is threading.main_thread()
        preexec = lifetime.die_with_parent if main_thread and lifetime.AVAILABLE else None
        with self.log_path.open("ab") as log_file:
            self.log_offset = log_file.tell()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(env),
                preexec_fn=preexec,
            )
        self.started_at = time.monotonic()

    def exited(self) -> int | None:
        """The exit code when the process has ended, else None."""
        return None if self.popen is None else self.popen.poll()

    def log_since_start(self) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(self.log_offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s of SIGTERM; killing it", self.name, timeout_s)
            self.popen.kill()
            self.popen.wait(timeout=timeout_s)


def first_service_ip(cidr: str) -> str:
    """The `kubernetes` Service's cluster IP: the first address of the service range."""
    return str(next(ipaddress.ip_network(cidr, strict=False).hosts()))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    abort: Callable[[], str | None] | None = None,
    interval_s: float = _POLL_S,
) -> float:
    """Polls `predicate` until it is true; returns the seconds it took.

    `abort` is checked each round and, if it returns a message (e.g. a process died), stops the
    wait at once with that message instead of running out the deadline.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        if predicate():
            return time.monotonic() - start
        if abort is not None and (reason := abort()) is not None:
            raise ControlPlaneError(f"{what}: {reason}")
        if time.monotonic() >= deadline:
            raise ControlPlaneError(f"{what}: not ready after {timeout_s:.0f} s")
        time.sleep(interval_s)


class ControlPlane:
    """etcd + kube-apiserver (+ optional controller-manager and scheduler) for one test session.

    Use as a context manager or call start()/stop(). After start(): `url`, `kubeconfig` (the
    admin kubeconfig path), `ca_pem`/`ca_path`, `admin` (its client key pair) and `timings`.

    `choose_port(host)` picks each port the processes bind, again for each of up to
    `port_attempts` starts of a process that lost one to another process (tests inject a chooser
    that returns a taken port first). A port fixed in the options is never re-chosen: losing it
    is an error.
    """

    def __init__(
        self,
        options: ControlPlaneOptions | None = None,
        *,
        choose_port: Callable[[str], int] = free_port,
        port_attempts: int = ports.PORT_ATTEMPTS,
    ) -> None:
        self.options = options or ControlPlaneOptions()
        self.choose_port = choose_port
        self.port_attempts = port_attempts
        self.bin_dir = self.options.bin_dir or tools.k8s_bin_dir()
        self.timings: dict[str, float] = {}
        self._workdir: Path | None = None
        self._credentials: ControlPlaneCredentials | None = None
        self._processes: list[_Process] = []
        self._url: str | None = None
        self._kubeconfig: Path | None = None
        self._etcd_url: str | None = None

    # --- public state ------------------------------------------------------------------------
    def _require(self) -> tuple[Path, ControlPlaneCredentials, str]:
        if self._workdir is None or self._credentials is None or self._url is None:
            raise ControlPlaneError("the control plane is not started")
        return self._workdir, self._credentials, self._url

    @property
    def workdir(self) -> Path:
        return self._require()[0]

    @property
    def url(self) -> str:
        """The API server's https URL, e.g. https://127.0.0.1:37411."""
        return self._require()[2]

    @property
    def kubeconfig(self) -> Path:
        """The admin (system:masters) kubeconfig file."""
        self._require()
        assert self._kubeconfig is not None
        return self._kubeconfig

    @property
    def credentials(self) -> ControlPlaneCredentials:
        """The PKI and the identities it hands out (`grm_testkit.cluster.credentials`)."""
        return self._require()[1]

    @property
    def ca_pem(self) -> bytes:
        return self._require()[1].ca.cert_pem

    @property
    def ca_path(self) -> Path:
        return self._require()[1].files["ca.crt"]

    @property
    def admin(self) -> pki.KeyPair:
        """The admin client certificate and key (user `admin`, group `system:masters`)."""
        return self._require()[1].admin

    @property
    def etcd_url(self) -> str:
        self._require()
        assert self._etcd_url is not None
        return self._etcd_url

    def log_path(self, component: str) -> Path:
        """The log file of `component` (etcd, kube-apiserver, ...)."""
        return self.workdir / f"{component}.log"

    def env(self) -> dict[str, str]:
        """Environment additions that point a client process at this control plane."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._workdir is not None:
            raise ControlPlaneError("the control plane is already started")
        needed = ["etcd", "kube-apiserver"]
        if self.options.controller_manager:
            needed.append("kube-controller-manager")
        if self.options.scheduler:
            needed.append("kube-scheduler")
        absent = tools.missing(self.bin_dir, tuple(needed))
        if absent:
            raise ControlPlaneError(
                f"missing binaries in {self.bin_dir}: {', '.join(absent)} (run `make control-plane`)"
            )
        parent = self.options.workdir_parent
        self._workdir = Path(tempfile.mkdtemp(prefix="grm-cp-", dir=parent))
        t0 = time.monotonic()
        try:
            self._credentials = self._make_credentials(self._workdir)
            self.timings["pki"] = time.monotonic() - t0
            self._start_etcd()
            self._start_apiserver()
            if self.options.controller_manager:
                self._start_controller_manager()
            if self.options.scheduler:
                self._start_scheduler()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        log.info(
            "control plane up at %s in %.2f s (%s)",
            self._url,
            self.timings["total"],
            ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items() if k != "total"),
        )

    def stop(self) -> None:
        """Stops every process (newest first: SIGTERM, wait, SIGKILL) and removes the temp dir."""
        for proc in reversed(self._processes):
            try:
                proc.stop(self.options.stop_timeout_s)
            except Exception:  # keep tearing the rest down
                log.exception("stopping %s failed", proc.name)
        self._processes.clear()
        if self._workdir is not None:
            if self.options.keep_workdir:
                log.info("control plane files kept in %s", self._workdir)
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self._credentials = None
        self._url = None
        self._kubeconfig = None
        self._etcd_url = None

    @property
    def running(self) -> bool:
        return self._workdir is not None and all(p.exited() is None for p in self._processes)

    # --- identities (issued by `self.credentials`) ----------------------------------------------
    def kubeconfig_for_user(
        self,
        user: str,
        groups: tuple[str, ...] = (),
        path: Path | None = None,
        *,
        server: str | None = None,
    ) -> Path:
        """A kubeconfig authenticating as `user` in `groups` by a client certificate.

        RBAC then decides what that identity may do; `server` overrides the URL (e.g. a proxy
        whose serving certificate this control plane's CA signed)."""
        _, creds, url = self._require()
        return creds.kubeconfig_for_user(server or url, user, groups, path)

    def kubeconfig_for_node(self, node: str, path: Path | None = None) -> Path:
        """A kubelet's kubeconfig: user `system:node:<node>` in group `system:nodes`, which the
        Node authorizer and NodeRestriction admission confine to that node and its pods."""
        _, creds, url = self._require()
        return creds.kubeconfig_for_node(url, node, path)

    def service_account_token(
        self, namespace: str, name: str, *, expiration_s: int = 3600, create: bool = True
    ) -> str:
        """A bound token for ServiceAccount `namespace/name` from the TokenRequest API.

        With `create`, the ServiceAccount is created first if it does not exist yet."""
        if create:
            status, body = self.request(
                "POST",
                f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            )
            if status not in (201, 409):
                raise ControlPlaneError(f"creating ServiceAccount {namespace}/{name}: {status} {body}")
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(name)}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_s},
            },
        )
        if status != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name}: {status} {body}")
        token: str = body["status"]["token"]
        return token

    def kubeconfig_for_service_account(
        self,
        namespace: str,
        name: str,
        path: Path | None = None,
        *,
        expiration_s: int = 3600,
        create: bool = True,
        server: str | None = None,
    ) -> Path:
        """A kubeconfig authenticating as ServiceAccount `namespace/name` with a bound token
        (user `system:serviceaccount:<namespace>:<name>`), default namespace `namespace`."""
        _, creds, url = self._require()
        token = self.service_account_token(namespace, name, expiration_s=expiration_s, create=create)
        return creds.kubeconfig_for_service_account(server or url, namespace, name, token, path)

    def serving_cert(self, hosts: tuple[str, ...]) -> pki.KeyPair:
        """A TLS serving certificate signed by this control plane's CA (e.g. for a proxy)."""
        return self._require()[1].serving_cert(hosts)

    # --- admin API access ----------------------------------------------------------------------
    def ssl_context(self, client: pki.KeyPair | None = None) -> ssl.SSLContext:
        """A TLS context trusting this control plane's CA, presenting `client` (default: admin)."""
        return self._require()[1].ssl_context(client)

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float = 30.0
    ) -> tuple[int, Any]:
        """One admin request to the API server: (HTTP status, decoded JSON body or text)."""
        _, _, url = self._require()
        return _https_json(url, self.ssl_context(), method, path, body, timeout_s)

    def update(self, path: str, change: Callable[[dict[str, Any]], None], *, attempts: int = 5) -> Any:
        """Read the object at ``path``, apply ``change`` and PUT it, again on a 409 Conflict (as
        ``kubectl edit`` does: a controller's status write between the GET and the PUT bumps the
        resourceVersion). Returns the stored object; raises on any other error."""
        for _ in range(attempts):
            status, body = self.request("GET", path)
            if status != 200:
                raise ControlPlaneError(f"GET {path}: {status} {body}")
            change(body)
            status, stored = self.request("PUT", path, body)
            if status == 200:
                return stored
            if status != 409:
                raise ControlPlaneError(f"PUT {path}: {status} {stored}")
        raise ControlPlaneError(f"PUT {path}: {attempts} conflicts in a row")

    # --- start-up --------------------------------------------------------------------------------
    def _make_credentials(self, workdir: Path) -> ControlPlaneCredentials:
        opts = self.options
        hosts = {opts.bind_address, "127.0.0.1", first_service_ip(opts.service_cluster_ip_range)}
        if opts.advertise_address:
            hosts.add(opts.advertise_address)
        hosts.discard("0.0.0.0")
        hosts.discard("::")
        return ControlPlaneCredentials.create(workdir, sorted(hosts))

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        workdir, _, _ = self._require_started_dirs()
        proc = _Process(name=name, argv=argv, log_path=workdir / f"{name}.log")
        log.debug("starting %s: %s", name, " ".join(argv))
        proc.start(os.environ)
        self._processes.append(proc)
        return proc

    def _require_started_dirs(self) -> tuple[Path, ControlPlaneCredentials, None]:
        if self._workdir is None or self._credentials is None:
            raise ControlPlaneError("internal: start() has not prepared the work dir")
        return self._workdir, self._credentials, None

    def _wait(
        self, proc: _Process, predicate: Callable[[], bool], what: str, chosen: tuple[int, ...] = ()
    ) -> float:
        """Seconds until `predicate` held; ControlPlaneError when `proc` exits first, PortClash
        when it exited because one of the `chosen` ports was in use or another process holds
        one of them."""

        def died() -> str | None:
            code = proc.exited()
            if code is None:
                return None
            if chosen and (line := ports.clash_line(proc.log_since_start(), chosen)) is not None:
                raise PortClash(f"{proc.name} exited with code {code}: {line}")
            return f"{proc.name} exited with code {code}; last log lines ({proc.log_path}):\n{proc.tail()}"

        try:
            took = wait_until(predicate, self.options.start_timeout_s, what, abort=died)
            if chosen and proc.popen is not None and proc.exited() is None:
                # A probe answered by another suite's etcd or scheduler on the same port proves
                # nothing about ours.
                ports.check_holder(proc.popen.pid, chosen, proc.name)
            # Checked after the holder too: a process that died meanwhile has no sockets to show.
            if (reason := died()) is not None:
                raise ControlPlaneError(f"{what}: {reason}")
        except ControlPlaneError as exc:
            if proc.exited() is None:
                raise ControlPlaneError(f"{exc}; last log lines of {proc.name}:\n{proc.tail()}") from None
            raise
        return took

    def _start_on_ports(
        self,
        name: str,
        hosts: tuple[str, ...],
        spawn: Callable[[tuple[int, ...]], tuple[_Process, Callable[[], bool]]],
        fixed: tuple[int, ...] | None = None,
    ) -> tuple[tuple[int, ...], float]:
        """Start process `name` on one port per host in `hosts` and wait until it is ready.

        `spawn(ports)` starts it on those ports and returns it with its readiness predicate. The
        ports are chosen afresh for each attempt (or `fixed`: one attempt); an attempt that lost
        one of them to another process is stopped and made again. Returns the ports of the
        attempt that came up and the seconds it all took."""
        t0 = time.monotonic()

        def attempt() -> tuple[int, ...]:
            chosen = fixed or tuple(self.choose_port(host) for host in hosts)
            proc, ready = spawn(chosen)
            try:
                self._wait(proc, ready, f"{name} ready", chosen)
            except PortClash:
                proc.stop(self.options.stop_timeout_s)
                self._processes.remove(proc)
                raise
            return chosen

        try:
            chosen = ports.retry_on_clash(attempt, name, 1 if fixed else self.port_attempts)
        except PortClash as exc:
            raise ControlPlaneError(str(exc)) from exc
        return chosen, time.monotonic() - t0

    def _start_etcd(self) -> None:
        (client_port, _), self.timings["etcd"] = self._start_on_ports(
            "etcd", ("127.0.0.1", "127.0.0.1"), self._spawn_etcd
        )
        self._etcd_url = f"http://127.0.0.1:{client_port}"

    def _spawn_etcd(self, chosen: tuple[int, ...]) -> tuple[_Process, Callable[[], bool]]:
        workdir, _, _ = self._require_started_dirs()
        client_port, peer_port = chosen
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        argv = [
            str(self.bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            # Test data is thrown away: skipping fsync makes every write ~10x cheaper on a disk
            # shared with a Go build.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]
        return self._spawn("etcd", argv), lambda: _http_ok(client, "/health")

    def _start_apiserver(self) -> None:
        _, keys, _ = self._require_started_dirs()
        opts = self.options
        fixed = (opts.secure_port,) if opts.secure_port else None
        (port,), self.timings["kube-apiserver"] = self._start_on_ports(
            "kube-apiserver", (opts.bind_address,), self._spawn_apiserver, fixed
        )
        url = f"https://{_url_host(opts.bind_address)}:{port}"
        self._url = url
        self._kubeconfig = keys.admin_kubeconfig(url)

    def _spawn_apiserver(self, chosen: tuple[int, ...]) -> tuple[_Process, Callable[[], bool]]:
        workdir, keys, _ = self._require_started_dirs()
        opts = self.options
        (port,) = chosen
        url = f"https://{_url_host(opts.bind_address)}:{port}"
        advertise = opts.advertise_address or opts.bind_address
        argv = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self._etcd_url}",
            f"--bind-address={opts.bind_address}",
            f"--secure-port={port}",
            f"--cert-dir={workdir / 'apiserver-certs'}",
            f"--tls-cert-file={keys.files['apiserver.crt']}",
            f"--tls-private-key-file={keys.files['apiserver.key']}",
            f"--client-ca-file={keys.files['ca.crt']}",
            "--authorization-mode=Node,RBAC",
            # The service-account issuer is the in-cluster name, as kubeadm sets it.
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={keys.files['sa.pub']}",
            f"--service-account-signing-key-file={keys.files['sa.key']}",
            f"--service-cluster-ip-range={opts.service_cluster_ip_range}",
            "--allow-privileged=true",
            # With the Node authorizer: a node's credentials may change only that node and its
            # pods, as a kubelet's in any cluster (the local cluster's real kubelets use them).
            "--enable-admission-plugins=NodeRestriction",
            "--profiling=false",
            f"--v={opts.verbosity}",
        ]
        if opts.advertise_address:
            argv.append(f"--advertise-address={opts.advertise_address}")
        if advertise not in ("0.0.0.0", "::") and _is_loopback(advertise):
            # Endpoints and EndpointSlices reject loopback addresses: the `kubernetes` Service's
            # reconciler would only log a validation error every 10 s.
            argv.append("--endpoint-reconciler-type=none")
        if not opts.controller_manager:
            # Without the controller-manager no namespace gets its `default` ServiceAccount, and
            # the ServiceAccount admission plugin would reject every Pod (envtest does the same).
            argv.append("--disable-admission-plugins=ServiceAccount")
        argv.extend(opts.apiserver_args)
        proc = self._spawn("kube-apiserver", argv)
        ctx = keys.ssl_context()
        return proc, lambda: _https_ok(url, ctx, "/readyz")

    def _component_kubeconfig(self, user: str, filename: str) -> Path:
        """A kubeconfig for a system component, talking to the API server over loopback-or-bind."""
        return self.kubeconfig_for_user(user, path=self.workdir / "kubeconfigs" / filename)

    @staticmethod
    def _healthz(port: int) -> Callable[[], bool]:
        """Whether a component's /healthz on loopback `port` answers 200."""
        # The components serve /healthz on a self-signed certificate; always-allowed paths need
        # no credentials, and the connection never leaves loopback.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        return lambda: _https_ok(f"https://127.0.0.1:{port}", insecure, "/healthz")

    def _component_argv(self, binary: str, kubeconfig: Path, port: int, cert_dir: Path) -> list[str]:
        """Flags the controller-manager and the scheduler share: their identity, a loopback
        health port, and a single instance (a leader election would only add a lease round trip
        to start-up)."""
        return [
            str(self.bin_dir / binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={cert_dir}",
            "--leader-elect=false",
            "--profiling=false",
            f"--v={self.options.verbosity}",
        ]

    def _start_controller_manager(self) -> None:
        _, self.timings["kube-controller-manager"] = self._start_on_ports(
            "kube-controller-manager", ("127.0.0.1",), self._spawn_controller_manager
        )

    def _spawn_controller_manager(self, chosen: tuple[int, ...]) -> tuple[_Process, Callable[[], bool]]:
        workdir, keys, _ = self._require()
        kubeconfig = self._component_kubeconfig("system:kube-controller-manager", "controller-manager.yaml")
        (port,) = chosen
        argv = [
            *self._component_argv(
                "kube-controller-manager", kubeconfig, port, workdir / "controller-manager-certs"
            ),
            f"--controllers={','.join(self.options.controllers)}",
            # Each controller acts as its own ServiceAccount with the system:controller:* role,
            # as in kubeadm clusters, so RBAC applies to controllers too.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={keys.files['sa.key']}",
            f"--root-ca-file={keys.files['ca.crt']}",
            f"--service-cluster-ip-range={self.options.service_cluster_ip_range}",
            *self.options.controller_manager_args,
        ]
        return self._spawn("kube-controller-manager", argv), self._healthz(port)

    def _start_scheduler(self) -> None:
        _, self.timings["kube-scheduler"] = self._start_on_ports(
            "kube-scheduler", ("127.0.0.1",), self._spawn_scheduler
        )

    def _spawn_scheduler(self, chosen: tuple[int, ...]) -> tuple[_Process, Callable[[], bool]]:
        workdir, _, _ = self._require()
        kubeconfig = self._component_kubeconfig("system:kube-scheduler", "scheduler.yaml")
        (port,) = chosen
        argv = [
            *self._component_argv("kube-scheduler", kubeconfig, port, workdir / "scheduler-certs"),
            *self.options.scheduler_args,
        ]
        return self._spawn("kube-scheduler", argv), self._healthz(port)


def _split_url(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


def _http_ok(url: str, path: str) -> bool:
    host, port = _split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _https_ok(url: str, ctx: ssl.SSLContext, path: str) -> bool:
    host, port = _split_url(url)
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _https_json(
    url: str,
    ctx: ssl.SSLContext,
    method: str,
    path: str,
    body: Mapping[str, Any] | None,
    timeout_s: float,
) -> tuple[int, Any]:
    host, port = _split_url(url)
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout_s)
    return json_exchange(conn, method, path, body)
