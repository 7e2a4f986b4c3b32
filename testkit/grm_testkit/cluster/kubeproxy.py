"""The local cluster's Service data path: the real kube-proxy in nftables mode.

`kube-proxy` is built by `make control-plane` from the same `k8s.io/kubernetes` module as the API
server (hack/k8s/cmd/kube-proxy) and runs inside the cluster's network namespace, where it
programs `table ip kube-proxy` (and `ip6 kube-proxy`) with `nft`: a connection to
`ClusterIP:port` is DNATed in the `output` hook to one *ready* endpoint of the Service's
EndpointSlices, chosen per connection (L4), and nothing is retried — exactly what a client sees on
a real node. The namespace has a local route for the Service range (`netns.SERVICE_CIDR`), so the
connect gets as far as the `output` hook instead of failing with "Network is unreachable".

All nodes of the local cluster share one network namespace, so one kube-proxy serves them all
(two would fight over the same table); it runs as the first node (`hostnameOverride`), which
only matters for `internalTrafficPolicy: Local` Services. Settings, each needed on this VM:

* `oomScoreAdj: 0` — upstream's default -999 needs CAP_SYS_RESOURCE, which these VMs drop;
* `conntrack.maxPerCore: 0` and zero TCP timeouts — leave the conntrack sysctls alone (the
  table size is not per namespace and cannot be set from inside one);
* `detectLocalMode: ClusterCIDR` on the cluster's ranges (10.244.0.0/15: its own addresses and
  the pods' 10.245/16) — the supervisor's namespace has no pod interfaces of its own;
* health and metrics on 127.0.0.1 — only the supervisor reads them (`wait_synced`).

In nftables mode kube-proxy *rejects* connections to a ClusterIP on a port no Service defines,
which is why the API server listens outside the Service range (`clusteroptions.API_ADDRESS`).

One concept in one module (the kube-proxy process of the local cluster: its config and its life).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from grm_testkit.cluster import lifetime, tools

log = logging.getLogger(__name__)

BINARY = "kube-proxy"
HEALTHZ_PORT = 10256
METRICS_PORT = 10249
# Debian's nftables (`nft`: knftables runs it) and conntrack (stale UDP flows are flushed with it).
SYSTEM_PROGRAMS = ("nft", "conntrack")
# Where Debian installs them; a root shell has /usr/sbin on PATH, a plain user's often has not.
SBIN_DIRS = ("/usr/sbin", "/sbin")


def missing() -> str | None:
    """Why kube-proxy cannot run here (binary or Debian programs absent), or None."""
    if tools.missing(tools.k8s_bin_dir(), (BINARY,)):
        return f"{BINARY} missing in {tools.k8s_bin_dir()} (run `make control-plane`)"
    absent = [name for name in SYSTEM_PROGRAMS if _which(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (run `make system-deps` as root: nftables, conntrack)"
    return None


def _which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    for directory in path.split(os.pathsep):
        candidate = Path(directory) / name
        if directory and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def routed_endpoints(table: str, namespace: str, service: str, port_name: str) -> set[str]:
    """The endpoint IPs that new connections to a Service port go to, read from `nft list table ip
    kube-proxy` (`table`): the `numgen random mod N vmap { i : goto endpoint-…__<ip>/<port> }` of
    the chain `service-<hash>-<namespace>/<service>/tcp/<port name>`; empty while kube-proxy has
    not written that chain (no endpoint yet: a connection is rejected)."""
    header = f"-{namespace}/{service}/tcp/{port_name} {{"
    ips: set[str] = set()
    inside = False
    for line in table.splitlines():
        stripped = line.strip()
        if stripped.startswith("chain "):
            inside = stripped.startswith("chain service-") and stripped.endswith(header)
        elif inside and stripped == "}":
            inside = False
        elif inside:
            ips.update(re.findall(r"goto endpoint-[^\s,}]*__([0-9.]+)/\d+", stripped))
    return ips


def config(kubeconfig: Path, node_name: str, node_ip: str, cluster_cidr: str) -> dict[str, object]:
    """The KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) of the local cluster."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        # With --config the kubeconfig must be in the file: the --kubeconfig flag is ignored.
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name,
        "bindAddress": node_ip,
        "healthzBindAddress": f"127.0.0.1:{HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{METRICS_PORT}",
        "clusterCIDR": cluster_cidr,
        "detectLocalMode": "ClusterCIDR",
        "oomScoreAdj": 0,
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


class KubeProxy:
    """One kube-proxy process inside the current network namespace, logging to `workdir`."""

    def __init__(
        self, workdir: Path, kubeconfig: Path, node_name: str, node_ip: str, cluster_cidr: str, verbosity: int
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "kube-proxy.yaml"
        self.log_path = workdir / "kube-proxy.log"
        self.config_path.write_text(yaml.safe_dump(config(kubeconfig, node_name, node_ip, cluster_cidr)))
        self.verbosity = verbosity
        self.popen: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Starts kube-proxy; `wait_synced` waits for its first full sync. Start it once the
        Node it runs as exists: kube-proxy waits up to 30 s for that Node (its IPs, podCIDRs)."""
        argv = [str(tools.k8s_bin_dir() / BINARY), f"--config={self.config_path}", f"--v={self.verbosity}"]
        env = {**os.environ, "PATH": os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])}
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=lifetime.die_with_parent,
            )

    async def wait_synced(self, timeout_s: float = 60.0) -> None:
        """Waits until `/healthz` answers 200, which it does only after the rules were written
        once (polled from the supervisor's event loop, which the connect socket shares)."""
        assert self.popen is not None
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(self._healthy):
            if self.popen.poll() is not None:
                raise RuntimeError(f"kube-proxy exited with {self.popen.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-proxy not healthy within {timeout_s:.0f} s:\n{self.tail(60)}")
            await asyncio.sleep(0.1)
        log.info("kube-proxy (nftables) synced (pid %d)", self.popen.pid)

    def _healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{HEALTHZ_PORT}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
