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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grm_testkit.cluster import podspec, tools
from grm_testkit.cluster.kubeclient import Json
from grm_testkit.cluster.nodeagent import NodeConfig

# The API server listens outside the Service range (on the pod range's reserved last /24, like a
# host-network control plane): kube-proxy in nftables mode rejects connections to a ClusterIP on
# a port no Service defines, so 10.96.0.1:6443 would be unreachable once it runs. In-cluster
# clients use the `kubernetes` Service (10.96.0.1:443), which kube-proxy DNATs to this address.
API_ADDRESS = "10.244.255.2"
API_PORT = 6443
PROMETHEUS_ADDRESS = "10.244.255.1"
PROMETHEUS_PORT = 9090
STATE_FILE = "state.json"
NODE_RUNTIMES = ("agent", "kubelet")
CONNECT_SOCKET = "connect.sock"


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
    # What runs pods: "agent" (our node agent: pods as local processes) or "kubelet" (the real
    # kubelet with containerd, runc and CNI: `realnode`).
    node_runtime: str = "agent"

    def __post_init__(self) -> None:
        if self.node_runtime not in NODE_RUNTIMES:
            raise LocalClusterError(f"node_runtime must be one of {NODE_RUNTIMES}, not {self.node_runtime!r}")

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
