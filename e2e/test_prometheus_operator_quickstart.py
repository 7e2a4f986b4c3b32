"""The quickstart's kube-prometheus-stack path, step by step, on the local cluster: the Prometheus
Operator's real CRDs applied, the chart installed with exactly the `--set` flags the quickstart
documents (read from docs/quickstart.md, so the page and the test cannot drift apart), a
GRMDeployment with `metrics.source: Prometheus`, score load, and a ScaleUp decided from metrics
that Prometheus served.

What is real here:
* the CRDs of PodMonitor, ServiceMonitor and PrometheusRule: upstream's own manifests at the
  pinned release (`grm_testkit.cluster.promoperator`), applied before `helm install`, so the API
  server serves `monitoring.coreos.com/v1` with upstream's OpenAPI schema;
* the chart's rendering: its ServiceMonitor and PrometheusRule exist only because that API is
  served (`.Capabilities.APIVersions`), with the documented `release` label;
* the operator's PodMonitor per GRMDeployment (created only because the CRD is served when the
  operator starts), with the documented `release` label, accepted by the API server; the chart's
  and the operator's objects are also re-submitted with strict field validation (server-side
  dry run), which rejects any field the schema does not know — the API server would otherwise
  prune such a field silently;
* the autoscaler reading worker metrics from Prometheus through the chart's `prometheus.url`.

What is not: the Prometheus Operator itself (no binary or image of it is built here), so nothing
turns the PodMonitor into scrape configuration. The local cluster's Prometheus finds the worker
pods with its own Kubernetes SD job, whose relabelling
(examples/prometheus/grm-workers-scrape.yaml) yields the labels the PodMonitor's
`podTargetLabels` would: `namespace`, `pod`, `grm_dev_deployment`, `grm_dev_variant`. Whether a
real Prometheus Operator's selector matches the labels is the Prometheus Operator's logic, not
tested here; that the labels are on the objects is.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_testkit.cluster import promoperator
from grm_testkit.cluster.clusteroptions import PROMETHEUS_ADDRESS, PROMETHEUS_PORT
from grm_testkit.cluster.localcluster import LocalCluster
from grm_testkit.traffic import LoadGenerator, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.prometheus]

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "docs" / "quickstart.md"
OPERATOR_NAMESPACE = "grm-system"
RELEASE = "grm"
# The quickstart's namespace and GRMDeployment name (steps 2 and 3).
NS = "rl"
NAME = "reward"
VARIANT = "bf16"
STACK_LABEL = ("release", "kube-prometheus-stack")
GRMD_PATH = f"/apis/grm.dev/v1alpha1/namespaces/{NS}/grmdeployments/{NAME}"
MONITORING = "/apis/monitoring.coreos.com/v1"
# As in test_prometheus_outage.py: 2.5 score requests/s (10 sequences/s at 4 samples) is more than
# the policy lets one bf16 replica of the sim engine carry, so it scales out to a second one.
LOAD_RPS = 2.5


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def quickstart_sets() -> list[str]:
    """The `--set` arguments of the quickstart's kube-prometheus-stack `helm install`."""
    blocks = re.findall(r"```bash\n(.*?)```", QUICKSTART.read_text(), flags=re.S)
    block = next(b for b in blocks if "podMonitorLabels.release" in b and "helm install" in b)
    return re.findall(r"--set (\S+)", block)


def _chart_values() -> tuple[str, ...]:
    """The quickstart's flags, less its `prometheus.url` (the stack's Service): the fixture sets
    the local cluster's Prometheus there, as the quickstart says to set yours."""
    sets = [s for s in quickstart_sets() if not s.startswith("prometheus.url=")]
    return tuple(arg for each in sets for arg in ("--set", each))


def _apply_crds(cluster: LocalCluster) -> None:
    files = promoperator.crd_files()
    for path in files:
        # Server-side: the CRDs exceed the 256 KiB last-applied annotation of a client-side apply.
        cluster.kubectl("apply", "--server-side", "-f", "-", input=path.read_text())
    names = [f"crd/{plural}.monitoring.coreos.com" for plural in promoperator.PLURALS]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


@pytest.fixture(scope="module")
def lc(operator_cluster: Callable[..., AbstractContextManager[LocalCluster]]) -> Iterator[LocalCluster]:
    why = promoperator.unavailable()
    if why is not None:
        _skip_or_fail(why)
    with operator_cluster(chart_values=_chart_values(), before_install=_apply_crds) as cluster:
        if cluster.prometheus_url is None:
            _skip_or_fail("prometheus with Kubernetes SD not built (make control-plane): no Prometheus here")
        yield cluster


def _manifest() -> dict[str, Any]:
    """The quickstart's GRMDeployment `reward` in `rl`, with the sim engine of
    examples/grmd-live-demo.yaml (GPUs the local node fakes, a few req/s fill a replica) and the
    metrics read from Prometheus (the chart's prometheus.url: no prometheusURL of its own). Its
    variant pinned: the only replica change is the policy's scaling, a ScaleUp."""
    doc: dict[str, Any] = copy.deepcopy(
        yaml.safe_load((REPO / "examples" / "grmd-live-demo.yaml").read_text())
    )
    doc["metadata"].update(name=NAME, namespace=NS)
    doc["spec"]["metrics"] = {"source": "Prometheus", "window": "10s"}
    doc["spec"]["precision"].update(policy="Pinned", pinnedVariant=VARIANT)
    return doc


def _condition(resource: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in (resource.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def _history(lc: LocalCluster) -> str:
    resource = lc.get(GRMD_PATH)
    snap = snapshot(resource)
    lines = [f"{snap.replicas_text()} conditions={snap.conditions} observed={snap.observed}"]
    lines.append(f"  MetricsAvailable: {_condition(resource, 'MetricsAvailable')}")
    lines += [f"  {d.get('time')} {d.get('action')}: {d.get('reason')}" for d in snap.decisions]
    return "\n".join(lines)


def _strictly_valid(lc: LocalCluster, doc: dict[str, Any]) -> None:
    """Submits `doc` under another name as a server-side dry run with strict field validation:
    the real CRD's schema rejects a wrong type, a missing required field and an unknown field."""
    doc = copy.deepcopy(doc)
    doc["metadata"] = {
        "name": f"{doc['metadata']['name']}-strict",
        "namespace": doc["metadata"]["namespace"],
        "labels": doc["metadata"].get("labels") or {},
    }

    def submit(body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return lc.kubectl(
            "create",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            "-",
            input=yaml.safe_dump(body),
            check=False,
        )

    result = submit(doc)
    assert result.returncode == 0, f"{doc['kind']} rejected by the real CRD: {result.stderr}"
    # The check can fail: the same object with one field the schema lacks is refused.
    wrong = copy.deepcopy(doc)
    wrong["spec"]["notAField"] = True
    refused = submit(wrong)
    assert refused.returncode != 0 and "notAField" in refused.stderr, (refused.stdout, refused.stderr)


def _within(sent: Any, kept: Any) -> bool:
    """Whether every field of `sent` is in `kept` with the same value (lists item by item)."""
    if isinstance(sent, dict):
        return isinstance(kept, dict) and all(k in kept and _within(v, kept[k]) for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(kept, list) and len(sent) == len(kept) and all(map(_within, sent, kept))
    return bool(sent == kept)


def _rendered_pod_monitor() -> dict[str, Any]:
    """The PodMonitor as `grm-operator render` builds it with the quickstart's podMonitorLabels:
    every field the operator sends, before any pruning by the API server."""
    env = {**os.environ, "GRM_PODMONITOR_LABELS": json.dumps(dict([STACK_LABEL]))}
    out = subprocess.run(
        [sys.executable, "-m", "grm_operator.cli", "render", "-f", "-"],
        input=yaml.safe_dump(_manifest()),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "PodMonitor")


def _prometheus_targets_up(lc: LocalCluster) -> int:
    """Worker targets of the GRMDeployment Prometheus scrapes successfully, by the labels the
    PodMonitor's podTargetLabels would give them."""
    query = f'sum(up{{namespace="{NS}",grm_dev_deployment="{NAME}",grm_dev_variant="{VARIANT}"}})'
    url = (
        lc.url(PROMETHEUS_ADDRESS, PROMETHEUS_PORT)
        + "/api/v1/query?"
        + urllib.parse.urlencode({"query": query})
    )
    with urllib.request.urlopen(url, timeout=5) as resp:
        result = json.load(resp)["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def test_quickstart_documents_the_stack_labels() -> None:
    """The flags this module installs with are the quickstart's, with the release label on all
    three kinds of object (a test of the page, not of the cluster)."""
    sets = quickstart_sets()
    assert "serviceMonitor.enabled=true,prometheusRule.enabled=true" in sets, sets
    for key in ("serviceMonitor.labels", "prometheusRule.labels", "podMonitorLabels"):
        assert f"{key}.{STACK_LABEL[0]}={STACK_LABEL[1]}" in sets, (key, sets)
    assert any(s.startswith("prometheus.url=") for s in sets), sets


def test_quickstart_with_prometheus_operator_crds_scales_up_from_prometheus(lc: LocalCluster) -> None:
    key, value = STACK_LABEL
    # --- step 1: the chart's ServiceMonitor and PrometheusRule, rendered for the served API -----
    for plural in ("servicemonitors", "prometheusrules"):
        items = lc.get(f"{MONITORING}/namespaces/{OPERATOR_NAMESPACE}/{plural}")["items"]
        assert len(items) == 1, (plural, items)
        assert items[0]["metadata"]["labels"].get(key) == value, items[0]["metadata"]
    installed = lc.helm("get", "manifest", RELEASE, "-n", OPERATOR_NAMESPACE).stdout
    chart_monitoring = [
        d for d in yaml.safe_load_all(installed) if d and d.get("apiVersion") == "monitoring.coreos.com/v1"
    ]
    assert sorted(d["kind"] for d in chart_monitoring) == ["PrometheusRule", "ServiceMonitor"]
    for doc in chart_monitoring:
        _strictly_valid(lc, doc)
    rules = lc.get(f"{MONITORING}/namespaces/{OPERATOR_NAMESPACE}/prometheusrules")["items"][0]
    assert any(rule.get("alert") for group in rules["spec"]["groups"] for rule in group["rules"])

    # --- steps 2 and 3: the GRMDeployment, Ready, and its PodMonitor ----------------------------
    lc.kubectl("create", "namespace", NS)
    lc.kubectl("apply", "-f", "-", input=yaml.safe_dump(_manifest()))
    lc.wait_for(
        lambda: snapshot(lc.get(GRMD_PATH)).conditions.get("Ready") == "True", 180, f"{NAME} Ready", 0.5
    )
    pod_monitor = lc.get(f"{MONITORING}/namespaces/{NS}/podmonitors/{NAME}")
    assert pod_monitor["metadata"]["labels"].get(key) == value, pod_monitor["metadata"]
    owner = pod_monitor["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("GRMDeployment", NAME), owner
    endpoints = pod_monitor["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("http", "/metrics")], endpoints
    assert set(pod_monitor["spec"]["podTargetLabels"]) == {"grm.dev/deployment", "grm.dev/variant"}
    # Not pruned: every field the operator sends is what the API server kept (the schema's
    # defaults may add some).
    rendered = _rendered_pod_monitor()
    assert _within(rendered["spec"], pod_monitor["spec"]), (rendered["spec"], pod_monitor["spec"])
    _strictly_valid(lc, rendered)
    # The quickstart's check, as a user types it.
    shown = lc.kubectl("-n", NS, "get", "podmonitor", NAME, "--show-labels").stdout
    assert f"{key}={value}" in shown, shown
    # Its selector picks the worker pods, and they name the port it scrapes.
    selector = ",".join(f"{k}={v}" for k, v in pod_monitor["spec"]["selector"]["matchLabels"].items())
    pods = lc.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={urllib.parse.quote(selector)}")["items"]
    assert pods
    for pod in pods:
        ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports") or []}
        assert "http" in ports, ports

    # --- step 4: load, and a ScaleUp decided from Prometheus' metrics ---------------------------
    load = LoadGenerator(lc.service_url(NS, NAME, 8000) + "/v1/grm/score", lambda t: LOAD_RPS).start()
    try:

        def scaled_up() -> bool:
            resource = lc.get(GRMD_PATH)
            snap = snapshot(resource)
            return (
                _condition(resource, "MetricsAvailable").get("status") == "True"
                and any(d.get("action") == "ScaleUp" for d in snap.decisions)
                and snap.desired.get(VARIANT, 0) >= 2
            )

        lc.wait_for(scaled_up, 240, f"a ScaleUp of {NAME} with MetricsAvailable=True", 1.0)
        resource = lc.get(GRMD_PATH)
        assert _condition(resource, "MetricsAvailable")["reason"] == "MetricsFresh", _history(lc)
        assert float(snapshot(resource).observed.get("rps") or 0) > 0, _history(lc)
        assert _prometheus_targets_up(lc) >= 1, "Prometheus scrapes no worker of the GRMDeployment"

        # The metrics came from Prometheus, at the chart's prometheus.url: with it stopped, the
        # source fails naming that URL (a Direct scrape of the workers would carry on).
        with lc.prometheus_stopped():

            def blind() -> dict[str, Any] | None:
                condition = _condition(lc.get(GRMD_PATH), "MetricsAvailable")
                return condition if condition.get("status") == "False" else None

            condition = lc.wait_for(blind, 60, "MetricsAvailable=False with Prometheus stopped", 0.5)
        assert condition["reason"] == "MetricsSourceFailed", condition
        assert str(lc.prometheus_url) in condition["message"], condition
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_history(lc)}") from exc
    finally:
        outcomes = load.stop()
        lc.kubectl("delete", "grmdeployment", NAME, "-n", NS, "--wait=false", check=False)
    assert outcomes, "no request was sent"
    failed = [o for o in outcomes if not o.ok]
    assert not failed, failed[:5]
