"""The report's in-cluster outputs against a real API server (etcd + kube-apiserver): the ConfigMap
with the latest report, the `Recommendations` condition and its Event, through the same
credentials path as `grm-operator report` (`$KUBECONFIG`, kopf's login)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from grm_operator.report.cli import CONDITION, _publish
from grm_testkit import operator_process
from grm_testkit.cluster.controlplane import ControlPlane
from support.report_prometheus import NAME, SPEC, fake_report

pytestmark = pytest.mark.controlplane


def _condition(plane: ControlPlane, ns: str) -> dict[str, Any]:
    status, body = plane.request("GET", f"/apis/grm.dev/v1alpha1/namespaces/{ns}/grmdeployments/{NAME}")
    assert status == 200, body
    return next(c for c in body["status"]["conditions"] if c["type"] == CONDITION)


def test_configmap_condition_and_event(
    control_plane: ControlPlane, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = control_plane
    operator_process.install_crd(plane)
    body = {
        "apiVersion": "grm.dev/v1alpha1",
        "kind": "GRMDeployment",
        "metadata": {"name": NAME},
        "spec": SPEC,
    }
    status, created = plane.request(
        "POST", f"/apis/grm.dev/v1alpha1/namespaces/{namespace}/grmdeployments", body
    )
    assert status == 201, created
    # A condition of the operator's own, which the report must keep.
    path = f"/apis/grm.dev/v1alpha1/namespaces/{namespace}/grmdeployments/{NAME}/status"
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "ReplicasReady",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    created["status"] = {"conditions": [ready]}
    status, stored = plane.request("PUT", path, created)
    assert status == 200, stored

    resource = {"metadata": {"namespace": namespace, "name": NAME}, "spec": SPEC}
    report = fake_report(resource)
    assert report.recommendations
    saved = report.recommendations[0].gpu_hours_saved
    doc = {"gpu_hours": report.usage.gpu_hours}
    monkeypatch.setenv("KUBECONFIG", str(plane.kubeconfig))

    asyncio.run(_publish(namespace, "grm-report", saved / 2, [(report, doc)]))
    status, cm = plane.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/grm-report")
    assert status == 200, cm
    assert "## Recommendations" in cm["data"]["report.md"]
    assert json.loads(cm["data"]["report.json"]) == doc
    condition = _condition(plane, namespace)
    assert condition["status"] == "True" and condition["reason"] == "ChangeWouldSave", condition
    assert report.recommendations[0].outcome.scenario.title in condition["message"]
    assert "ConfigMap grm-report" in condition["message"]
    status, events = plane.request("GET", f"/api/v1/namespaces/{namespace}/events")
    recommendations = [e for e in events["items"] if e["reason"] == CONDITION]
    assert len(recommendations) == 1 and recommendations[0]["involvedObject"]["name"] == NAME
    # The operator's own condition is kept.
    status, body = plane.request(
        "GET", f"/apis/grm.dev/v1alpha1/namespaces/{namespace}/grmdeployments/{NAME}"
    )
    assert [c["type"] for c in body["status"]["conditions"]] == ["Ready", CONDITION]

    # Again with the same result: the ConfigMap is updated in place, no second Event.
    asyncio.run(_publish(namespace, "grm-report", saved / 2, [(report, {"gpu_hours": 1.0})]))
    status, cm = plane.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/grm-report")
    assert json.loads(cm["data"]["report.json"]) == {"gpu_hours": 1.0}
    status, events = plane.request("GET", f"/api/v1/namespaces/{namespace}/events")
    assert len([e for e in events["items"] if e["reason"] == CONDITION]) == 1

    # A threshold above the best saving: False, NothingToChange.
    asyncio.run(_publish(namespace, "grm-report", saved * 2, [(report, doc)]))
    condition = _condition(plane, namespace)
    assert condition["status"] == "False" and condition["reason"] == "NothingToChange", condition
