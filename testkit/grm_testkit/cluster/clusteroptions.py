"""A local cluster's options and fixed layout — its addresses inside the network namespace and
the files of its state directory — shared by the supervisor that runs it (`supervisor`) and the
handles that start it or attach to it (`localcluster.LocalCluster`, `grm-local-cluster`).

The state directory holds `options.json` (the `ClusterOptions`, written before the supervisor
starts), `state.json` (supervisor PID, kubeconfig, URLs; written once the cluster is ready and
removed when it stops), the admin `kubeconfig` (server https://10.244.255.2:6443), `connect.sock`
and `supervisor.log`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grm_testkit.cluster import tools
from grm_testkit.cluster.kubeclient import Json

# The API server listens outside the Service range (on the pod range's reserved last /24, like a
# host-network control plane): kube-proxy in nftables mode rejects connections to a ClusterIP on
# a port no Service defines, so 10.96.0.1:6443 would be unreachable once it runs. In-cluster
# clients use the `kubernetes` Service (10.96.0.1:443), which kube-proxy DNATs to this address.
API_ADDRESS = "10.244.255.2"
API_PORT = 6443
PROMETHEUS_ADDRESS = "10.244.255.1"
PROMETHEUS_PORT = 9090
STATE_FILE = "state.json"
CONNECT_SOCKET = "connect.sock"


class LocalClusterError(RuntimeError):
    """The local cluster failed to start, or an operation on it failed."""


@dataclass(frozen=True)
class NodeConfig:
    """One node of the local cluster: the real kubelet with containerd (`realnode.RealNode`; its
    pods on 10.245.<index>.0/24)."""

    name: str
    index: int
    gpus: int

    @property
    def node_ip(self) -> str:
        """The node's InternalIP (its kubelet API), 10.244.<index>.1 on the namespace's `lo`:
        the API server dials it for `kubectl logs` and exec."""
        return f"10.244.{self.index}.1"


@dataclass(frozen=True)
class ClusterOptions:
    """How big the local cluster is and what it runs (JSON-serialisable: it crosses into the
    supervisor process)."""

    gpus: int = 8
    nodes: int = 1
    # None: start Prometheus when the binary is installed; False: never; True: required.
    prometheus: bool | None = None
    scrape_interval_s: float = 2.0
    verbosity: int = 0
    log_level: str = "INFO"

    def node_configs(self) -> list[NodeConfig]:
        """`gpus` split over `nodes` (the first nodes get the remainder)."""
        per, extra = divmod(self.gpus, max(1, self.nodes))
        return [
            NodeConfig(name=f"local-node-{i}", index=i, gpus=per + (1 if i < extra else 0))
            for i in range(max(1, self.nodes))
        ]


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
