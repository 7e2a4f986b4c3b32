"""The quality gate's controller and its Jobs, with fake Job results: a build Job per recipe, an
evaluation Job per checkpoint pair and set, verdicts from the measured lower bound, no Job twice,
the same decisions after a restart (state only in Jobs and status)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from grm_operator.api.models import GRMDeployment
from grm_operator.control.builders.metadata import LABEL_DEPLOYMENT, LABEL_VARIANT, Owner
from grm_operator.control.gate import (
    GatePlan,
    JobView,
    jobs_needing_results,
    merge_variant_entries,
    plan_gate,
)
from grm_operator.control.qualityjobs import (
    ANNOTATION_EVALUATION_ARGS,
    ANNOTATION_RE_EVALUATE,
    BUILD,
    EVALUATION,
    LABEL_JOB_KEY,
    LABEL_QUALITY_JOB,
    JobPodDefaults,
    evaluation_args,
    job_name,
    re_evaluation_request,
)
from grm_operator.control.status import fold_status
from grm_operator.policy import gate as ladder

NOW = "2026-12-07T08:00:00Z"


def grmd(**precision: Any) -> GRMDeployment:
    return GRMDeployment.model_validate(
        {
            "metadata": {"name": "reward", "namespace": "rl", "uid": "u-1"},
            "spec": {
                "model": {"name": "tiny", "uri": "pvc://models/tiny"},
                "variants": [
                    {"name": "bf16", "precision": "bf16", "quality": 1.0},
                    {
                        "name": "fp8",
                        "precision": "fp8",
                        "quality": 0.99,
                        "uri": "pvc://models/tiny-fp8",
                        "build": {"from": "bf16", "scheme": "FP8_DYNAMIC"},
                    },
                    {
                        "name": "int4",
                        "precision": "gptq-int4",
                        "quality": 0.97,
                        "uri": "/models/tiny-w4a16",
                        "build": {
                            "from": "pvc://models/tiny",
                            "scheme": "W4A16",
                            "calibration": {"samples": 64},
                        },
                    },
                ],
                "slo": {"e2eP95": "20s"},
                "precision": {"minQuality": 0.95, **precision},
            },
        }
    )


class FakeCluster:
    """Jobs as the API server keeps them, and the reports their pods end with."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.reports: dict[str, str] = {}
        self.created: list[str] = []

    def step(self, g: GRMDeployment, status: dict[str, Any]) -> GatePlan:
        views = [v for body in self.jobs.values() if (v := JobView.from_body(body)) is not None]
        needing = jobs_needing_results(status, views)
        plan = plan_gate(
            g,
            Owner.of(g),
            status,
            views,
            {j.name: self.reports.get(j.name) for j in needing},
            dataset_identity="default",
            image="grm-worker:test",
            image_pull_policy="IfNotPresent",
            now=NOW,
        )
        for manifest in plan.create:
            name = manifest["metadata"]["name"]
            assert name not in self.jobs, f"{name} created twice"
            self.jobs[name] = manifest
            self.created.append(name)
        for name, _uid in plan.delete:
            self.jobs.pop(name)
        status["variants"] = merge_variant_entries(
            status.get("variants") or [{"name": v.name} for v in g.spec.variants], plan.variants
        )
        return plan

    def finish(self, name: str, report: dict[str, Any] | None, *, failed: bool = False) -> None:
        job = self.jobs[name]
        if failed:
            job["status"] = {
                "failed": 2,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    }
                ],
            }
        else:
            job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
            if report is not None:
                self.reports[name] = json.dumps(report)

    def named(self, kind: str, variant: str) -> list[str]:
        return [
            n
            for n, j in self.jobs.items()
            if j["metadata"]["labels"][LABEL_QUALITY_JOB] == kind
            and j["metadata"]["labels"][LABEL_VARIANT] == variant
        ]


def gates(status: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("gate") for e in status["variants"]}


def evaluation(low: float, value: float = 0.99) -> dict[str, Any]:
    return {
        "agreement": value,
        "agreement_low": low,
        "agreement_high": 1.0,
        "n": 200,
        "rank_correlation": 0.9,
        "accuracy": None,
        "dataset_digest": "sha256:abc",
    }


def test_build_evaluate_admit_and_reject_with_the_numbers_in_the_condition() -> None:
    g, cluster, status = grmd(), FakeCluster(), {}
    plan = cluster.step(g, status)
    assert gates(status) == {"bf16": "Admitted", "fp8": "Building", "int4": "Building"}
    assert plan.condition is not None and plan.condition[:2] == ("Unknown", "GateInProgress")
    assert {e.reason for e in plan.events} == {"BuildStarted"}
    # Nothing changed: no new Job, same state.
    cluster.step(g, status)
    assert len(cluster.created) == 2
    fp8_build, int4_build = cluster.named(BUILD, "fp8")[0], cluster.named(BUILD, "int4")[0]
    cluster.finish(fp8_build, {"digest": "sha256:f8", "scheme": "FP8_DYNAMIC"})
    cluster.finish(int4_build, {"digest": "sha256:i4", "scheme": "W4A16"})
    plan = cluster.step(g, status)
    assert gates(status) == {"bf16": "Admitted", "fp8": "Evaluating", "int4": "Evaluating"}
    fp8 = next(e for e in status["variants"] if e["name"] == "fp8")
    assert fp8["build"]["digest"] == "sha256:f8" and fp8["build"]["uri"] == "pvc://models/tiny-fp8"
    assert {e.reason for e in plan.events} == {"BuildSucceeded", "EvaluationStarted"}
    cluster.finish(cluster.named(EVALUATION, "fp8")[0], evaluation(low=0.97))
    cluster.finish(cluster.named(EVALUATION, "int4")[0], evaluation(low=0.90, value=0.93))
    plan = cluster.step(g, status)
    assert gates(status) == {"bf16": "Admitted", "fp8": "Admitted", "int4": "Rejected"}
    assert plan.condition is not None and plan.condition[:2] == ("False", "VariantRejected")
    assert "agreement 0.930 (95% interval 0.900–1.000, n=200)" in plan.condition[2]
    assert "minQuality 0.95" in plan.condition[2]
    assert {(e.type, e.reason) for e in plan.events} == {
        ("Normal", "VariantAdmitted"),
        ("Warning", "VariantRejected"),
    }
    # The ladder the policy gets: the reference and fp8 at its measured agreement.
    assert [(v.name, v.quality) for v in ladder.ladder_spec(g.spec, status["variants"]).variants] == [
        ("bf16", 1.0),
        ("fp8", 0.99),
    ]
    # Steady: no Job created, none deleted, no Event.
    plan = cluster.step(g, status)
    assert (plan.create, plan.delete, plan.events) == ([], [], [])
    assert len(cluster.created) == 4


def test_a_restarted_operator_decides_the_same_from_jobs_and_status_alone() -> None:
    g, cluster, status = grmd(), FakeCluster(), {}
    cluster.step(g, status)
    # A new operator process: a new FakeCluster view of the same Jobs, the same status.
    again = FakeCluster()
    again.jobs = dict(cluster.jobs)
    plan = again.step(g, json.loads(json.dumps(status)))
    assert plan.create == [] and again.created == []


def test_changing_the_recipe_rebuilds_reevaluates_and_deletes_the_stale_jobs() -> None:
    g, cluster, status = grmd(), FakeCluster(), {}
    cluster.step(g, status)
    cluster.finish(cluster.named(BUILD, "fp8")[0], {"digest": "sha256:f8"})
    cluster.step(g, status)
    cluster.finish(cluster.named(EVALUATION, "fp8")[0], evaluation(low=0.97))
    cluster.step(g, status)
    assert gates(status)["fp8"] == "Admitted"
    old = set(cluster.named(BUILD, "fp8") + cluster.named(EVALUATION, "fp8"))
    data = g.model_dump(by_alias=True, exclude_none=True)
    data["spec"]["variants"][1]["build"]["prune"] = {"sparsity": "2:4"}
    changed = GRMDeployment.model_validate(data)
    plan = cluster.step(changed, status)
    assert gates(status)["fp8"] == "Building"
    assert {n for n, _ in plan.delete} == old  # the old build and evaluation go
    new_build = cluster.named(BUILD, "fp8")
    assert len(new_build) == 1 and new_build[0] not in old
    assert "--prune" in cluster.jobs[new_build[0]]["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "fp8" not in ladder.admitted_qualities(changed.spec, status["variants"])


def test_a_failed_build_rejects_the_variant_until_the_recipe_changes() -> None:
    g, cluster, status = grmd(), FakeCluster(), {}
    cluster.step(g, status)
    cluster.finish(cluster.named(BUILD, "fp8")[0], None, failed=True)
    plan = cluster.step(g, status)
    entry = next(e for e in status["variants"] if e["name"] == "fp8")
    assert entry["gate"] == "Rejected" and "BackoffLimitExceeded" in entry["gateMessage"]
    assert plan.create == []  # never retried on its own: the same recipe would fail the same way


def test_a_succeeded_job_without_a_readable_report_rejects_rather_than_admits() -> None:
    g, cluster, status = grmd(), FakeCluster(), {}
    cluster.step(g, status)
    cluster.finish(cluster.named(BUILD, "fp8")[0], {"digest": "sha256:f8"})
    cluster.step(g, status)
    name = cluster.named(EVALUATION, "fp8")[0]
    cluster.finish(name, None)
    cluster.reports[name] = "Traceback (most recent call last): ..."
    cluster.step(g, status)
    assert gates(status)["fp8"] == "Rejected"


def test_a_raised_floor_rejudges_the_stored_measurement_without_a_new_job() -> None:
    g, cluster, status = grmd(), FakeCluster(), {}
    cluster.step(g, status)
    cluster.finish(cluster.named(BUILD, "fp8")[0], {"digest": "sha256:f8"})
    cluster.finish(cluster.named(BUILD, "int4")[0], {"digest": "sha256:i4"})
    cluster.step(g, status)
    for variant in ("fp8", "int4"):
        cluster.finish(cluster.named(EVALUATION, variant)[0], evaluation(low=0.97))
    cluster.step(g, status)
    assert gates(status)["fp8"] == "Admitted"
    plan = cluster.step(grmd(minQuality=0.98), status)
    assert gates(status)["fp8"] == "Rejected" and plan.create == []


def test_declared_builds_but_never_evaluates() -> None:
    g, cluster, status = grmd(qualityPolicy="Declared"), FakeCluster(), {}
    cluster.step(g, status)
    assert gates(status)["fp8"] == "Building"
    # Declared trusts the numbers, not a checkpoint that does not exist yet.
    assert "fp8" not in ladder.admitted_qualities(g.spec, status["variants"])
    cluster.finish(cluster.named(BUILD, "fp8")[0], {"digest": "sha256:f8"})
    cluster.step(g, status)
    assert gates(status)["fp8"] == "Admitted" and cluster.named(EVALUATION, "fp8") == []
    assert ladder.admitted_qualities(g.spec, status["variants"])["fp8"] == 0.99


def test_the_jobs_compress_into_the_variant_storage_and_report_through_the_termination_message() -> None:
    g, cluster, status = grmd(), FakeCluster(), {}
    cluster.step(g, status)
    build = cluster.jobs[cluster.named(BUILD, "fp8")[0]]
    pod = build["spec"]["template"]["spec"]
    container = pod["containers"][0]
    script = container["command"][2]
    assert (
        "grm-operator quantize --source /mnt/claims/models/tiny --scheme FP8_DYNAMIC "
        "--out /mnt/claims/models/tiny-fp8" in script
    )
    assert container["terminationMessagePath"] == "/dev/termination-log"
    # One volume for the claim, writable because the build writes its output there.
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [
        {"name": "claim-0", "persistentVolumeClaim": {"claimName": "models", "readOnly": False}}
    ]
    assert pod["restartPolicy"] == "Never" and build["spec"]["backoffLimit"] == 1
    # Job pods are never worker pods: the Service, PDB and autoscaler select on these labels.
    labels = build["spec"]["template"]["metadata"]["labels"]
    assert LABEL_DEPLOYMENT not in labels and LABEL_VARIANT not in labels
    assert build["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    int4 = cluster.jobs[cluster.named(BUILD, "int4")[0]]["spec"]["template"]["spec"]["containers"][0]
    assert (
        "--calibration-samples 64" in int4["command"][2] and "--out /models/tiny-w4a16" in int4["command"][2]
    )
    cluster.finish(cluster.named(BUILD, "fp8")[0], {"digest": "sha256:f8"})
    cluster.step(g, status)
    evaluation_pod = cluster.jobs[cluster.named(EVALUATION, "fp8")[0]]["spec"]["template"]["spec"]
    script = evaluation_pod["containers"][0]["command"][2]
    assert (
        "grm-operator evaluate --variant /mnt/claims/models/tiny-fp8 --reference /mnt/claims/models/tiny"
        in script
    )
    # No --dataset: evaluate's own default, the set shipped in the package.
    assert "--dataset" not in script and '--json "${TMPDIR:-/tmp}/evaluation.json"' in script
    assert '> "$GRM_REPORT"' in script and "agreement_low" in script
    assert [
        v["persistentVolumeClaim"]["readOnly"]
        for v in evaluation_pod["volumes"]
        if "persistentVolumeClaim" in v
    ] == [True]


def test_job_names_fit_a_label_value_and_depend_only_on_their_inputs() -> None:
    name = job_name("a" * 63, "int4", BUILD, "0123456789ab")
    assert len(name) <= 63 and name.endswith("-int4-build-0123456789ab")
    first, second = FakeCluster(), FakeCluster()
    first.step(grmd(), {})
    second.step(grmd(), {})
    assert sorted(first.jobs) == sorted(second.jobs)
    assert all(j["metadata"]["labels"][LABEL_JOB_KEY] in n for n, j in first.jobs.items())


def test_status_folds_keep_the_gate_fields_and_publish_the_summary() -> None:
    g, cluster, status = grmd(), FakeCluster(), {}
    plan = cluster.step(g, status)
    folded = fold_status(
        name="reward",
        generation=1,
        spec=g.spec,
        current={"variants": status["variants"]},
        children={},
        now=NOW,
        gate=plan.variants,
        gate_condition=plan.condition,
    )
    fp8 = next(e for e in folded.patch["variants"] if e["name"] == "fp8")
    assert fp8["gate"] == "Building" and fp8["build"]["recipeHash"]
    assert folded.patch["gate"] == "fp8=Building int4=Building"
    assert any(c["type"] == "QualityGate" for c in folded.patch["conditions"])
    # A fold without a gate step (the autoscaler's status write in between) keeps the fields.
    again = fold_status(name="reward", generation=1, spec=g.spec, current=folded.patch, children={}, now=NOW)
    assert next(e for e in again.patch["variants"] if e["name"] == "fp8")["gate"] == "Building"


def test_evaluation_args_come_from_the_annotation_and_bad_ones_are_an_error() -> None:
    data = grmd().model_dump(by_alias=True, exclude_none=True)
    data["metadata"]["annotations"] = {ANNOTATION_EVALUATION_ARGS: '["--max-tokens", "16"]'}
    assert evaluation_args(GRMDeployment.model_validate(data)) == ["--max-tokens", "16"]
    data["metadata"]["annotations"] = {ANNOTATION_EVALUATION_ARGS: '{"max": 16}'}
    with pytest.raises(ValueError, match="JSON list of strings"):
        evaluation_args(GRMDeployment.model_validate(data))


def _annotated(g: GRMDeployment, value: str | None) -> GRMDeployment:
    data = g.model_dump(by_alias=True, exclude_none=True)
    data["metadata"]["annotations"] = {ANNOTATION_RE_EVALUATE: value} if value is not None else {}
    return GRMDeployment.model_validate(data)


def test_a_demoted_variant_is_evaluated_again_once_per_new_re_evaluate_value() -> None:
    g, cluster, status = grmd(), FakeCluster(), {}
    cluster.step(g, status)
    for variant in ("fp8", "int4"):
        cluster.finish(cluster.named(BUILD, variant)[0], {"digest": f"sha256:{variant}"})
    cluster.step(g, status)
    first = cluster.named(EVALUATION, "fp8")[0]
    cluster.finish(first, evaluation(low=0.97))
    cluster.finish(cluster.named(EVALUATION, "int4")[0], evaluation(low=0.96))
    cluster.step(g, status)
    assert gates(status) == {"bf16": "Admitted", "fp8": "Admitted", "int4": "Admitted"}
    # The autoscaler demotes fp8 (live agreement below the floor) while the annotation says t1.
    fp8 = next(e for e in status["variants"] if e["name"] == "fp8")
    fp8["demoted"] = {"since": "2026-12-07T09:00:00Z", "variantDigest": "sha256:x", "reEvaluate": "t1"}
    # The same value as at demotion, or an admitted variant that is not demoted: no Job.
    for annotated in (_annotated(g, "t1"), _annotated(g, None)):
        plan = cluster.step(annotated, status)
        assert plan.create == [] and plan.delete == [] and gates(status)["fp8"] == "Admitted"
    # A new value: a fresh evaluation of fp8 only (a Job of its own, the old one deleted).
    g2 = _annotated(g, "t2")
    plan = cluster.step(g2, status)
    again = cluster.named(EVALUATION, "fp8")
    assert len(again) == 1 and again[0] != first and plan.delete == [(first, None)]
    assert gates(status) == {"bf16": "Admitted", "fp8": "Evaluating", "int4": "Admitted"}
    assert "grm.dev/re-evaluate=t2" in next(e.message for e in plan.events if e.reason == "EvaluationStarted")
    assert (
        json.loads(cluster.jobs[again[0]]["metadata"]["annotations"]["grm.dev/recipe"])["reEvaluate"] == "t2"
    )
    cluster.finish(again[0], evaluation(low=0.98))
    plan = cluster.step(g2, status)
    quality = next(e for e in status["variants"] if e["name"] == "fp8")["quality"]
    assert gates(status)["fp8"] == "Admitted" and quality["reEvaluate"] == "t2" and quality["job"] == again[0]
    assert quality["measured"] == NOW  # after the demotion: what lifts it (policy.quality_watch)
    # Steady with t2, demoted or not: the measurement for t2 stands, no Job.
    assert cluster.step(g2, status).create == []
    fp8 = next(e for e in status["variants"] if e["name"] == "fp8")
    fp8.pop("demoted")
    plan = cluster.step(g2, status)
    assert (plan.create, plan.delete) == ([], []) and gates(status)["fp8"] == "Admitted"


def test_the_re_evaluate_annotation_is_read_stripped_and_bounded() -> None:
    assert re_evaluation_request(_annotated(grmd(), " 2026-12-07T10:00:00Z ")) == "2026-12-07T10:00:00Z"
    assert re_evaluation_request(_annotated(grmd(), "")) is None
    assert re_evaluation_request(grmd()) is None
    with pytest.raises(ValueError, match="at most 253"):
        re_evaluation_request(_annotated(grmd(), "x" * 254))


def test_the_installations_job_settings_reach_the_pods_but_the_templates_placement_wins() -> None:
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    defaults = JobPodDefaults(
        resources={"requests": {"cpu": "8", "memory": "96Gi"}, "limits": {"memory": "128Gi"}},
        node_selector={"pool": "gpu"},
        tolerations=(gpu,),
    )
    g = grmd()
    plan = plan_gate(
        g,
        Owner.of(g),
        {},
        [],
        {},
        dataset_identity="default",
        image="q:1",
        image_pull_policy="Always",
        now=NOW,
        pod_defaults=defaults,
    )
    pod = plan.create[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "96Gi"},
        "limits": {"memory": "128Gi", "nvidia.com/gpu": 1},
    }
    assert (container["image"], container["imagePullPolicy"]) == ("q:1", "Always")
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"] == [gpu]
    data = g.model_dump(by_alias=True, exclude_none=True)
    data["spec"]["template"] = {"nodeSelector": {"pool": "h100"}}
    own = GRMDeployment.model_validate(data)
    plan = plan_gate(
        own,
        Owner.of(own),
        {},
        [],
        {},
        dataset_identity="default",
        image="q:1",
        image_pull_policy="Always",
        now=NOW,
        pod_defaults=defaults,
    )
    pod = plan.create[0]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "h100"} and pod["tolerations"] == [gpu]


def test_the_jobs_get_a_bounded_dev_shm_as_worker_pods_do() -> None:
    """vLLM's engine asks /dev/shm for its ring at start (160 MiB on the CPU engine), more than a
    container's 64-MiB default: the real kubelet's evaluation Jobs failed without this volume."""
    g, cluster, status = grmd(), FakeCluster(), {}
    cluster.step(g, status)
    cluster.finish(cluster.named(BUILD, "fp8")[0], {"digest": "sha256:f8"})
    cluster.step(g, status)
    for kind in (BUILD, EVALUATION):
        pod = cluster.jobs[cluster.named(kind, "fp8")[0]]["spec"]["template"]["spec"]
        shm = [v for v in pod["volumes"] if v["name"] == "shm"]
        assert shm == [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}], kind
        assert {"name": "shm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"], kind
