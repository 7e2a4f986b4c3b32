"""The policy adapter hands the autoscaler's pod counts to the policy, including since when pods
are unscheduled (spec.scaling.pendingGrace counts from there), and runs the live-agreement watch
whose demotions the policy's ladder skips and the plan writes to status (condition, Events)."""

from __future__ import annotations

from typing import Any

import pytest

from grm_operator.control.actuation import VariantDeployment, plan
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
