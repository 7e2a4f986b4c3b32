"""PromQL of the chart: the PrometheusRule's alerts and the Grafana dashboard's queries.

* `promtool check rules` on the rendered PrometheusRule, and `promtool test rules` with
  tests/fixtures/prometheusrule-tests.yaml (each alert fires after its window, not before);
* the alerts fire on the series the operator really exports: a GRMDeployment body goes through
  grm_operator.telemetry.deployment_metrics.FleetMetrics, its exposition becomes promtool's input series;
* every dashboard query parses (promtool check rules, as recording rules, with Grafana's
  variables substituted) and names only metrics that exist: the operator's own, or vLLM's
  (tests/fixtures/vllm-0.32-metrics.txt, scraped from a real vLLM 0.32).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from grm_operator.telemetry import deployment_metrics as telemetry
from grm_operator.telemetry.operator_metrics import OperatorMetrics
from grm_worker import gpu
from grm_worker.contract.config import WorkerConfig
from grm_worker.front_metrics import FrontMetrics
from support.helmchart import CHART, PROMETHEUS_OPERATOR_API, REPO, by_kind, promtool, render

FIXTURES = REPO / "tests" / "fixtures"
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$namespace": ".*",
    "$grmdeployment": ".*",
}


ALERT_NAMES = (
    "GRMDeploymentSLOBreached",
    "GRMDeploymentSLOBudgetBurn",
    "GRMDeploymentSwitchStuck",
    "GRMDeploymentMetricsMissing",
    "GRMDeploymentDegraded",
    "GRMDeploymentQualityFloorNotMet",
    "GRMVariantDemoted",
    "GRMDeploymentAtMaxGPUsWithPendingPods",
    "GRMScoreErrorRateHigh",
    "GRMShedShareHigh",
    "GRMOperatorAbsent",
)


def _rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    docs = render(
        {"prometheusRule": {"enabled": True, **(values or {})}}, api_versions=[PROMETHEUS_OPERATOR_API]
    )
    (rule,) = by_kind(docs, "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _promtool(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "files" / "dashboard.json").read_text())
    return data


def _dashboard_queries() -> list[str]:
    dash = _dashboard()
    queries = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return queries


def _substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    # label_values(metric, label) is Grafana's, not PromQL: check its selector.
    match = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr)
    return match[1] if match else expr


def _without_runbooks(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # promtool compares every annotation; runbook URLs are checked by a test of their own.
    for group in groups:
        for rule in group["rules"]:
            rule["annotations"].pop("runbook_url")
    return groups


def _known_metric_names() -> set[str]:
    names = {n for n in telemetry.METRIC_NAMES}
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    # The workers' front (grm_score_*, grm_engine_queue, ...), as its own registry exports them.
    worker = FrontMetrics(WorkerConfig()).registry
    names |= {s.name for family in worker.collect() for s in family.samples}
    # The workers' NVML gauges (exported only where a GPU is visible, so named, not collected).
    names |= {gpu.GPU_UTIL, gpu.GPU_MEMORY_USED, gpu.GPU_MEMORY_FREE}
    for family in registry.collect():
        # A labelled counter exports no sample before its first inc(): name its series from the type.
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    vllm_text = (FIXTURES / "vllm-0.32-metrics.txt").read_text()
    names |= set(re.findall(r"^(vllm:[a-zA-Z0-9_:]+?)(?:\{| )", vllm_text, flags=re.M))
    return names


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": _rule_groups()}))
    # One rule per alert, two for the budget burn (fast and slow windows).
    assert "SUCCESS: 12 rules found" in _promtool("check", "rules", "rules.yaml", cwd=tmp_path)


def test_alerts_fire_after_their_windows(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": _without_runbooks(_rule_groups())}))
    shutil.copy(FIXTURES / "prometheusrule-tests.yaml", tmp_path / "tests.yaml")
    _promtool("test", "rules", "tests.yaml", cwd=tmp_path)


def test_alert_windows_follow_the_values() -> None:
    values = {
        "alertLabels": {"team": "ml"},
        "alerts": {
            "GRMDeploymentSLOBreached": {"enabled": True, "for": "30m", "severity": "critical"},
            "GRMScoreErrorRateHigh": {"enabled": True, "for": "10m", "severity": "warning", "ratio": 0.2},
        },
    }
    (group,) = _rule_groups(values)
    slo = next(r for r in group["rules"] if r["alert"] == "GRMDeploymentSLOBreached")
    assert slo["for"] == "30m" and slo["labels"]["severity"] == "critical"
    errors = next(r for r in group["rules"] if r["alert"] == "GRMScoreErrorRateHigh")
    assert errors["expr"].endswith("> 0.2")
    assert all(r["labels"]["team"] == "ml" for r in group["rules"])


def test_every_alert_can_be_turned_off_alone() -> None:
    (defaults,) = _rule_groups()
    assert sorted({r["alert"] for r in defaults["rules"]}) == sorted(ALERT_NAMES)
    for name in ALERT_NAMES:
        (group,) = _rule_groups({"alerts": {name: {"enabled": False}}})
        assert {r["alert"] for r in group["rules"]} == set(ALERT_NAMES) - {name}, name


def _github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped,
    spaces to hyphens)."""
    anchors = set()
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)  # "# comment" in code is no heading
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_links_its_runbook_section() -> None:
    anchors = _github_anchors((REPO / "docs" / "operations.md").read_text())
    base = "https://github.com/grm-elastic/grm-elastic/blob/main/docs/operations.md#"
    for rule in _rule_groups()[0]["rules"]:
        url = rule["annotations"]["runbook_url"]
        assert url == base + rule["alert"].lower(), url
        assert url.removeprefix(base) in anchors, f"docs/operations.md has no section for {rule['alert']}"
    (group,) = _rule_groups({"runbookBaseURL": "https://wiki.example.com/grm/"})
    assert group["rules"][0]["annotations"]["runbook_url"].startswith("https://wiki.example.com/grm#")


def test_operations_md_links_within_itself_resolve() -> None:
    # The runbooks and the real-cluster checklist link each other's sections.
    text = (REPO / "docs" / "operations.md").read_text()
    anchors = _github_anchors(text)
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert {"real-cluster-checklist", "grmdeploymentatmaxgpuswithpendingpods", "upgrading"} <= links
    assert links <= anchors, sorted(links - anchors)


def test_anchor_check_can_fail() -> None:
    assert _github_anchors("## GRMShedShareHigh\n### Who may create GRMDeployments?\n") == {
        "grmshedsharehigh",
        "who-may-create-grmdeployments",
    }
    assert "grmoperatorabsent" not in _github_anchors("## GRMOperatorAbsentX\n")
    assert _github_anchors("```bash\n# GRMOperatorAbsent\n```\n") == set()


def test_alerts_fire_on_what_the_operator_exports(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    fleet = telemetry.FleetMetrics(registry, clock=lambda: 0.0)
    fleet.observe(
        {
            "metadata": {"namespace": "rl", "name": "reward"},
            "spec": {
                "variants": [{"name": "bf16", "gpusPerReplica": 2}],
                "slo": {"ttftP95": "500ms"},
                "scaling": {"maxReplicas": 4, "maxGPUs": 8},
            },
            "status": {
                # 4 pods × 2 GPUs = maxGPUs, one of them not Ready.
                "variants": [{"name": "bf16", "replicas": 4, "readyReplicas": 3, "desiredReplicas": 4}],
                "conditions": [
                    {"type": "SLOMet", "status": "False", "reason": "SLOMissed"},
                    {"type": "MetricsAvailable", "status": "True", "reason": "Observed"},
                ],
                "switch": {"from": "bf16", "to": "fp8", "phase": "Surging"},
            },
        }
    )
    text = generate_latest(registry).decode()
    # Two operator replicas (HA) export the same series, told apart by the scrape's instance
    # label: every alert must still fire once per GRMDeployment.
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for instance in ("operator-0", "operator-1"):
                labels = ",".join(
                    f'{k}="{v}"' for k, v in sorted({**sample.labels, "instance": instance}.items())
                )
                values[f"{sample.name}{{{labels}}}"] = sample.value
    input_series = [
        {"series": name, "values": f"{value:g}x30"}
        for name, value in values.items()
        if name.startswith(("grm_operator_condition", "grm_operator_switch", "grm_operator_grmdeployments"))
        or name.startswith(("grm_operator_variant", "grm_operator_max_gpus"))
    ]
    reward = {"severity": "warning", "namespace": "rl", "grmdeployment": "reward"}
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "alert_rule_test": [
                    {"eval_time": "25m", "alertname": name, "exp_alerts": [{"exp_labels": labels}]}
                    for name, labels in [
                        ("GRMDeploymentSLOBreached", {**reward, "condition": "SLOMet"}),
                        ("GRMDeploymentSwitchStuck", reward),
                        ("GRMDeploymentAtMaxGPUsWithPendingPods", reward),
                    ]
                ]
                + [{"eval_time": "25m", "alertname": "GRMDeploymentMetricsMissing", "exp_alerts": []}]
                + [{"eval_time": "25m", "alertname": "GRMOperatorAbsent", "exp_alerts": []}],
            }
        ],
    }
    # promtool compares annotations too; drop them for this label-level check.
    groups = _rule_groups()
    for rule in groups[0]["rules"]:
        rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    _promtool("test", "rules", "tests.yaml", cwd=tmp_path)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    queries = _dashboard_queries()
    rules = [{"record": f"dashboard:query_{i}", "expr": _substitute(q)} for i, q in enumerate(queries)]
    (tmp_path / "dashboard-rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]})
    )
    out = _promtool("check", "rules", "dashboard-rules.yaml", cwd=tmp_path)
    assert f"SUCCESS: {len(queries)} rules found" in out


def test_query_check_rejects_bad_promql(tmp_path: Path) -> None:
    # The parse check above can fail: an unbalanced query is an error.
    bad = [{"record": "dashboard:bad", "expr": "sum by (variant (grm_operator_variant_gpus)"}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": bad}]}))
    proc = subprocess.run(
        [promtool(), "check", "rules", "bad.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0


def test_queries_name_only_exported_metrics() -> None:
    known = _known_metric_names()
    exprs = _dashboard_queries() + [r["expr"] for g in _rule_groups() for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\b(grm_(?!dev_)[a-z_]+|vllm:[a-zA-Z0-9_:]+)", e)}
    unknown = {m for m in used if m not in known}
    assert not unknown, f"queries use metrics nobody exports: {sorted(unknown)}"
    assert {
        "grm_operator_condition",
        "grm_operator_gpu_seconds_total",
        "grm_operator_decisions_total",
    } <= used


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    titles = " | ".join(p["title"] for p in _dashboard()["panels"]).lower()
    for needle in (
        "load",
        "replicas per variant",
        "time to first token vs slo",
        "end-to-end",
        "decisions",
        "gpu-seconds",
        "grm score latency",
        "score errors",
        "shed share",
        "kv-cache usage",
        "queue",
    ):
        assert needle in titles, needle
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


_AGGREGATION = re.compile(r"\b(sum|max|min|avg|count)\s+by\s*\([^)]*\)\s*\(")


def _innermost_aggregations(expr: str, metric: str) -> list[str | None]:
    """For each use of ``metric`` in ``expr``: the aggregation operator whose parentheses most
    closely enclose it (None when no aggregation does)."""
    spans = []
    for match in _AGGREGATION.finditer(expr):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            if depth == 0:
                break
        spans.append((match.end(), end, match[1]))
    found: list[str | None] = []
    for use in re.finditer(rf"\b{re.escape(metric)}\b", expr):
        enclosing = [(start, op) for start, end, op in spans if start <= use.start() < end]
        found.append(max(enclosing)[1] if enclosing else None)
    return found


def _ha_violations(queries: list[str]) -> list[str]:
    """Uses of per-GRMDeployment operator series not deduplicated with max/min by: every
    operator replica exports them, so a sum (or no aggregation) counts each replica."""
    return [
        f"{metric} in {expr}"
        for expr in queries
        for metric in telemetry.METRIC_NAMES
        for op in _innermost_aggregations(expr, metric)
        if op not in ("max", "min")
    ]


def test_dashboard_never_adds_up_operator_replicas() -> None:
    queries = [t["expr"] for p in _dashboard()["panels"] for t in p["targets"]]
    assert not _ha_violations(queries)


def test_replica_check_can_fail() -> None:
    old = "sum by (namespace, grmdeployment, variant) (increase(grm_operator_gpu_seconds_total[1h]))"
    assert _ha_violations([old, "grm_operator_condition", "max by (a) (grm_operator_condition)"]) == [
        f"grm_operator_gpu_seconds_total in {old}",
        "grm_operator_condition in grm_operator_condition",
    ]


def test_dashboard_filters_by_grmdeployment() -> None:
    """Every panel query selects the chosen GRMDeployments: the operator's series by
    `grmdeployment`, the workers' by the scrape label `grm_dev_deployment` (operator-wide
    counters such as decisions carry neither)."""
    variables = {v["name"] for v in _dashboard()["templating"]["list"]}
    assert {"namespace", "grmdeployment"} <= variables
    for panel in _dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            if "grm_operator_decisions_total" in expr:
                continue
            for selector in re.findall(r"(?:\bgrm_(?!dev_)|vllm:)[a-zA-Z0-9_:]+(\{[^}]*\})?", expr):
                assert 'deployment=~"$grmdeployment"' in selector, f"{panel['title']}: {expr}"
                assert 'namespace=~"$namespace"' in selector, f"{panel['title']}: {expr}"


def test_dashboard_configmap_holds_the_file() -> None:
    (cm,) = by_kind(render(), "ConfigMap")
    assert json.loads(cm["data"]["grm-elastic.json"]) == _dashboard()
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize("name", sorted(telemetry.METRIC_NAMES))
def test_every_fleet_metric_is_documented(name: str) -> None:
    assert name in (REPO / "docs" / "operations.md").read_text()
