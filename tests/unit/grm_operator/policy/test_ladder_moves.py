"""Moves on the quality ladder that are due at once, and the step-up's look-back over bursts.

* A current point that cannot hold the SLO within its budget moves up to a better point that
  can (after URGENT_MOVE_S of its own failure, whatever the step-up's timer says), instead of
  waiting for the step-up rules meant for a fleet at rest.
* A budget the variant does not admit (a switch's bridge, a raised floor) moves to the nearest
  admissible budget of the same variant, not to the best point.
* With a sample lever, stepping back up to k = 4 after a burst waits until the burst has left the
  burst memory, so the next burst finds the budget that the burst floor was sized for.

The spec is the benchmark's ladder (tests/unit/grm_operator/policy/test_burst_floor.py): bf16 on 2 GPUs, fp8
and int4 on 1, 16 GPUs, samples 1–4, floor 0.97.
"""

from __future__ import annotations

from test_burst_floor import BURST, WINDOW, ladder_spec, run

from grm_operator.policy import PolicyState, Rule
from grm_operator.policy.capacity import DEFAULT_TAIL, Workload, operating_points, replica_capacity
from grm_operator.policy.decide import BURST_MEMORY_WINDOWS, URGENT_MOVE_S
from support.fleet import Fleet

PERIOD = 15.0


def capacity(label: str) -> float:
    spec = ladder_spec(k_min=1)
    point = next(p for p in operating_points(spec) if p.label == label)
    return replica_capacity(spec, point.variant, Workload(1000.0, 300.0), 1.0, DEFAULT_TAIL)


def quality(label: str) -> float:
    return next(p.quality for p in operating_points(ladder_spec(k_min=1)) if p.label == label)


def test_a_point_that_cannot_hold_the_slo_moves_up_to_a_better_one_that_can() -> None:
    spec = ladder_spec(k_min=1)
    # 8 bf16 replicas (all 16 GPUs) at k = 1 serve 8 × 5.2 seq/s; 16 fp8 replicas at k = 2 serve
    # 16 × 6.4 / 2 score requests/s, and fp8×k2 is the better point (0.982 > 0.974).
    rate = (8 * capacity("bf16×k1") + 16 * capacity("fp8×k2") / 2) / 2
    assert 8 * capacity("bf16×k1") < rate < 16 * capacity("fp8×k2") / 2
    assert quality("fp8×k2") > quality("bf16×k1")
    fleet = Fleet(spec, samples=1)
    fleet.desired["bf16"] = 8
    fleet.pods["bf16"] = [0.0] * 8
    now, decisions = 0.0, []
    while now <= 2 * URGENT_MOVE_S:
        decisions.append((now, fleet.tick(now, rate)))
        now += PERIOD
    switches = [(t, d) for t, d in decisions if d.action == "SwitchVariant"]
    assert switches, [d.reason for _, d in decisions]
    t, switch = switches[0]
    # Not on one window's evidence, and not after a 5-minute step-up window either.
    assert URGENT_MOVE_S <= t <= URGENT_MOVE_S + PERIOD, t
    assert (switch.rule, switch.variant, switch.samples) == (Rule.URGENT_MOVE, "fp8", 2), switch
    # Until then it waits, on bf16×k1.
    assert {(d.action, d.rule, d.variant, d.samples) for u, d in decisions if u < t} == {
        ("None", Rule.URGENT_MOVE_PENDING, "bf16", 1)
    }


def test_the_urgent_move_waits_for_its_own_failure_not_for_an_earlier_step_up_fit() -> None:
    # A step up had fitted for five minutes (betterSince, the step-up's timer) when the load rose
    # past what 8 bf16 replicas at k = 1 serve: the current point has failed for one window only,
    # which is no reason to replace the fleet at once (the code trace's bursts last 10-60 s).
    spec = ladder_spec(k_min=1)
    rate = (8 * capacity("bf16×k1") + 16 * capacity("fp8×k2") / 2) / 2
    fleet = Fleet(spec, samples=1)
    fleet.desired["bf16"] = 8
    fleet.pods["bf16"] = [0.0] * 8
    start = 600.0
    fleet.state = fleet.state.evolve(better_since=start - 300.0)
    first = fleet.tick(start, rate)
    assert (first.action, first.rule) == ("None", Rule.URGENT_MOVE_PENDING), first.reason
    assert fleet.state.failing_since == start
    now, switched_at = start, None
    while switched_at is None and now <= start + 2 * URGENT_MOVE_S:
        now += PERIOD
        if fleet.tick(now, rate).action == "SwitchVariant":
            switched_at = now
    assert switched_at is not None and switched_at - start >= URGENT_MOVE_S, switched_at
    # Status carries the timer like the others (a restarted operator keeps waiting, not anew).
    assert PolicyState.from_dict(PolicyState(failing_since=12.5).to_dict()).failing_since == 12.5


def test_an_inadmissible_budget_moves_to_the_nearest_admissible_one_of_the_same_variant() -> None:
    # fp8×k1 (0.970 × 0.995 < 0.97) is what a switch from bf16×k1 leaves behind. The best point
    # (bf16×k4) would be a switch and a jump to 4 samples; fp8×k2 is one step.
    spec = ladder_spec(k_min=1)
    assert "fp8×k1" not in {p.label for p in operating_points(spec)}
    fleet = Fleet(spec, active="fp8", samples=1)
    decision = fleet.tick(0.0, 0.5)
    assert (decision.action, decision.rule) == ("SetSamples", Rule.INADMISSIBLE_BUDGET), decision.reason
    assert (decision.variant, decision.samples) == ("fp8", 2)


def test_with_a_sample_lever_the_step_up_waits_for_the_burst_to_leave_the_burst_memory() -> None:
    series = run(ladder_spec(k_min=1), BURST[1] + BURST_MEMORY_WINDOWS * WINDOW + 2 * WINDOW)
    step_up = next(t for t, _, d in series if d.action == "SetSamples" and d.samples == 4)
    assert series[0][2].samples == 4 and min(d.samples for _, _, d in series) == 1  # the burst went to k = 1
    # The scale-down window alone would allow it one window after the burst (+ one to fit).
    assert step_up >= BURST[1] + BURST_MEMORY_WINDOWS * WINDOW - WINDOW, step_up
    assert step_up <= BURST[1] + BURST_MEMORY_WINDOWS * WINDOW + WINDOW + 2 * PERIOD, step_up
