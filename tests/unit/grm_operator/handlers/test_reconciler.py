"""The reconciler's decisions without an API server: an in-memory client records every call.

The integration tests run the same code against kube-apiserver; these pin the rules in
milliseconds: apply what is missing or changed and nothing else, prune only owned variants,
status written once, invalid specs reported without touching children, store ordering by
resourceVersion.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from grm_operator import kubeapi
from grm_operator.control.admintoken import token_of
from grm_operator.control.builders.metadata import Owner
from grm_operator.handlers.admintokens import AdminTokenError
from grm_operator.handlers.reconcile import Reconciler
from grm_operator.handlers.store import Store
from grm_operator.settings import OperatorSettings
from grm_operator.telemetry.operator_metrics import OperatorMetrics
from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
UID = "6f1c0a52-0000-4000-8000-000000000001"


class FakeKube:
    """Just enough of KubeClient: objects by (kind, namespace, name), increasing resourceVersions."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self._rv = itertools.count(100)

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        body["metadata"]["resourceVersion"] = str(next(self._rv))
        body["metadata"].setdefault("uid", f"uid-{body['metadata']['name']}")
        return copy.deepcopy(body)

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        self.calls.append(("apply", manifest["kind"], meta["name"]))
        body = copy.deepcopy(manifest)
        self.objects[(manifest["kind"], meta["namespace"], meta["name"])] = body
        return self._stamp(body)

    async def create(self, kind: kubeapi.Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        self.calls.append(("create", body["kind"], meta["name"]))
        stored = copy.deepcopy(body)
        self.objects[(body["kind"], namespace, meta["name"])] = stored
        return self._stamp(stored)

    async def get(self, kind: kubeapi.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind.kind, name))
        body = self.objects.get((kind.kind, namespace, name))
        return copy.deepcopy(body) if body is not None else None

    async def list(
        self, kind: kubeapi.Kind, namespace: str | None = None, *, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        self.calls.append(("list", kind.kind, label_selector))
        return []

    async def delete(self, kind: kubeapi.Kind, namespace: str, name: str, *, uid: str | None = None) -> bool:
        self.calls.append(("delete", kind.kind, name))
        return self.objects.pop((kind.kind, namespace, name), None) is not None

    async def patch_status(
        self, kind: kubeapi.Kind, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(("status", kind.kind, name))
        body = self.objects[(kind.kind, namespace, name)]
        body.setdefault("status", {}).update(copy.deepcopy(status))
        return self._stamp(body)

    async def post_event(
        self, involved: dict[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> dict[str, Any]:
        self.calls.append(("event", type_, reason))
        return {}

    async def close(self) -> None:
        self.calls.append(("close", "", ""))

    def writes(self) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] not in ("event", "close")]


def grmd_body(generation: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"].update(uid=UID, generation=generation, resourceVersion="1")
    return body


def make(**settings: Any) -> tuple[Reconciler, FakeKube]:
    fake = FakeKube()
    reconciler = Reconciler(
        fake,  # type: ignore[arg-type]
        OperatorSettings(worker_image="w:1", **settings),
        OperatorMetrics(CollectorRegistry()),
        clock=lambda: "2026-01-01T00:00:00Z",
    )
    return reconciler, fake


async def reconcile_body(reconciler: Reconciler, fake: FakeKube, body: dict[str, Any]) -> None:
    fake.objects[("GRMDeployment", "rl", "reward")] = body
    reconciler.store.put_parent(copy.deepcopy(body))
    await reconciler.reconcile(("rl", "reward"))


async def test_first_reconcile_applies_every_child_then_nothing() -> None:
    reconciler, fake = make()
    await reconcile_body(reconciler, fake, grmd_body())
    applied = sorted(name for op, _, name in fake.writes() if op == "apply")
    assert applied == sorted(
        [
            "reward-bf16-config",
            "reward-fp8-config",
            "reward-int4-config",
            "reward-bf16",
            "reward-fp8",
            "reward-int4",
            "reward",  # Service
            "reward-reference",  # Service of the reference variant (shadow scoring)
            "reward",  # PodDisruptionBudget
        ]
    )
    assert [c for c in fake.writes() if c[0] == "status"] == [("status", "GRMDeployment", "reward")]
    # The quality gate (qualityPolicy Measured by default): one evaluation Job per non-reference variant.
    created = sorted(name for op, kind, name in fake.writes() if op == "create" and kind == "Job")
    assert [n.rsplit("-", 1)[0] for n in created] == ["reward-fp8-eval", "reward-int4-eval"]
    assert {reason for op, _, reason in fake.calls if op == "event"} >= {
        "Valid",
        "AsExpected",
        "EvaluationStarted",
    }
    status = fake.objects[("GRMDeployment", "rl", "reward")]["status"]
    assert status["gate"] == "fp8=Evaluating int4=Evaluating"
    fake.calls.clear()
    # Same spec, children in the store (write-through), status unchanged: not a single call.
    await reconciler.reconcile(("rl", "reward"))
    assert fake.calls == []


async def test_changed_spec_applies_only_what_changed() -> None:
    reconciler, fake = make()
    await reconcile_body(reconciler, fake, grmd_body())
    fake.calls.clear()
    body = copy.deepcopy(fake.objects[("GRMDeployment", "rl", "reward")])
    body["metadata"]["generation"] = 2
    body["metadata"]["resourceVersion"] = "9999"
    body["spec"]["variants"][1]["engine"] = {"maxNumSeqs": 32}
    await reconcile_body(reconciler, fake, body)
    assert sorted(name for op, _, name in fake.writes() if op == "apply") == [
        "reward-fp8",
        "reward-fp8-config",
    ]


async def test_removed_variant_is_pruned_but_foreign_objects_are_not() -> None:
    reconciler, fake = make()
    await reconcile_body(reconciler, fake, grmd_body())
    foreign = copy.deepcopy(reconciler.store.child("Deployment", "rl", "reward-int4", "reward"))
    assert foreign is not None
    foreign["metadata"].update(name="reward-old", ownerReferences=[{"uid": "someone-else"}])
    foreign["metadata"]["labels"]["grm.dev/variant"] = "old"
    reconciler.store.put_child(foreign)
    fake.calls.clear()
    body = copy.deepcopy(fake.objects[("GRMDeployment", "rl", "reward")])
    body["metadata"].update(generation=2, resourceVersion="9999")
    body["spec"]["variants"].pop()
    await reconcile_body(reconciler, fake, body)
    deleted = sorted((kind, name) for op, kind, name in fake.writes() if op == "delete")
    # ... and the quality gate's evaluation Job of the removed variant.
    assert [d for d in deleted if d[0] != "Job"] == [
        ("ConfigMap", "reward-int4-config"),
        ("Deployment", "reward-int4"),
    ]
    assert [name.rsplit("-", 1)[0] for kind, name in deleted if kind == "Job"] == ["reward-int4-eval"]
    assert reconciler.store.child("Deployment", "rl", "reward-int4", "reward") is None


async def test_invalid_spec_reports_and_touches_no_child() -> None:
    reconciler, fake = make()
    await reconcile_body(reconciler, fake, grmd_body())
    fake.calls.clear()
    body = copy.deepcopy(fake.objects[("GRMDeployment", "rl", "reward")])
    body["metadata"].update(generation=2, resourceVersion="9999")
    body["spec"]["variants"].append(dict(body["spec"]["variants"][0]))
    await reconcile_body(reconciler, fake, body)
    assert fake.writes() == [("status", "GRMDeployment", "reward")]
    assert ("event", "Warning", "InvalidSpec") in fake.calls
    status = fake.objects[("GRMDeployment", "rl", "reward")]["status"]
    spec_valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert (spec_valid["status"], spec_valid["reason"]) == ("False", "InvalidSpec")
    assert "variant names must be unique" in spec_valid["message"]


async def test_an_api_error_is_reported_in_status_and_raised_for_a_retry() -> None:
    reconciler, fake = make()

    async def forbidden(manifest: dict[str, Any]) -> dict[str, Any]:
        raise kubeapi.Forbidden(403, "Forbidden", "deployments.apps is forbidden")

    fake.apply = forbidden  # type: ignore[method-assign]
    with pytest.raises(kubeapi.Forbidden):
        await reconcile_body(reconciler, fake, grmd_body())
    status = fake.objects[("GRMDeployment", "rl", "reward")]["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ReconcileError")
    assert "forbidden" in degraded["message"]


def test_store_keeps_the_newest_resource_version() -> None:
    store = Store()
    labels = {"grm.dev/deployment": "reward"}
    newer = {
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "rl", "labels": labels, "resourceVersion": "20"},
    }
    older = copy.deepcopy(newer)
    older["metadata"]["resourceVersion"] = "15"
    assert store.put_child(newer)
    assert not store.put_child(older)  # a late watch event must not undo our own write's answer
    assert store.child("Deployment", "rl", "d", "reward") == newer
    store.drop_child("Deployment", older)  # a stale DELETED is ignored too
    assert store.child("Deployment", "rl", "d", "reward") == newer
    unlabelled = {"kind": "Deployment", "metadata": {"name": "x", "namespace": "rl", "resourceVersion": "1"}}
    assert not store.put_child(unlabelled)


async def test_failed_reconciles_are_retried_with_backoff_until_they_succeed() -> None:
    reconciler, fake = make(retry_initial_s=0.01, retry_max_s=0.05)
    real_apply = fake.apply
    failures = iter([True, True])

    async def flaky(manifest: dict[str, Any]) -> dict[str, Any]:
        if next(failures, False):
            raise kubeapi.KubeError(500, "InternalError", "etcd leader changed")
        return await real_apply(manifest)

    fake.apply = flaky  # type: ignore[method-assign]
    body = grmd_body()
    fake.objects[("GRMDeployment", "rl", "reward")] = body
    reconciler.observe_parent(None, copy.deepcopy(body))
    deadline = time.monotonic() + 5
    while ("Deployment", "rl", "reward-int4") not in fake.objects or reconciler.queue_depth:
        assert time.monotonic() < deadline, fake.calls
        await asyncio.sleep(0.005)
    errors = reconciler.metrics.reconcile_errors.labels(error="KubeError")._value.get()
    assert errors == 2
    assert reconciler.metrics.reconciles.labels(result="ok")._value.get() == 1
    status = fake.objects[("GRMDeployment", "rl", "reward")]["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "AsExpected")
    await reconciler.shutdown()


async def test_admin_token_secret_is_created_once_before_the_deployments_and_kept() -> None:
    """The first reconcile creates ``<name>-admin-token`` (owned, random token) before any
    Deployment (their pods read it); a restarted operator reads the same Secret and never creates
    or rewrites it; the autoscaler's lookup gets the same token."""
    reconciler, fake = make()
    await reconcile_body(reconciler, fake, grmd_body())
    ops = [(op, kind) for op, kind, _ in fake.writes()]
    assert ops.index(("create", "Secret")) < ops.index(("apply", "Deployment"))
    assert [c for c in fake.writes() if c[1] == "Secret"] == [
        ("get", "Secret", "reward-admin-token"),
        ("create", "Secret", "reward-admin-token"),
    ]
    secret = fake.objects[("Secret", "rl", "reward-admin-token")]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == UID
    token = token_of(secret)
    assert token is not None and len(token) >= 43
    owner = Owner(name="reward", namespace="rl", uid=UID)
    assert await reconciler.admin_tokens.token(owner) == token

    restarted, _ = make()
    restarted.kube = fake  # type: ignore[assignment]
    restarted.admin_tokens.kube = fake  # type: ignore[assignment]
    fake.calls.clear()
    await reconcile_body(restarted, fake, copy.deepcopy(fake.objects[("GRMDeployment", "rl", "reward")]))
    assert [c for c in fake.writes() if c[1] == "Secret"] == [("get", "Secret", "reward-admin-token")]
    assert await restarted.admin_tokens.token(owner) == token and token_of(secret) == token
    # A GRMDeployment created again under the same name (a new uid) does not trust the old Secret.
    assert await restarted.admin_tokens.token(Owner(name="reward", namespace="rl", uid="other")) is None


async def test_a_secret_of_that_name_the_grmdeployment_does_not_own_is_refused() -> None:
    """Someone else's Secret named ``<name>-admin-token`` is never trusted as the token: the
    reconcile fails (Degraded, retried) before any worker Deployment is applied."""
    reconciler, fake = make()
    fake.objects[("Secret", "rl", "reward-admin-token")] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "reward-admin-token", "namespace": "rl"},
        "data": {"token": "c2VjcmV0"},
    }
    with pytest.raises(AdminTokenError, match="not owned by GRMDeployment reward"):
        await reconcile_body(reconciler, fake, grmd_body())
    assert not [c for c in fake.writes() if c[0] in ("apply", "create")]
    status = fake.objects[("GRMDeployment", "rl", "reward")]["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "admin-token" in degraded["message"]


async def test_re_evaluate_annotation_runs_a_new_evaluation_of_demoted_variants_only() -> None:
    reconciler, fake = make()
    await reconcile_body(reconciler, fake, grmd_body())
    jobs = {name.rsplit("-", 1)[0]: name for kind, _, name in fake.objects if kind == "Job"}
    # fp8 demoted by the autoscaler (status it wrote); then the user annotates a new value.
    body = copy.deepcopy(fake.objects[("GRMDeployment", "rl", "reward")])
    for entry in body["status"]["variants"]:
        if entry["name"] == "fp8":
            entry["demoted"] = {"since": "2025-12-31T23:00:00Z", "variantDigest": "sha256:x"}
    body["metadata"]["annotations"] = {"grm.dev/re-evaluate": "2026-01-01T00:00:00Z"}
    body["metadata"]["resourceVersion"] = "9999"
    fake.calls.clear()
    await reconcile_body(reconciler, fake, body)
    created = [name for op, kind, name in fake.writes() if op == "create" and kind == "Job"]
    deleted = [name for op, kind, name in fake.writes() if op == "delete" and kind == "Job"]
    # fp8's evaluation is the re-evaluation for that value (another Job); int4's is untouched.
    assert (
        len(created) == 1
        and created[0].startswith("reward-fp8-eval-")
        and created[0] != jobs["reward-fp8-eval"]
    )
    assert deleted == [jobs["reward-fp8-eval"]]
    recipe = fake.objects[("Job", "rl", created[0])]["metadata"]["annotations"]["grm.dev/recipe"]
    assert '"reEvaluate": "2026-01-01T00:00:00Z"' in recipe
    # A value longer than a Job's identity may hold: an invalid spec, reported, no Job touched.
    body["metadata"]["annotations"] = {"grm.dev/re-evaluate": "x" * 254}
    body["metadata"]["resourceVersion"] = "10000"
    fake.calls.clear()
    await reconcile_body(reconciler, fake, body)
    assert fake.writes() == [("status", "GRMDeployment", "reward")]
    status = fake.objects[("GRMDeployment", "rl", "reward")]["status"]
    spec_valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["status"] == "False" and "grm.dev/re-evaluate" in spec_valid["message"]


async def test_quality_job_settings_shape_the_jobs_pods() -> None:
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    reconciler, fake = make(
        quality_job_image="q:2",
        quality_job_image_pull_policy="Always",
        quality_job_resources={"requests": {"memory": "96Gi"}},
        quality_job_node_selector={"pool": "gpu"},
        quality_job_tolerations=[gpu],
    )
    await reconcile_body(reconciler, fake, grmd_body())
    jobs = [body for (kind, _, _), body in fake.objects.items() if kind == "Job"]
    assert len(jobs) == 2
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert (container["image"], container["imagePullPolicy"]) == ("q:2", "Always")
        assert container["resources"]["requests"] == {"memory": "96Gi"}
        # The GPUs are the variants' (bf16, the reference, runs on 2), never the installation's.
        assert container["resources"]["limits"] == {"nvidia.com/gpu": 2}
        assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"] == [gpu]
