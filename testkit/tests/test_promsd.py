"""The local cluster's Prometheus job: Kubernetes SD against the API server with the relabelling
of examples/prometheus/grm-workers-scrape.yaml. (Debian's `promtool` cannot check it: its package
is built without Kubernetes SD; the cluster's own Prometheus loads it in test_localcluster.py.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from grm_testkit.cluster import promsd
from support.paths import EXAMPLES


def test_relabelling_is_the_documented_one_verbatim() -> None:
    example = yaml.safe_load((EXAMPLES / "prometheus" / "grm-workers-scrape.yaml").read_text())
    (job,) = example["scrape_configs"]
    assert job["relabel_configs"] == promsd.RELABEL_CONFIGS
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]


def test_pod_discovery_against_the_api_server_with_a_service_account_token(tmp_path: Path) -> None:
    ca, token = tmp_path / "ca.crt", tmp_path / "token"
    doc = promsd.config("https://10.244.255.2:6443", ca, token, 2.0)
    (job,) = doc["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [
        {
            "role": "pod",
            "api_server": "https://10.244.255.2:6443",
            "tls_config": {"ca_file": str(ca)},
            "authorization": {"credentials_file": str(token)},
        }
    ]
    assert job["relabel_configs"] == promsd.RELABEL_CONFIGS
    role, binding = promsd.rbac_objects()
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    namespace, name = promsd.SERVICE_ACCOUNT
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": namespace, "name": name}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
