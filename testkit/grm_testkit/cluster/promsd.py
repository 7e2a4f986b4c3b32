"""Prometheus in the local cluster: Debian's `prometheus` binary as a plain subprocess, scraping
the worker pods it finds through file-based service discovery.

The supervisor watches Pods and rewrites one `file_sd` JSON file whenever the set of running pods
changes (Prometheus re-reads it on change). Each target carries the `__meta_kubernetes_*` labels
Kubernetes service discovery (`role: pod`) would give it — one target per container port — so
the scrape job uses *exactly* the relabelling of `examples/prometheus/grm-workers-scrape.yaml`
(a unit test compares them): the metrics source reads `namespace`, `pod`, `grm_dev_deployment`
and `grm_dev_variant` as it would in a real cluster (docs/metrics.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

JOB = "grm-workers"

# The relabelling of examples/prometheus/grm-workers-scrape.yaml, verbatim.
RELABEL_CONFIGS: list[dict[str, Any]] = [
    {"source_labels": ["__meta_kubernetes_pod_label_grm_dev_deployment"], "regex": ".+", "action": "keep"},
    {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "http", "action": "keep"},
    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(grm_dev_deployment|grm_dev_variant)"},
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
]


def binary() -> str | None:
    """The prometheus binary ($GRM_PROMETHEUS_BIN, else on $PATH), or None."""
    return os.environ.get("GRM_PROMETHEUS_BIN") or shutil.which("prometheus")


def _label_name(key: str) -> str:
    """A Kubernetes label key as Prometheus' SD spells it: `grm.dev/variant` → `grm_dev_variant`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def targets(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups for every running pod with an IP: one per container port."""
    groups: list[dict[str, Any]] = []
    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        if not ip or status.get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
            continue
        meta = pod["metadata"]
        base = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_node_name": (pod.get("spec") or {}).get("nodeName", ""),
        }
        for key, value in (meta.get("labels") or {}).items():
            base[f"__meta_kubernetes_pod_label_{_label_name(key)}"] = value
            base[f"__meta_kubernetes_pod_labelpresent_{_label_name(key)}"] = "true"
        for container in (pod.get("spec") or {}).get("containers") or []:
            for port in container.get("ports") or []:
                labels = dict(base)
                labels["__meta_kubernetes_pod_container_name"] = container["name"]
                labels["__meta_kubernetes_pod_container_port_name"] = port.get("name", "")
                labels["__meta_kubernetes_pod_container_port_number"] = str(port["containerPort"])
                groups.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    groups.sort(key=lambda g: g["targets"][0])
    return groups


def config(sd_file: Path, scrape_interval_s: float) -> dict[str, Any]:
    """prometheus.yml: the one worker job over `sd_file`."""
    interval = f"{max(0.1, scrape_interval_s):g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": interval,
                "scrape_timeout": interval if scrape_interval_s < 10 else "10s",
                "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "5s"}],
                "relabel_configs": RELABEL_CONFIGS,
            }
        ],
    }


def write_config(path: Path, sd_file: Path, scrape_interval_s: float) -> None:
    path.write_text(yaml.safe_dump(config(sd_file, scrape_interval_s), sort_keys=False))


def write_targets(sd_file: Path, groups: list[dict[str, Any]]) -> bool:
    """Atomically replaces the SD file when its content changes; True when it did."""
    text = json.dumps(groups, indent=1, sort_keys=True)
    if sd_file.exists() and sd_file.read_text() == text:
        return False
    tmp = sd_file.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(sd_file)
    return True


def argv(binary_path: str, config_path: Path, data_dir: Path, listen: str) -> list[str]:
    return [
        binary_path,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]
