"""GRM serving end to end on the local cluster: the operator installed with its Helm chart (its own
ServiceAccount and the chart's RBAC, running `grm-operator run` on the node agent) drives sim-engine
workers of a GRMDeployment from examples/, and clients reach them through the Service front.

One cluster (4 GPUs) serves the module; each scenario applies its own GRMDeployment (a copy of
examples/grmd-sim-demo.yaml under another name) and deletes it at the end, so the GPU budget is free
for the next. Every scenario counts its client requests and asserts on them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grm_operator.cluster.localcluster import LocalCluster
from grm_operator.cluster.traffic import Outcome, post_json, snapshot

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
NS = "default"
GRMD_PATH = "/apis/grm.dev/v1alpha1/namespaces/default/grmdeployments"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def lc() -> Iterator[LocalCluster]:
    from grm_operator.cluster import tools

    why = LocalCluster.unavailable()
    if why is not None:
        _skip_or_fail(why)
    if tools.kubectl() is None or tools.helm() is None:
        _skip_or_fail(f"kubectl/helm not installed in {tools.tools_bin_dir()} (run `make tools`)")
    with LocalCluster(gpus=4, scrape_interval_s=1.0) as cluster:
        cluster.helm(
            "install", "grm", str(REPO / "helm" / "grm-operator"), "-n", "grm-system", "--create-namespace"
        )
        cluster.wait_for(lambda: _operator_pod(cluster), 120, "the operator pod Ready")
        yield cluster


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _operator_pod(lc: LocalCluster) -> dict[str, Any] | None:
    pods = lc.get("/api/v1/namespaces/grm-system/pods")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return live[0] if len(live) == 1 and _ready(live[0]) else None


def _demo_manifest(name: str, edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples" / "grmd-sim-demo.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = name
    if edit is not None:
        edit(doc)
    return doc


def _apply(lc: LocalCluster, doc: dict[str, Any]) -> None:
    lc.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))


def _grmd(lc: LocalCluster, name: str) -> dict[str, Any]:
    return lc.get(f"{GRMD_PATH}/{name}")


def _condition(resource: dict[str, Any], kind: str) -> str | None:
    return snapshot(resource).conditions.get(kind)


def _worker_pods(lc: LocalCluster, name: str, variant: str | None = None) -> list[dict[str, Any]]:
    selector = f"grm.dev/deployment={name}" + (f",grm.dev/variant={variant}" if variant else "")
    return list(lc.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={selector}")["items"])


def _delete(lc: LocalCluster, name: str) -> None:
    lc.kubectl("delete", "grmdeployment", name, "--wait=false", check=False)
    lc.wait_for(lambda: not _worker_pods(lc, name), 120, f"the pods of {name} gone")


@pytest.fixture
def grmd(lc: LocalCluster) -> Iterator[Callable[..., str]]:
    """Applies a demo GRMDeployment (name, optional edit of the manifest) and deletes every one it
    applied after the test, waiting for their pods to go so the next test has the GPUs."""
    applied: list[str] = []

    def apply(name: str, edit: Callable[[dict[str, Any]], None] | None = None) -> str:
        _apply(lc, _demo_manifest(name, edit))
        applied.append(name)
        return name

    yield apply
    for name in applied:
        _delete(lc, name)


def _wait_ready(lc: LocalCluster, name: str, timeout_s: float = 180) -> None:
    lc.wait_for(lambda: _condition(_grmd(lc, name), "Ready") == "True", timeout_s, f"{name} Ready", 0.5)


def _failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


def test_apply_pods_ready_service_answers_score_and_chat(lc: LocalCluster, grmd: Callable[..., str]) -> None:
    name = grmd("e2e-apply")
    _wait_ready(lc, name)
    pods = _worker_pods(lc, name)
    assert pods and all(_ready(p) for p in pods)
    url = lc.service_url(NS, name, 8000)
    answers = [
        post_json(
            f"{url}/v1/grm/score",
            {"query": "2+2?", "responses": ["4", "5"], "seed": i},
        )
        for i in range(5)
    ]
    assert [status for status, _ in answers] == [200] * 5, answers
    for _, body in answers:
        assert len(body["scores"]) == 2 and body["samples_used"] >= 1
    status, chat = post_json(
        f"{url}/v1/chat/completions",
        {
            "model": "deepseek-ai/DeepSeek-GRM-27B",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
        },
    )
    assert status == 200, chat
    assert chat["choices"][0]["message"]["content"]
