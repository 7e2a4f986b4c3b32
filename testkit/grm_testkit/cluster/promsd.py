"""Prometheus in the local cluster: Debian's `prometheus` binary as a plain subprocess, finding
the worker pods as it does in any cluster — `kubernetes_sd_configs` (`role: pod`) against the API
server, authenticated by a bound token of its own ServiceAccount (`kube-system/prometheus`) that a
ClusterRole lets list and watch pods.

Kubernetes SD gives each container port a target with the `__meta_kubernetes_*` labels, and the
scrape job uses *exactly* the relabelling of `examples/prometheus/grm-workers-scrape.yaml`
(testkit/tests/test_promsd.py compares them): the metrics source reads `namespace`, `pod`,
`grm_dev_deployment` and `grm_dev_variant` as it would in a real cluster (docs/metrics.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from grm_testkit.cluster import tools

JOB = "grm-workers"

# The relabelling of examples/prometheus/grm-workers-scrape.yaml, verbatim.
RELABEL_CONFIGS: list[dict[str, Any]] = [
    {"source_labels": ["__meta_kubernetes_pod_label_grm_dev_deployment"], "regex": ".+", "action": "keep"},
    {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "http", "action": "keep"},
    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(grm_dev_deployment|grm_dev_variant)"},
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
]


HOW_TO_GET = "run `make control-plane`; Debian's prometheus is built without Kubernetes SD"


def binary() -> str | None:
    """The prometheus binary: $GRM_PROMETHEUS_BIN, else the one `make control-plane` builds from
    upstream's module with Kubernetes SD (hack/build-control-plane.sh), or None. Never Debian's:
    its package leaves Kubernetes SD out ("field kubernetes_sd_configs not found")."""
    env = os.environ.get("GRM_PROMETHEUS_BIN")
    if env:
        return env
    path = tools.k8s_bin_dir() / "prometheus"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


# What Prometheus' Kubernetes SD (`role: pod`) reads: a ClusterRole of these verbs only, bound
# to its ServiceAccount, as the prometheus-community chart's server role grants for pods.
SERVICE_ACCOUNT = ("kube-system", "prometheus")
CLUSTER_ROLE = "grm-local-prometheus"
# The token is bound to the ServiceAccount and valid for the cluster's life: a local cluster
# runs for a test session or a demo (hours), so 7 days never runs out.
TOKEN_EXPIRATION_S = 7 * 24 * 3600


def rbac_objects() -> list[dict[str, Any]]:
    """The ClusterRole and ClusterRoleBinding Prometheus' pod discovery needs (list and watch
    pods in every namespace), for the ServiceAccount `SERVICE_ACCOUNT`."""
    namespace, name = SERVICE_ACCOUNT
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": CLUSTER_ROLE},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CLUSTER_ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "namespace": namespace, "name": name}],
        },
    ]


def config(api_url: str, ca_file: Path, token_file: Path, scrape_interval_s: float) -> dict[str, Any]:
    """prometheus.yml: the one worker job, its targets from Kubernetes SD (`role: pod`) against
    the API server at `api_url`, authenticated by the ServiceAccount token in `token_file`."""
    interval = f"{max(0.1, scrape_interval_s):g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": interval,
                "scrape_timeout": interval if scrape_interval_s < 10 else "10s",
                "kubernetes_sd_configs": [
                    {
                        "role": "pod",
                        "api_server": api_url,
                        "tls_config": {"ca_file": str(ca_file)},
                        "authorization": {"credentials_file": str(token_file)},
                    }
                ],
                "relabel_configs": RELABEL_CONFIGS,
            }
        ],
    }


def write_config(path: Path, api_url: str, ca_file: Path, token_file: Path, scrape_interval_s: float) -> None:
    path.write_text(yaml.safe_dump(config(api_url, ca_file, token_file, scrape_interval_s), sort_keys=False))


def argv(binary_path: str, config_path: Path, data_dir: Path, listen: str) -> list[str]:
    return [
        binary_path,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
