"""Quality watched while serving: the Wilson interval, the demotion rule, and the ladder that
skips demoted variants (in ``decide`` and so in the simulator, which runs the same policy)."""

from __future__ import annotations

import math

import pytest

from grm_operator.policy import PolicyState
from grm_operator.policy.capacity import DEFAULT_TAIL, Workload, operating_points, replica_capacity
from grm_operator.policy.decide import decide
from grm_operator.policy.quality_watch import (
    Demotion,
    LiveAgreement,
    Measurement,
    Reinstatement,
    comparisons_needed,
    variant_digest,
    watch_quality,
)
from grm_operator.quality.stats import perfect_record_needed, wilson_interval
from support.policy import OUTPUT, PROMPT, make_observation, make_signals, make_spec


def test_comparisons_a_perfect_record_needs_to_clear_a_floor() -> None:
    assert perfect_record_needed(0.97) == 125 and perfect_record_needed(0.99) == 381
    assert perfect_record_needed(0.0) == 0
    for floor in (0.9, 0.97, 0.99):
        n = perfect_record_needed(floor)
        assert wilson_interval(n, n).low >= floor > wilson_interval(n - 1, n - 1).low
    assert comparisons_needed(make_spec()) == 125  # floor 0.97, minComparisons 100
    assert comparisons_needed(make_spec(precision={"shadow": {"minComparisons": 400}})) == 400


def test_a_variant_below_the_floor_is_demoted_with_its_numbers() -> None:
    spec = make_spec()  # floor 0.97
    watch = watch_quality(
        spec,
        {"fp8": LiveAgreement(200, 186), "int4": LiveAgreement(200, 199), "bf16": LiveAgreement(200, 10)},
        {},
        now=1000.0,
    )
    # 186/200 = 0.93: lower bound 0.886 < 0.97. 199/200: 0.972 ≥ 0.97, kept on the ladder. The
    # reference (bf16) is what the others are compared with: never demoted.
    assert set(watch.demoted) == {"fp8"} and watch.new == ("fp8",) and watch.lifted == ()
    d = watch.demoted["fp8"]
    assert (d.compared, d.agreed, d.since, d.floor) == (200, 186, 1000.0, 0.97)
    assert d.low == pytest.approx(0.8859, abs=1e-4) and d.agreement == pytest.approx(0.93)
    assert d.digest == variant_digest(spec.variant("fp8"))
    assert "0.930 (186/200 verdicts)" in d.message and "[0.886, 0.958]" in d.message


def test_too_few_comparisons_never_demote() -> None:
    spec = make_spec()
    # 124 of 124 (perfect) has a lower bound 0.9700 - ε: no evidence against the variant yet; 0 of
    # 124 is damning but 124 < 125 comparisons needed all the same (no early verdicts either way).
    for agreed in (124, 0):
        assert watch_quality(spec, {"fp8": LiveAgreement(124, agreed)}, {}, now=0.0).demoted == {}
    assert watch_quality(spec, {"fp8": LiveAgreement(125, 0)}, {}, now=0.0).new == ("fp8",)
    # No floor: nothing to fall below.
    no_floor = make_spec(precision={"minQuality": 0.0})
    assert watch_quality(no_floor, {"fp8": LiveAgreement(500, 0)}, {}, now=0.0).demoted == {}
    # Counters read across a restart may overshoot by a little (extrapolated increases): clamped.
    assert watch_quality(spec, {"fp8": LiveAgreement(300, 301.5)}, {}, now=0.0).demoted == {}


def test_a_demotion_stays_until_the_variant_is_redefined() -> None:
    spec = make_spec()
    first = watch_quality(spec, {"fp8": LiveAgreement(200, 100)}, {}, now=10.0)
    # No more evidence (a demoted variant serves nothing), or good evidence: it stays demoted.
    for evidence in ({}, {"fp8": LiveAgreement(500, 500)}):
        again = watch_quality(spec, evidence, first.demoted, now=20.0)
        assert again.demoted == first.demoted and again.new == () and again.lifted == ()
    variants = [v.model_dump(by_alias=True, exclude_none=True) for v in spec.variants]
    # Its declared quality edited (or replaced by a measurement): the same variant, still demoted.
    variants[1]["quality"] = 0.999
    relabelled = watch_quality(make_spec(variants=variants), {}, first.demoted, now=25.0)
    assert relabelled.demoted == first.demoted and relabelled.lifted == ()
    # Re-evaluated: the variant points at another checkpoint; the old demotion is lifted.
    variants[1]["uri"] = "pvc://models/grm-fp8-requantised"
    rebuilt = make_spec(variants=variants)
    lifted = watch_quality(rebuilt, {}, first.demoted, now=30.0)
    assert lifted.demoted == {} and lifted.lifted == ("fp8",)
    # A variant removed from the spec takes its demotion with it.
    gone = make_spec(variants=[variants[0], variants[2]])
    assert watch_quality(gone, {}, first.demoted, now=30.0).demoted == {}


MEASURED = {"qualityPolicy": "Measured", "minQuality": 0.97}


def _passing(at: float, *, low: float = 0.975, admitted: bool = True) -> Measurement:
    return Measurement(at=at, value=0.99, low=low, high=0.998, items=400, admitted=admitted)


def test_a_demotion_lifts_only_on_an_evaluation_finished_after_it() -> None:
    spec = make_spec(precision=MEASURED)
    first = watch_quality(spec, {"fp8": LiveAgreement(200, 100)}, {}, now=100.0)
    assert first.new == ("fp8",)
    # The measurement that admitted fp8 before its demotion (the same evidence as before) lifts
    # nothing, nor does a fresh one the gate rejected or whose bound is under the floor.
    for stale in (
        _passing(50.0),
        _passing(100.0),
        _passing(150.0, admitted=False),
        _passing(150.0, low=0.96),
    ):
        kept = watch_quality(spec, {}, first.demoted, now=200.0, measured={"fp8": stale})
        assert kept.demoted == first.demoted and kept.lifted == () and kept.reinstated == {}
    # A new evaluation (a new set, checkpoint, or grm.dev/re-evaluate value) that passes lifts it.
    lifted = watch_quality(spec, {}, first.demoted, now=200.0, measured={"fp8": _passing(150.0)})
    assert lifted.demoted == {} and lifted.lifted == ("fp8",)
    back = lifted.reinstated["fp8"]
    assert (back.since, back.reason) == (200.0, "ReEvaluated")
    assert "0.990 (95% interval 0.975–0.998, n=400)" in back.message


def test_after_a_lift_the_old_window_never_demotes_again() -> None:
    spec = make_spec(precision={**MEASURED, "shadow": {"window": "10m"}})
    bad = {"fp8": LiveAgreement(200, 100)}
    first = watch_quality(spec, bad, {}, now=0.0)
    lifted = watch_quality(spec, bad, first.demoted, now=60.0, measured={"fp8": _passing(30.0)})
    # The lift's own tick and the rest of the 10 min window still see the comparisons that demoted
    # it: judging them again would demote it the tick after its lift (flapping).
    assert lifted.demoted == {} and lifted.new == ()
    during = watch_quality(spec, bad, {}, now=60.0 + 599, reinstated=lifted.reinstated)
    assert during.demoted == {} and during.reinstated == lifted.reinstated
    # A full window of its own after the lift that still disagrees: demoted again (the record of
    # the lift goes), and the measurement that lifted it before does not lift it a second time.
    again = watch_quality(spec, bad, {}, now=60.0 + 600, reinstated=lifted.reinstated)
    assert again.new == ("fp8",) and again.reinstated == {}
    stays = watch_quality(spec, {}, again.demoted, now=900.0, measured={"fp8": _passing(30.0)})
    assert stays.demoted == again.demoted and stays.lifted == ()


def test_declared_lifts_on_a_new_re_evaluate_value_only() -> None:
    spec = make_spec()  # Declared: nothing is evaluated, the user's word stands
    first = watch_quality(spec, {"fp8": LiveAgreement(200, 100)}, {}, now=10.0, request="t1")
    assert first.demoted["fp8"].request == "t1"
    # The value present at demotion, or none, asks for nothing; measurements do not count here.
    for request in ("t1", None):
        kept = watch_quality(
            spec, {}, first.demoted, now=20.0, request=request, measured={"fp8": _passing(15.0)}
        )
        assert kept.demoted == first.demoted
    lifted = watch_quality(spec, {}, first.demoted, now=20.0, request="t2")
    assert lifted.demoted == {} and lifted.reinstated["fp8"] == Reinstatement(
        20.0,
        "ReEvaluationRequested",
        "fp8 re-admitted by grm.dev/re-evaluate=t2 (precision.qualityPolicy Declared: the declared "
        "quality stands): back on the quality ladder",
    )


def _demoted(spec_variant: str) -> Demotion:
    return Demotion(0.0, 200, 100, 0.43, 0.57, 0.97, variant_digest(make_spec().variant(spec_variant)))


def test_operating_points_skip_excluded_variants_but_never_a_pin() -> None:
    spec = make_spec()
    assert {p.variant.name for p in operating_points(spec)} == {"bf16", "fp8", "int4"}
    assert {p.variant.name for p in operating_points(spec, excluded={"fp8"})} == {"bf16", "int4"}
    assert {p.variant.name for p in operating_points(spec, "fp8", excluded={"fp8"})} == {"fp8"}


def _overload() -> float:
    """A sequence rate that bf16 cannot serve within maxGPUs 12 (6 replicas) but fp8 and int4 can
    (12 one-GPU replicas)."""
    spec = make_spec()
    work = Workload(PROMPT, OUTPUT)

    def cap(variant: str) -> float:
        point = next(p for p in operating_points(spec) if p.variant.name == variant)
        return replica_capacity(spec, point.variant, work, 1.0, DEFAULT_TAIL)

    rate = 1.3 * 6 * cap("bf16")
    assert rate < 0.8 * 12 * min(cap("fp8"), cap("int4")), "the spec no longer has the needed shape"
    return rate


@pytest.mark.parametrize(("demoted", "expected"), [(frozenset(), "fp8"), (frozenset({"fp8"}), "int4")])
def test_decide_steps_down_past_a_demoted_variant(demoted: frozenset[str], expected: str) -> None:
    spec = make_spec()
    rate = _overload()
    obs = make_observation(
        "bf16", make_signals(rate, pods=6, sample_age_s=1.0), now=1000.0, ready=6, samples=8
    )
    obs = type(obs)(**{**obs.__dict__, "demoted": demoted})
    decision, _ = decide(obs, PolicyState(), spec, 1000.0)
    assert (decision.action, decision.variant) == ("SwitchVariant", expected), decision.reason


def test_decide_moves_off_a_demoted_active_variant_at_once() -> None:
    spec = make_spec()
    obs = make_observation("fp8", make_signals(1.0, pods=2, sample_age_s=1.0), now=1000.0, ready=2, samples=8)
    kept, _ = decide(obs, PolicyState(), spec, 1000.0)
    obs = type(obs)(**{**obs.__dict__, "demoted": frozenset({"fp8"})})
    moved, _ = decide(obs, PolicyState(), spec, 1000.0)
    assert kept.variant == "fp8" or kept.action != "SwitchVariant"
    assert moved.action == "SwitchVariant" and moved.variant != "fp8", moved.reason
    assert "demoted" in moved.reason
    assert not math.isnan(moved.replicas or 0)
