"""The policy adapter hands the autoscaler's pod counts to the policy, including since when pods
are unscheduled (spec.scaling.pendingGrace counts from there), and runs the live-agreement watch
whose demotions the policy's ladder skips and the plan writes to status (condition, Events), and
the cold starts measured on the pods, which the policy keeps in status."""

from __future__ import annotations

from typing import Any

import pytest

from grm_operator.control.actuation import VariantDeployment, plan
from grm_operator.control.builders.modelload import startup_budget_s
from grm_operator.control.rollout import to_rfc3339
from grm_operator.handlers.autoscale import cold_starts_of, pod_view
from grm_operator.handlers.policy_adapter import PodCounts, decide_intent
from grm_operator.metrics import Reading
from support.policy import make_signals, make_spec

NOW = 10_000.0


@pytest.mark.parametrize(("unscheduled_for", "switches"), [(60.0, False), (600.0, True)])
def test_pending_pods_reach_the_policy_with_their_age(unscheduled_for: float, switches: bool) -> None:
    # 4 bf16 replicas asked, 2 Ready, 2 unscheduled, under a load that needs all 4 (default grace 5m).
    total = make_signals(4.0, pods=2, e2e_p95=30.0, ttft_p95=2.0, waiting=20.0, sample_age_s=1.0)
    intent = decide_intent(
        spec=make_spec(),
        status={"activeVariant": "bf16", "samples": 8},
        reading=Reading(total=total, variants={"bf16": total}),
        pods={"bf16": PodCounts(ready=2, pending=2, pending_since=(NOW - unscheduled_for,) * 2)},
        deployments={"bf16": VariantDeployment(desired=4, replicas=4, ready=2, pending=2)},
        now=NOW,
    )
    assert (intent.variant == "fp8") is switches, intent.reason


def _tick(spec: Any, status: dict[str, Any], fp8: Any, now: float) -> tuple[Any, Any]:
    """One autoscaler tick, pure: adapter (watch + decide) then plan; returns (intent, plan)."""
    reading = Reading(total=fp8, variants={"fp8": fp8})
    deployments = {"fp8": VariantDeployment(desired=2, replicas=2, ready=2)}
    intent = decide_intent(
        spec=spec,
        status=status,
        reading=reading,
        pods={"fp8": PodCounts(ready=2, pending=0)},
        deployments=deployments,
        now=now,
    )
    step = plan(
        spec=spec,
        generation=1,
        status=status,
        deployments=deployments,
        observed=fp8,
        metrics_error=None,
        intent=intent,
        now=now,
    )
    return intent, step


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_live_disagreement_demotes_the_variant_until_it_is_redefined() -> None:
    spec = make_spec()
    # fp8 serves; its workers compared 200 verdicts with bf16's over the shadow window, 120 agreed.
    fp8 = make_signals(1.0, pods=2, sample_age_s=1.0, shadow_verdicts=200.0, shadow_agreements=120.0)
    status: dict[str, Any] = {"activeVariant": "fp8", "samples": 8}
    intent, step = _tick(spec, status, fp8, NOW)
    # Demoted: the ladder skips it, so the policy moves off it at once.
    assert intent.variant != "fp8" and "demoted" in intent.reason, intent.reason
    mark = next(v for v in step.status["variants"] if v["name"] == "fp8")["demoted"]
    assert mark["compared"] == 200 and mark["agreed"] == 120 and mark["agreement"] == 0.6
    assert mark["agreementLow"] < 0.6 < mark["agreementHigh"] < 0.97 == mark["floor"]
    assert _conditions(step.status)["LiveQualityMet"] == ("False", "AgreementBelowFloor")
    assert [e.reason for e in step.events if e.reason == "VariantDemoted"] == ["VariantDemoted"]
    assert "120/200" in next(e.message for e in step.events if e.reason == "VariantDemoted")
    # Next tick, the status as written: still demoted, no new Event, nothing to rewrite there.
    status = {**status, **step.status}
    clean = make_signals(1.0, pods=2, sample_age_s=1.0, shadow_verdicts=500.0, shadow_agreements=500.0)
    intent, again = _tick(spec, status, clean, NOW + 15)
    assert "fp8" in (intent.demoted or {}) and not [e for e in again.events if e.reason == "VariantDemoted"]
    assert "variants" not in again.status or again.status["variants"] == status["variants"]
    # Re-evaluated (re-quantised: another checkpoint): back on the ladder.
    variants = [v.model_dump(by_alias=True, exclude_none=True) for v in spec.variants]
    variants[1]["uri"] = "pvc://models/grm-fp8-v2"
    intent, lifted = _tick(make_spec(variants=variants), status, clean, NOW + 30)
    assert intent.demoted == {}
    assert all("demoted" not in v for v in lifted.status["variants"])
    assert _conditions(lifted.status)["LiveQualityMet"] == ("True", "AgreementAboveFloor")
    assert [e.reason for e in lifted.events if e.reason == "VariantReinstated"] == ["VariantReinstated"]


def test_too_little_evidence_or_agreement_above_the_floor_keeps_the_variant() -> None:
    for compared, agreed in ((50.0, 10.0), (400.0, 399.0)):
        fp8 = make_signals(1.0, pods=2, sample_age_s=1.0, shadow_verdicts=compared, shadow_agreements=agreed)
        intent, step = _tick(make_spec(), {"activeVariant": "fp8", "samples": 8}, fp8, NOW)
        assert intent.demoted == {} and "demoted" not in intent.reason
        assert _conditions(step.status)["LiveQualityMet"] == ("True", "AgreementAboveFloor")


def test_a_fresh_passing_evaluation_lifts_the_demotion_once_and_the_old_window_is_not_judged_again() -> None:
    spec = make_spec(precision={"qualityPolicy": "Measured", "shadow": {"window": "10m"}})
    bad = make_signals(1.0, pods=2, sample_age_s=1.0, shadow_verdicts=200.0, shadow_agreements=120.0)
    quality = {"value": 0.99, "low": 0.975, "high": 0.998, "items": 400, "measured": to_rfc3339(NOW - 3600)}
    # fp8 admitted by its evaluation (measured long before), serving, then demoted live.
    status: dict[str, Any] = {
        "activeVariant": "fp8",
        "samples": 8,
        "variants": [
            {"name": "bf16", "gate": "Admitted"},
            {"name": "fp8", "gate": "Admitted", "quality": dict(quality)},
            {"name": "int4", "gate": "Rejected"},
        ],
    }
    _, step = _tick(spec, status, bad, NOW)
    status = {**status, **step.status}
    assert "demoted" in next(v for v in status["variants"] if v["name"] == "fp8")
    # The measurement that admitted it before is no fresh evidence: it stays demoted.
    intent, kept = _tick(spec, status, bad, NOW + 15)
    assert "fp8" in (intent.demoted or {}) and not [e for e in kept.events if e.reason == "VariantReinstated"]
    # The gate re-evaluated it (grm.dev/re-evaluate, a new set or checkpoint) after the demotion.
    fp8 = next(v for v in status["variants"] if v["name"] == "fp8")
    fp8["quality"] = {**quality, "measured": to_rfc3339(NOW + 30), "reEvaluate": "t2"}
    now = NOW + 60
    intent, lifted = _tick(spec, status, bad, now)
    entry = next(v for v in lifted.status["variants"] if v["name"] == "fp8")
    assert intent.demoted == {} and "demoted" not in entry
    assert entry["reinstated"]["reason"] == "ReEvaluated" and entry["reinstated"]["since"] == to_rfc3339(now)
    (event,) = [e for e in lifted.events if e.reason == "VariantReinstated"]
    assert "re-evaluated after its demotion" in event.message and "n=400" in event.message
    assert _conditions(lifted.status)["LiveQualityMet"] == ("True", "AgreementAboveFloor")
    # The same bad window on the next ticks (within 10 min of the lift): not judged again.
    status = {**status, **lifted.status}
    intent, after = _tick(spec, status, bad, now + 300)
    assert intent.demoted == {} and not [e for e in after.events if e.reason == "VariantDemoted"]
    # A full window of its own later, still disagreeing: demoted again, and the same measurement
    # does not lift it a second time.
    intent, again = _tick(spec, status, bad, now + 600)
    status = {**status, **again.status}
    assert "fp8" in (intent.demoted or {})
    assert "reinstated" not in next(v for v in status["variants"] if v["name"] == "fp8")
    intent, _ = _tick(spec, status, bad, now + 615)
    assert "fp8" in (intent.demoted or {})


def test_the_pods_cold_starts_reach_status_once_and_survive_a_restart() -> None:
    # Two fp8 pods bound at T and Ready 40 and 50 s later (2026-01-01T00:00:00Z is 1767225600).
    def ready_pod(name: str, ready: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": "rl", "labels": {"grm.dev/variant": "fp8"}},
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": "True", "lastTransitionTime": ready},
                ],
                "containerStatuses": [
                    {
                        "name": "worker",
                        "restartCount": 0,
                        "state": {"running": {"startedAt": "2026-01-01T00:00:20Z"}},
                    }
                ],
            },
        }

    spec = make_spec()
    views = [
        pod_view(ready_pod("w-a", "2026-01-01T00:00:40Z")),
        pod_view(ready_pod("w-b", "2026-01-01T00:00:50Z")),
    ]
    budget = startup_budget_s(spec, spec.variant("fp8"))
    seen = cold_starts_of([v for v in views if v is not None], budget)
    assert [(s.pod, s.seconds) for s in seen] == [("w-a", 40.0), ("w-b", 50.0)]
    fp8 = make_signals(4.0, pods=2, e2e_p95=8.0, ttft_p95=0.2, sample_age_s=1.0)

    def tick(status: dict[str, Any]) -> dict[str, Any]:
        intent = decide_intent(
            spec=spec,
            status=status,
            reading=Reading(total=fp8, variants={"fp8": fp8}),
            pods={"fp8": PodCounts(ready=2, pending=0, cold_starts=seen)},
            deployments={"fp8": VariantDeployment(desired=2, replicas=2, ready=2)},
            now=1767225600.0 + 60,
        )
        return intent.state

    status = {"activeVariant": "fp8", "samples": 8}
    state = tick(status)
    assert state["coldStarts"] == {"fp8": [["w-a", 1767225640.0, 40.0], ["w-b", 1767225650.0, 50.0]]}
    # A restarted operator reads them back from status; the same Ready pods offered again add nothing.
    again = tick({**status, "policyState": state})
    assert again["coldStarts"] == state["coldStarts"]
