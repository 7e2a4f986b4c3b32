"""The autoscaler's pure actuation: the policy's intent, a switch in progress and the variant
Deployments in; replica changes, switch steps, the sample budget, status and Events out."""

from __future__ import annotations

from typing import Any

import pytest

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.control.actuation import HISTORY, Intent, VariantDeployment, plan
from grm_operator.control.rollout import to_rfc3339
from grm_operator.policy.signals import Signals

NOW = 1_800_000_000.0


def spec(**overrides: Any) -> GRMDeploymentSpec:
    body: dict[str, Any] = {
        "model": {"name": "grm", "uri": "hf://org/grm"},
        "variants": [
            {"name": "bf16", "precision": "bf16", "quality": 1.0},
            {"name": "fp8", "precision": "fp8", "quality": 0.995},
            {"name": "int4", "precision": "awq-int4", "quality": 0.96, "uri": "hf://org/grm-awq"},
        ],
        "slo": {"ttftP95": "500ms", "e2eP95": "20s"},
        "scaling": {"minReplicas": 1, "maxReplicas": 6},
        # The switching mechanics, not the quality gate (tests/unit/grm_operator/policy/test_gate.py).
        "precision": {"minQuality": 0.97, "qualityPolicy": "Declared"},
        "rollout": {"switchTimeout": "10m", "unhealthyBackoff": "30m"},
    }
    for key, value in overrides.items():
        body[key] = value if isinstance(value, list) else {**body.get(key, {}), **value}
    return GRMDeploymentSpec.model_validate(body)


FINE = Signals(rps=10, ttft_p95=0.3, e2e_p95=8.0, pods_reporting=2)
SLOW = Signals(rps=30, ttft_p95=0.82, e2e_p95=25.0, pods_reporting=2)
TWO = {"bf16": VariantDeployment(2, 2, 2), "fp8": VariantDeployment(0, 0, 0)}


def run(
    s: GRMDeploymentSpec,
    intent: Intent | None,
    status: dict[str, Any] | None = None,
    deployments: dict[str, VariantDeployment] | None = None,
    observed: Signals | None = FINE,
    error: str | None = None,
    now: float = NOW,
) -> Any:
    return plan(
        spec=s,
        generation=3,
        status=status or {"activeVariant": "bf16"},
        deployments=TWO if deployments is None else deployments,
        observed=observed,
        metrics_error=error,
        intent=intent,
        now=now,
    )


def test_auto_mode_applies_the_policys_replicas_with_an_event_and_history() -> None:
    why = "p95 TTFT 0.82s > 0.5s: 30 rps needs 4 replicas at 7.5 rps each"
    p = run(spec(), Intent("ScaleUp", why, replicas=4), observed=SLOW)
    assert p.scale == {"bf16": 4}
    assert [(e.reason, e.message) for e in p.events if e.reason == "ScaledUp"] == [
        ("ScaledUp", f"bf16: 2 → 4 replicas: {why}")
    ]
    assert p.status["lastDecision"] == {
        "time": to_rfc3339(NOW),
        "action": "ScaleUp",
        "reason": why,
        "replicas": 4,
    }
    assert p.status["decisions"] == [p.status["lastDecision"]]
    assert p.status["observed"] == {"rps": 30.0, "ttftP95": 0.82, "e2eP95": 25.0}


def test_replicas_are_clamped_to_the_spec_bounds_and_unchanged_counts_are_not_written() -> None:
    assert run(spec(), Intent("ScaleUp", "x", replicas=50)).scale == {"bf16": 6}
    assert run(spec(), Intent("ScaleDown", "x", replicas=0)).scale == {"bf16": 1}
    same = run(spec(), Intent("None", "load steady", replicas=2))
    assert same.scale == {} and not [e for e in same.events if e.reason.startswith("Scaled")]
    assert same.status["decisions"] == []  # "None" decisions are not history


@pytest.mark.parametrize("mode", ["Manual", "External"])
def test_manual_and_external_modes_leave_replicas_to_the_spec(mode: str) -> None:
    p = run(spec(scaling={"mode": mode, "replicas": 2}), Intent("ScaleUp", "x", replicas=5))
    assert p.scale == {}
    assert p.status["lastDecision"]["replicas"] == 5  # still recorded: what Auto would do


def test_a_variant_switch_starts_by_surging_the_new_variant() -> None:
    why = "p95 TTFT 0.82s > 0.5s at maxGPUs; fp8 fits with 3 replicas"
    p = run(spec(), Intent("SwitchVariant", why, replicas=3, variant="fp8"), observed=SLOW)
    assert p.scale == {"fp8": 3} and p.active == "bf16"
    assert p.status["switch"]["phase"] == "Surging" and p.status["switch"]["targetReplicas"] == 3
    assert p.status["lastDecision"]["action"] == "SwitchVariant"
    assert (p.status["lastDecision"]["from"], p.status["lastDecision"]["to"]) == ("bf16", "fp8")
    started = [e for e in p.events if e.reason == "SwitchStarted"]
    assert len(started) == 1 and why in started[0].message


def test_the_surge_stays_within_max_gpus_but_starts_at_least_one_replica() -> None:
    two_gpu = spec(
        variants=[
            {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 2},
            {"name": "fp8", "precision": "fp8", "quality": 0.995, "gpusPerReplica": 1},
        ],
        scaling={"maxGPUs": 6},
    )
    # bf16 holds 2 × 2 = 4 of 6 GPUs: 2 fp8 replicas fit beside it, not the 4 wanted.
    p = run(two_gpu, Intent("SwitchVariant", "x", replicas=4, variant="fp8"))
    assert p.scale == {"fp8": 2} and p.status["switch"]["targetReplicas"] == 4  # the rest rolls in
    # bf16 holds all 6 GPUs: one replica surges anyway (else no switch could ever happen).
    full = {"bf16": VariantDeployment(3, 3, 3), "fp8": VariantDeployment()}
    assert run(two_gpu, Intent("SwitchVariant", "x", 4, "fp8"), deployments=full).scale == {"fp8": 1}


def test_external_mode_switches_with_the_spec_replica_count() -> None:
    p = run(spec(scaling={"mode": "External", "replicas": 2}), Intent("SwitchVariant", "x", 5, "fp8"))
    assert p.scale == {"fp8": 2}


def test_pinned_precision_never_switches() -> None:
    s = spec(precision={"policy": "Pinned", "pinnedVariant": "bf16"})
    p = run(s, Intent("SwitchVariant", "x", replicas=3, variant="fp8"))
    assert "fp8" not in p.scale and p.status["switch"] is None


def test_a_new_pin_is_switched_to_by_surge_and_drain_never_cut_over() -> None:
    """pinnedVariant patched from bf16 (serving 2 replicas) to fp8: whatever the policy's intent
    says, fp8 surges next to bf16 (which keeps its replicas) and the switch drains bf16 later."""
    s = spec(precision={"policy": "Pinned", "pinnedVariant": "fp8"})
    p = run(s, Intent("Hold", "no Ready fp8 worker yet", replicas=2, variant="bf16"))
    assert p.scale == {"fp8": 2} and "bf16" not in p.scale
    assert p.status["activeVariant"] == "bf16"
    assert (p.status["switch"]["from"], p.status["switch"]["to"]) == ("bf16", "fp8")
    assert p.status["lastDecision"]["action"] == "SwitchVariant"
    assert "precision.pinnedVariant is fp8" in p.status["lastDecision"]["reason"]
    # Once the pin is the serving variant, nothing switches any more.
    settled = run(s, Intent("Hold", "x", replicas=2, variant="fp8"), status={"activeVariant": "fp8"})
    assert settled.status["switch"] is None
    # A pinned variant marked unhealthy (its switch rolled back) waits for its backoff.
    until = to_rfc3339(NOW + 60)
    status = {
        "activeVariant": "bf16",
        "variants": [{"name": "bf16"}, {"name": "fp8", "unhealthyUntil": until}],
    }
    assert run(s, Intent("Hold", "x", replicas=2, variant="fp8"), status=status).status["switch"] is None


def test_an_unhealthy_variant_is_not_tried_until_its_backoff_ends() -> None:
    until = to_rfc3339(NOW + 60)
    status = {
        "activeVariant": "bf16",
        "variants": [{"name": "bf16"}, {"name": "fp8", "unhealthyUntil": until}],
    }
    blocked = run(spec(), Intent("SwitchVariant", "x", replicas=3, variant="fp8"), status=status)
    assert blocked.status["switch"] is None and "fp8" not in blocked.scale
    later = run(spec(), Intent("SwitchVariant", "x", replicas=3, variant="fp8"), status=status, now=NOW + 61)
    assert later.status["switch"]["to"] == "fp8"
    assert later.status["variants"] == [{"name": "bf16"}, {"name": "fp8"}]  # mark expired: cleared


def test_a_switch_in_progress_ignores_the_policy_and_advances() -> None:
    surging = {
        "from": "bf16",
        "to": "fp8",
        "started": to_rfc3339(NOW - 60),
        "targetReplicas": 2,
        "phase": "Surging",
    }
    status = {"activeVariant": "bf16", "switch": surging}
    ready = {"bf16": VariantDeployment(2, 2, 2), "fp8": VariantDeployment(2, 2, 2)}
    p = run(spec(), Intent("ScaleUp", "x", replicas=5), status=status, deployments=ready)
    assert p.scale == {"bf16": 0} and p.active == "fp8" and p.status["activeVariant"] == "fp8"
    assert p.status["switch"]["phase"] == "Draining"
    assert any(e.reason == "SwitchDraining" for e in p.events)


def test_a_timed_out_switch_rolls_back_and_marks_the_variant_unhealthy() -> None:
    surging = {
        "from": "bf16",
        "to": "fp8",
        "started": to_rfc3339(NOW - 601),
        "targetReplicas": 2,
        "phase": "Surging",
    }
    status = {"activeVariant": "bf16", "switch": surging, "variants": [{"name": "bf16"}, {"name": "fp8"}]}
    stuck = {"bf16": VariantDeployment(2, 2, 2), "fp8": VariantDeployment(2, 2, 0)}
    p = run(spec(), None, status=status, deployments=stuck)
    assert p.scale == {"fp8": 0} and p.active == "bf16" and p.status["switch"]["phase"] == "RollingBack"
    assert p.status["variants"][1] == {"name": "fp8", "unhealthyUntil": to_rfc3339(NOW + 1800)}
    warning = [e for e in p.events if e.reason == "SwitchRollingBack"]
    assert warning and warning[0].type == "Warning" and "0/2 fp8 replicas became Ready" in warning[0].message


def test_a_crash_looping_switch_rolls_back_before_the_timeout_with_a_warning() -> None:
    surging = {
        "from": "bf16",
        "to": "fp8",
        "started": to_rfc3339(NOW - 120),
        "targetReplicas": 2,
        "phase": "Surging",
    }
    status = {"activeVariant": "bf16", "switch": surging, "variants": [{"name": "bf16"}, {"name": "fp8"}]}
    crashing = {"bf16": VariantDeployment(2, 2, 2), "fp8": VariantDeployment(2, 2, 0, crashing=2)}
    p = run(spec(), None, status=status, deployments=crashing)
    assert p.scale == {"fp8": 0} and p.active == "bf16" and p.status["switch"]["phase"] == "RollingBack"
    assert p.status["variants"][1] == {"name": "fp8", "unhealthyUntil": to_rfc3339(NOW + 1800)}
    warning = [e for e in p.events if e.reason == "SwitchRollingBack"]
    assert warning and warning[0].type == "Warning" and "2 fp8 pod(s) crash-loop" in warning[0].message


def test_conditions_read_as_sentences_and_keep_their_transition_time() -> None:
    p = run(spec(), Intent("ScaleUp", "x", replicas=4), observed=SLOW)
    conds = {c["type"]: c for c in p.status["conditions"]}
    assert conds["SLOMet"]["status"] == "False" and conds["SLOMet"]["reason"] == "SLOViolated"
    assert conds["SLOMet"]["message"] == "p95 TTFT 0.82s > 0.5s; p95 e2e latency 25s > 20s"
    assert conds["MetricsAvailable"]["status"] == "True"
    assert conds["QualityFloorMet"]["message"] == "bf16 quality 1 ≥ minQuality 0.97"
    again = run(
        spec(),
        Intent("None", "x", replicas=4),
        status={"activeVariant": "bf16", **p.status},
        observed=SLOW,
        now=NOW + 15,
    )
    kept = {c["type"]: c for c in again.status["conditions"]}
    assert kept["SLOMet"]["lastTransitionTime"] == to_rfc3339(NOW)  # still False: no transition
    assert not [e for e in again.events if e.reason in ("SLOViolated", "WithinSLO")]
    fixed = run(spec(), Intent("None", "x"), status={"activeVariant": "bf16", **p.status}, now=NOW + 30)
    slo = {c["type"]: c for c in fixed.status["conditions"]}["SLOMet"]
    assert slo["status"] == "True" and slo["lastTransitionTime"] == to_rfc3339(NOW + 30)
    assert [e.message for e in fixed.events if e.reason == "WithinSLO"] == [
        "SLOMet=True: p95 TTFT 0.3s ≤ 0.5s, p95 e2e latency 8s ≤ 20s"
    ]


def test_other_conditions_are_kept_untouched() -> None:
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "ReplicasReady",
        "lastTransitionTime": "x",
        "message": "",
    }
    p = run(spec(), None, status={"activeVariant": "bf16", "conditions": [ready]})
    assert p.status["conditions"][0] == ready


def test_a_failed_source_and_an_idle_window_read_as_metrics_unavailable_and_slo_unknown() -> None:
    failed = run(
        spec(), Intent("Hold", "metrics unavailable: holding 2 replicas"), observed=None, error="boom"
    )
    conds = {c["type"]: c for c in failed.status["conditions"]}
    assert (conds["MetricsAvailable"]["status"], conds["MetricsAvailable"]["reason"]) == (
        "False",
        "MetricsSourceFailed",
    )
    assert conds["SLOMet"]["status"] == "Unknown" and "observed" not in failed.status
    idle = run(spec(), Intent("None", "idle"), observed=Signals(rps=0.0, pods_reporting=2))
    conds = {c["type"]: c for c in idle.status["conditions"]}
    assert conds["SLOMet"]["reason"] == "NoTraffic" and conds["MetricsAvailable"]["status"] == "True"


def test_the_sample_budget_is_pushed_only_when_it_changes() -> None:
    p = run(spec(), Intent("SetSamples", "under load: 4 → 2 samples", samples=2), status={"samples": 4})
    assert p.samples == 2 and p.status["samples"] == 2
    assert run(spec(), Intent("None", "x", samples=2), status={"samples": 2}).samples is None


def test_the_decision_history_is_bounded() -> None:
    status: dict[str, Any] = {"activeVariant": "bf16"}
    for i in range(HISTORY + 5):
        p = run(spec(), Intent("ScaleUp", f"tick {i}", replicas=3), status=status, now=NOW + i)
        status = {**status, **p.status}
    assert len(status["decisions"]) == HISTORY and status["decisions"][-1]["reason"] == f"tick {HISTORY + 4}"


def test_a_switch_that_does_not_fit_max_gpus_rolls() -> None:
    """bf16 (2 GPUs) fills maxGPUs 4 with 2 replicas; fp8 is wanted at 3: the surge starts 1, the
    next tick hands one bf16 replica's GPUs over (batch = max(¼ × 4, 2) = 2 GPUs) and says so."""
    s = spec(
        variants=[
            {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 2},
            {"name": "fp8", "precision": "fp8", "quality": 0.995},
        ],
        scaling={"maxGPUs": 4},
    )
    full = {"bf16": VariantDeployment(2, 2, 2), "fp8": VariantDeployment()}
    started = run(s, Intent("SwitchVariant", "x", 3, "fp8"), deployments=full)
    assert started.scale == {"fp8": 1} and started.status["switch"]["targetReplicas"] == 3
    status = {"activeVariant": "bf16", "switch": started.status["switch"]}
    surging = {"bf16": VariantDeployment(2, 2, 2), "fp8": VariantDeployment(1, 1, 0, pending=1)}
    rolled = run(s, None, status=status, deployments=surging, now=NOW + 2)
    assert rolled.scale == {"bf16": 1, "fp8": 2} and rolled.active == "bf16"
    # Written in this order: the shrinking Deployment first, so that the desired replicas never
    # ask for 6 GPUs of 4 between the two writes.
    assert list(rolled.scale) == ["bf16", "fp8"]
    assert [e.reason for e in rolled.events] == ["SwitchRolling"]
    # fp8 Ready at 2 of 3: bf16 goes and fp8 takes the whole budget (capped at its target 3).
    half = {"bf16": VariantDeployment(1, 1, 1), "fp8": VariantDeployment(2, 2, 2)}
    last = run(s, None, status=status, deployments=half, now=NOW + 60)
    assert last.scale == {"bf16": 0, "fp8": 3} and list(last.scale) == ["bf16", "fp8"]


def test_a_failing_worker_pod_turns_workers_healthy_false_with_a_warning_naming_why() -> None:
    from grm_operator.control.podhealth import PodFailure

    healthy = run(spec(), Intent("None", "x"))
    cond = {c["type"]: c for c in healthy.status["conditions"]}["WorkersHealthy"]
    assert (cond["status"], cond["reason"]) == ("True", "AsExpected")
    why = PodFailure("ModelFetchFailed", "init container fetch-model exited 1 (Error): AccessDenied")
    failing = {"bf16": VariantDeployment(2, 2, 1, failed=1, failure=why), "fp8": VariantDeployment()}
    p = run(
        spec(),
        Intent("None", "x"),
        status={"activeVariant": "bf16", **healthy.status},
        deployments=failing,
        now=NOW + 15,
    )
    cond = {c["type"]: c for c in p.status["conditions"]}["WorkersHealthy"]
    assert (cond["status"], cond["reason"]) == ("False", "ModelFetchFailed")
    assert cond["message"] == (
        "variant bf16: 1 pod(s) failing: init container fetch-model exited 1 (Error): AccessDenied"
    )
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "ModelFetchFailed")]
