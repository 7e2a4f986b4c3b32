"""A handle on an existing Kubernetes cluster — the one of `$KUBECONFIG` — for the e2e tests'
`--real-cluster` mode: the methods the tests use on a `LocalCluster` (kubectl, helm, get, api,
wait_for, service_url, …), done with the real `kubectl` and `helm` against that cluster.

Nothing here assumes the cluster is reachable beyond its API server: no pod IPs, no ClusterIPs,
no LoadBalancer. Requests to a Service travel through a `kubectl proxy` on a loopback port of
this machine and the API server's *service proxy*
(`/api/v1/namespaces/NS/services/NAME:PORT/proxy/…`), which forwards each request to a ready
endpoint of the Service (the API server picks a random address of its Endpoints). It works on
any cluster a kubeconfig reaches, whatever its authentication (kubectl does it: client
certificates, tokens, exec plugins), which is why every API call goes through the proxy too.

The local cluster's own powers (stopping its Prometheus, a node's GPU budget, pod log files)
have no counterpart here: tests that need them skip in this mode.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import quote

from grm_testkit.cluster import tools
from grm_testkit.cluster.kubeclient import Json, json_exchange

# `kubectl proxy --port=0` prints where it listens: "Starting to serve on 127.0.0.1:41857".
_BANNER = re.compile(r"Starting to serve on (?P<host>\[[0-9a-fA-F:]+\]|[^\s:]+):(?P<port>\d+)")


class ClusterHandle(Protocol):
    """What the e2e scenarios use of a cluster, offered by `LocalCluster` and `RealCluster` alike
    (mypy checks both against it where the e2e fixture hands them out)."""

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]: ...

    def helm(
        self, *args: str, check: bool = True, timeout_s: float = 300.0
    ) -> subprocess.CompletedProcess[str]: ...

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        input: str | None = None,
        timeout_s: float = 120.0,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]: ...

    def api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]: ...

    def get(self, path: str) -> Json: ...

    def service_url(
        self, namespace: str, service: str, port: int, scheme: str = "http", *, routed: bool = True
    ) -> str: ...

    def wait_routed(self, namespace: str, service: str, port: int, timeout_s: float = 60.0) -> set[str]: ...

    def wait_for(
        self, predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2
    ) -> Any: ...


class RealClusterError(RuntimeError):
    """The real cluster cannot be used, or an operation on it failed."""


def kubeconfig_from_env(env: Mapping[str, str]) -> str | None:
    """`$KUBECONFIG` when it names at least one existing file (kubectl merges a `:`-separated
    list), else None: the real-cluster mode runs only when the user pointed it at a cluster, never
    against whatever `~/.kube/config` happens to hold."""
    value = env.get("KUBECONFIG", "").strip()
    if not value:
        return None
    if not any(Path(p).is_file() for p in value.split(os.pathsep) if p):
        return None
    return value


def find_binary(name: str) -> str | None:
    """`kubectl`/`helm` from `make tools` (the version CI has), else the one on $PATH (on a
    real cluster's workstation the user's own is fine)."""
    local = tools.find_tool(name)
    return str(local) if local is not None else shutil.which(name)


def unavailable(env: Mapping[str, str] | None = None) -> str | None:
    """Why the real-cluster mode cannot run here, or None."""
    environ = os.environ if env is None else env
    if kubeconfig_from_env(environ) is None:
        raw = environ.get("KUBECONFIG")
        if not raw:
            return "--real-cluster needs KUBECONFIG set to the kubeconfig of the cluster to test"
        return f"--real-cluster: KUBECONFIG={raw} names no existing file"
    missing = [name for name in tools.CLIENT_TOOLS if find_binary(name) is None]
    if missing:
        return f"--real-cluster needs {' and '.join(missing)} (`make tools` or on PATH)"
    return None


def parse_proxy_banner(text: str) -> tuple[str, int] | None:
    """The (host, port) `kubectl proxy` reported listening on, from its output so far."""
    match = _BANNER.search(text)
    if match is None:
        return None
    return match["host"].strip("[]"), int(match["port"])


def service_proxy_path(namespace: str, service: str, port: int | str, scheme: str = "http") -> str:
    """The API server's proxy path to a Service port (a number or a port name), no trailing
    slash: `/api/v1/namespaces/rl/services/reward:8000/proxy`. `https` upstreams are spelled
    `https:NAME:PORT` (the API server then speaks TLS to the pod)."""
    if scheme not in ("http", "https"):
        raise ValueError(f"the service proxy speaks http or https, not {scheme!r}")
    target = f"{service}:{port}" if scheme == "http" else f"https:{service}:{port}"
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/services/{quote(target, safe=':')}/proxy"


class RealCluster:
    """The cluster of `$KUBECONFIG`, with the methods the e2e tests use on `LocalCluster`.

    with RealCluster() as rc:                     # starts `kubectl proxy` on a loopback port
        rc.kubectl("apply", "-f", "examples/...")
        rc.get("/api/v1/namespaces/rl/pods")      # through the proxy (kubectl's credentials)
        url = rc.service_url("rl", "reward", 8000)  # http://127.0.0.1:P/api/v1/…/proxy
    """

    def __init__(
        self,
        kubeconfig: str | None = None,
        *,
        kubectl: str | None = None,
        helm: str | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        config = kubeconfig or kubeconfig_from_env(os.environ)
        if config is None:
            raise RealClusterError(unavailable() or "no kubeconfig")
        self.kubeconfig = config
        self.kubectl_bin = kubectl or find_binary("kubectl")
        self.helm_bin = helm or find_binary("helm")
        self.start_timeout_s = start_timeout_s
        self.proxy: subprocess.Popen[bytes] | None = None
        self._proxy_address: tuple[str, int] | None = None
        self._workdir: Path | None = None
        self._children: list[subprocess.Popen[Any]] = []

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Starts `kubectl proxy` on a free loopback port (the kernel picks it: `--port=0`) and
        waits until it serves and the API server answers through it."""
        if self.kubectl_bin is None:
            raise RealClusterError("kubectl not found (`make tools` or on PATH)")
        self._workdir = Path(tempfile.mkdtemp(prefix="grm-real-cluster-"))
        log_path = self._workdir / "kubectl-proxy.log"
        with log_path.open("wb") as out:
            self.proxy = subprocess.Popen(
                [self.kubectl_bin, "proxy", "--port=0", "--address=127.0.0.1"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )
        proxy = self.proxy

        def serving() -> tuple[str, int] | None:
            if proxy.poll() is not None:
                raise RealClusterError(
                    f"kubectl proxy exited with {proxy.returncode}: {log_path.read_text(errors='replace')}"
                )
            return parse_proxy_banner(log_path.read_text(errors="replace"))

        try:
            self._proxy_address = self.wait_for(serving, self.start_timeout_s, "kubectl proxy serving", 0.05)
            self.wait_for(lambda: self.api("GET", "/version")[0] == 200, self.start_timeout_s, "/version")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Ends the children started through `popen`, then the proxy; removes the temp dir."""
        for child in [*self._children, *([self.proxy] if self.proxy is not None else [])]:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        self._children.clear()
        self.proxy = None
        self._proxy_address = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # --- where things are --------------------------------------------------------------------
    @property
    def proxy_url(self) -> str:
        """The `kubectl proxy` base URL, e.g. http://127.0.0.1:41857."""
        if self._proxy_address is None:
            raise RealClusterError("the real-cluster handle is not started")
        host, port = self._proxy_address
        return f"http://{host}:{port}"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Our environment with KUBECONFIG (what kubectl, helm and popen'd clients see)."""
        return {**os.environ, "KUBECONFIG": self.kubeconfig, **(extra or {})}

    # --- running things ------------------------------------------------------------------------
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
        """Runs `argv` here with KUBECONFIG set, to completion (text output captured)."""
        result = subprocess.run(
            list(argv),
            env=self.env(env),
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise RealClusterError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr[-2000:]}")
        return result

    def popen(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Starts `argv` with KUBECONFIG set; it is ended by `stop()` if still running."""
        child: subprocess.Popen[Any] = subprocess.Popen(list(argv), env=self.env(env), **kwargs)
        self._children.append(child)
        return child

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl against the cluster."""
        if self.kubectl_bin is None:
            raise RealClusterError("kubectl not found (`make tools` or on PATH)")
        return self.run([self.kubectl_bin, *args], input=input, check=check, timeout_s=timeout_s)

    def helm(
        self, *args: str, check: bool = True, timeout_s: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """The real helm against the cluster."""
        if self.helm_bin is None:
            raise RealClusterError("helm not found (`make tools` or on PATH)")
        return self.run([self.helm_bin, *args], check=check, timeout_s=timeout_s)

    # --- the API and Services, through the proxy -----------------------------------------------
    def api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """One request to the API server through the proxy: (status, decoded JSON or text)."""
        if self._proxy_address is None:
            raise RealClusterError("the real-cluster handle is not started")
        host, port = self._proxy_address
        conn = http.client.HTTPConnection(host, port, timeout=30)
        return json_exchange(conn, method, path, body)

    def get(self, path: str) -> Json:
        status, body = self.api("GET", path)
        if status != 200:
            raise RealClusterError(f"GET {path}: {status} {body}")
        result: Json = body
        return result

    def service_url(
        self, namespace: str, service: str, port: int, scheme: str = "http", *, routed: bool = True
    ) -> str:
        """A URL on this machine for Service `namespace/service` port `port`: the proxy, then the
        API server's service proxy to a ready endpoint. Append the request path to it. With
        `routed` (the default) it first waits until the Service has a ready endpoint
        (`wait_routed`)."""
        if routed:
            self.wait_routed(namespace, service, port)
        return self.proxy_url + service_proxy_path(namespace, service, port, scheme)

    def wait_routed(self, namespace: str, service: str, port: int, timeout_s: float = 60.0) -> set[str]:
        """Waits until the Service's EndpointSlices list a ready endpoint (the API server's service
        proxy picks among those; kube-proxy's rules on the nodes cannot be read from here) and
        returns the ready addresses."""

        def ready() -> set[str] | None:
            slices = self.get(
                f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
                f"?labelSelector=kubernetes.io/service-name={service}"
            )
            addresses = {
                str(address)
                for each in slices["items"]
                for endpoint in each.get("endpoints") or []
                if (endpoint.get("conditions") or {}).get("ready")
                for address in endpoint.get("addresses") or []
            }
            return addresses or None

        result: set[str] = self.wait_for(ready, timeout_s, f"a ready endpoint of {namespace}/{service}", 0.5)
        return result

    def wait_for(
        self, predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2
    ) -> Any:
        """Polls `predicate` until it returns something truthy (returned) or the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise RealClusterError(f"{what}: not within {timeout_s:.0f} s")
            time.sleep(interval_s)
