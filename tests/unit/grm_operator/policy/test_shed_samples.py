"""Sample shedding (spec.scoring.shedSamples): which floor each variant's workers shed to, and the
policy counting the samples they shed as demand.

The spec is the benchmark's ladder (tests/unit/grm_operator/policy/test_burst_floor.py): bf16 on 2 GPUs, fp8
and int4 on 1, samples 1–4, floor 0.97: bf16 admits k = 1, 2, 4, fp8 k = 2, 4, int4 only k = 4.
"""

from __future__ import annotations

import dataclasses

import pytest
from test_burst_floor import BURST, PERIOD, WINDOW, ladder_spec, run

from grm_operator.policy import Decision, Observation, PolicyState, Rule, decide
from grm_operator.policy.capacity import shed_floor
from grm_operator.policy.decide import BURST_MEMORY_WINDOWS
from grm_operator.policy.signals import Signals
from support.fleet import Fleet
from support.policy import OUTPUT, PROMPT, make_observation, make_spec


def test_the_shed_floor_is_the_fewest_admissible_samples_of_the_variant() -> None:
    assert make_spec().scoring.shed_samples == "OnQueue"  # the default
    spec = ladder_spec(k_min=1, shed="OnQueue")
    assert shed_floor(spec, "bf16") == 1
    assert shed_floor(spec, "fp8") == 2  # fp8×k1 (0.970 × 0.995) is below the floor
    assert shed_floor(spec, "int4") is None  # only k = 4 is admissible: nothing to shed
    assert shed_floor(ladder_spec(k_min=2, shed="OnQueue"), "bf16") == 2


def test_no_shed_floor_when_shedding_is_off_or_the_budget_is_fixed() -> None:
    off = ladder_spec(k_min=1)
    fixed = make_spec()  # samples 8–8
    for spec in (off, fixed):
        assert [shed_floor(spec, v.name) for v in spec.variants] == [None, None, None]


def _observation(rps: float, shed_sps: float | None) -> Observation:
    """A bf16 fleet of 2 at k = 4 whose workers completed ``rps`` sequences/s and shed ``shed_sps``,
    with the latencies of the closed-loop fleet at 1 score request/s."""
    fleet = Fleet(ladder_spec(k_min=1), samples=4)
    fleet.desired["bf16"] = 2
    fleet.pods["bf16"] = [0.0, 0.0]
    steady = fleet.observe(100.0, 1.0).total
    assert steady is not None
    total = dataclasses.replace(
        steady, rps=rps, prompt_tps=rps * PROMPT, generation_tps=rps * OUTPUT, shed_sps=shed_sps
    )
    return make_observation("bf16", total, now=100.0, ready=2, samples=4)


def test_shed_samples_count_as_demand() -> None:
    spec = ladder_spec(k_min=1)
    # 120 seq/s at k = 4 (30 score requests/s). Under a queue the workers served half of the
    # requests at k = 1: 60 + 15 sequences/s completed, 45 samples/s shed.
    full, _ = decide(_observation(120.0, None), PolicyState(), spec, 100.0)
    shed, _ = decide(_observation(75.0, 45.0), PolicyState(), spec, 100.0)
    blind, _ = decide(_observation(75.0, None), PolicyState(), spec, 100.0)
    assert shed.demand_seq_rate == full.demand_seq_rate, shed.reason
    # Per sample: the 30 score requests/s of the 120 seq/s at k = 4, whatever budget is decided.
    assert shed.demand_seq_rate / shed.samples == pytest.approx(30.0), shed.reason
    assert shed.replicas == full.replicas > 2, (shed.reason, full.reason)
    assert blind.replicas < full.replicas, (blind.reason, full.reason)


def test_signals_carry_shed_samples_as_unknown_by_default() -> None:
    # Workers without the counter (another engine front, shedding off) leave it unknown, which the
    # policy reads as nothing shed.
    assert Signals().shed_sps is None


def step_up(shed: str) -> tuple[float, int, Decision]:
    """When and with how many replicas the fleet goes back to k = 4 after the idle → burst →
    idle load of test_burst_floor."""
    series = run(ladder_spec(k_min=1, shed=shed), BURST[1] + BURST_MEMORY_WINDOWS * WINDOW + 2 * WINDOW)
    return next((t, n, d) for t, n, d in series if d.action == "SetSamples" and d.samples == 4)


def test_with_shedding_the_step_up_provisions_the_burst_peak_at_the_floor_not_at_the_budget() -> None:
    # Workers that shed run the next burst at k = 1 whatever the budget, so going back to k = 4
    # needs the current demand at 4 and the burst memory's peak at 1 (the burst floor's sizing),
    # and is due one scale-down window after the burst instead of three.
    t_shed, replicas, decision = step_up("OnQueue")
    assert BURST[1] + WINDOW <= t_shed <= BURST[1] + WINDOW + 2 * PERIOD, decision.reason
    assert (decision.rule, decision.variant, decision.needed) == (Rule.STEP_UP, "bf16", 3), decision.reason
    assert replicas == 3
    t_off, _, decision = step_up("Off")
    assert t_off >= BURST[1] + (BURST_MEMORY_WINDOWS - 1) * WINDOW, decision.reason
