"""The chart's optional report CronJob (values `report`, docs/report.md): off by default; when on,
its arguments are ones `grm-operator report` accepts, and its Role in the reported namespace grants
exactly what the report's client does there."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from grm_operator.report.cli import add_arguments
from support.helmchart import by_kind, render, render_error, triples

ON: dict[str, Any] = {
    "report": {
        "enabled": True,
        "namespace": "rl",
        "name": "reward",
        "candidates": ["name=int4,precision=awq-int4,uri=pvc://models/awq,quality=0.97,gpusPerReplica=1"],
        "extraArgs": ["--cold-start", "90s"],
    },
    "prometheus": {"url": "http://prometheus.monitoring:9090"},
}


def _report_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "report"]


def test_off_by_default() -> None:
    assert not by_kind(render(), "CronJob")
    assert not _report_objects(render())


def test_the_cronjob_runs_the_report_with_arguments_it_accepts() -> None:
    docs = render(ON)
    (cron,) = by_kind(docs, "CronJob")
    assert cron["metadata"]["namespace"] == "grm-system"
    assert cron["spec"]["schedule"] == "17 6 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["grm-operator", "report"]
    assert container["image"] == "ghcr.io/grm-elastic/grm-report:0.1.0"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(container["args"])
    assert args.prometheus == "http://prometheus.monitoring:9090"  # prometheus.url by default
    assert (args.namespace, args.name, args.since, args.step) == ("rl", "reward", "24h", "60s")
    assert args.configmap == "grm-report" and args.notify_threshold == 1.0
    assert args.candidate[0].fields["quality"] == 0.97 and args.cold_start == "90s"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == "grm-grm-operator-report"
    own = render({**ON, "report": {**ON["report"], "prometheusURL": "http://other:9090"}})
    (cron,) = by_kind(own, "CronJob")
    assert (
        "--prometheus=http://other:9090"
        in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_its_role_grants_what_the_report_does_in_the_namespace() -> None:
    docs = render(ON)
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "grm-grm-operator-report"]
    assert role["metadata"]["namespace"] == "rl"
    assert triples(role["rules"]) == {
        ("grm.dev", "grmdeployments", "get"),
        ("grm.dev", "grmdeployments", "list"),
        ("grm.dev", "grmdeployments/status", "get"),
        ("grm.dev", "grmdeployments/status", "patch"),
        ("", "events", "list"),
        ("", "events", "create"),
        ("", "configmaps", "create"),
        ("", "configmaps", "get"),
        ("", "configmaps", "patch"),
    }
    # Reading and updating are limited to the report's own ConfigMap.
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["grm-report"],
            "verbs": ["get", "patch"],
        }
    ]
    (binding,) = [
        b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == "grm-grm-operator-report"
    ]
    assert binding["metadata"]["namespace"] == "rl"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "grm-grm-operator-report", "namespace": "grm-system"}
    ]
    assert not by_kind(_report_objects(docs), "ClusterRole")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"report": {"enabled": True}, "prometheus": {"url": "http://p:9090"}},
            "report.namespace is required",
        ),
        (
            {"report": {"enabled": True, "namespace": "rl"}},
            "report.prometheusURL (or prometheus.url) is required",
        ),
        ({"report": {"enabled": True, "namespace": "rl", "since": "1 day"}}, "/report/since"),
        ({"report": {"enabled": True, "namespace": "rl", "candidates": ["int4"]}}, "/report/candidates/0"),
        ({"report": {"enabled": True, "namespace": "rl", "shedule": "@daily"}}, "shedule"),
    ],
)
def test_bad_values_are_rejected(values: dict[str, Any], message: str) -> None:
    assert message in render_error(values)
