"""Time-stepped scenarios: the policy in a closed loop with a steady-state fleet (support.fleet).

Each test id is the sentence it checks. Control period 15 s, like the default.
"""

from __future__ import annotations

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy import PolicyState, Rule, decide
from support.fleet import Fleet
from support.policy import make_observation, make_signals, make_spec

PERIOD = 15.0
FP8_ONLY = [{"name": "fp8", "precision": "fp8", "quality": 1.0}]


def test_a_load_spike_scales_out_within_two_ticks() -> None:
    fleet = Fleet(make_spec(variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}]))
    fleet.run([(300, 0.3), (330, 3.0)], PERIOD)
    assert fleet.replicas() >= 5, [d.reason for d in fleet.decisions[-3:]]
    assert any(d.action == "ScaleUp" for d in fleet.decisions[-2:])


def test_a_slow_ramp_is_provisioned_ahead_of_the_load() -> None:
    spec = make_spec(variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}])
    fleet = Fleet(spec)
    # 0.2 → 3.2 score/s over 20 minutes: +0.0025 score/s², i.e. +0.2 seq/s every 10 s at k=8
    now = 0.0
    late = 0
    while now < 1200:
        rate = 0.2 + 3.0 * now / 1200
        fleet.tick(now, rate)
        obs = fleet.observe(now + PERIOD, 0.2 + 3.0 * (now + PERIOD) / 1200)
        if obs.total and obs.total.ttft_p95 is not None and obs.total.ttft_p95 > 0.5:
            late += 1
        now += PERIOD
    # the forecast over the 75 s cold start keeps the SLO on (almost) every tick of the ramp
    assert late <= 2


def test_drop_to_idle_scales_in_only_after_the_stabilisation_window() -> None:
    fleet = Fleet(make_spec(variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}]))
    fleet.run([(600, 3.0)], PERIOD)
    busy = fleet.replicas()
    assert busy >= 4
    fleet.run([(600 + 240, 0.05)], PERIOD)  # 4 minutes idle: still inside the 5 min window
    # (run() restarts at t=0: drive absolute times by hand instead)
    fleet2 = Fleet(make_spec(variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}]))
    now = 0.0
    while now < 600:
        fleet2.tick(now, 3.0)
        now += PERIOD
    peak = fleet2.replicas()
    while now < 600 + 240:
        fleet2.tick(now, 0.05)
        now += PERIOD
    assert fleet2.replicas() == peak
    while now < 600 + 420:
        fleet2.tick(now, 0.05)
        now += PERIOD
    assert fleet2.replicas() == 1
    assert fleet2.decisions[-1].action in ("None", "ScaleDown")
    downs = [d for d in fleet2.decisions if d.action == "ScaleDown"]
    assert downs and {d.rule for d in downs} == {Rule.SCALE_DOWN}


def test_noisy_load_does_not_flap() -> None:
    fleet = Fleet(make_spec())
    now = 0.0
    rates = [1.0, 1.4, 0.8, 1.2, 0.9, 1.5, 1.1, 0.7]
    for i in range(160):  # 40 minutes
        fleet.tick(now, rates[i % len(rates)])
        now += PERIOD
    switches = [d for d in fleet.decisions if d.action == "SwitchVariant"]
    scale_events = [d for d in fleet.decisions[40:] if d.action in ("ScaleUp", "ScaleDown")]
    assert len(switches) <= 1
    assert len(scale_events) <= 2, [d.reason for d in scale_events]


def test_metrics_outage_holds_and_never_scales_down() -> None:
    fleet = Fleet(make_spec(variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}]))
    now = 0.0
    while now < 300:
        fleet.tick(now, 3.0)
        now += PERIOD
    before = fleet.replicas()
    fleet.metrics_up = False
    while now < 900:
        d = fleet.tick(now, 0.05)
        assert (d.action, d.rule) == ("Hold", Rule.METRICS_UNAVAILABLE)
        assert d.metrics_available is False
        now += PERIOD
    assert fleet.replicas() == before


def test_stale_samples_hold_like_an_outage(spec: GRMDeploymentSpec) -> None:
    stale = make_observation(
        "bf16", make_signals(1.0, pods=2, sample_age_s=400.0), now=1000.0, ready=2, samples=8
    )
    d, state = decide(stale, PolicyState(), spec, 1000.0)
    assert (d.action, d.rule, d.replicas) == ("Hold", Rule.METRICS_STALE, 2)
    assert d.metrics_available is False
    assert state == PolicyState()


def test_pods_pending_with_no_gpus_step_down_the_ladder() -> None:
    # maxGPUs allows 6 bf16 replicas, but the cluster really has only 4 GPUs: 2 bf16 replicas run,
    # the rest stay Pending; the policy must move to fp8 (1 GPU each) instead of waiting.
    fleet = Fleet(make_spec(), cluster_gpus=4)
    now = 0.0
    while now < 600:
        fleet.tick(now, 1.2)
        now += PERIOD
    assert fleet.active == "fp8", [d.reason for d in fleet.decisions if d.action != "None"][:6]
    switch = next(d for d in fleet.decisions if d.action == "SwitchVariant")
    assert (switch.rule, switch.variant) == (Rule.SWITCH_DOWN, "fp8")


def test_a_prior_40_percent_wrong_gets_corrected() -> None:
    spec = make_spec(variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}])
    fleet = Fleet(spec, model_error=1.4)
    now = 0.0
    while now < 900:
        fleet.tick(now, 2.0)
        now += PERIOD
    assert 1.25 <= fleet.state.speed["fp8"] <= 1.55
    obs = fleet.observe(now, 2.0)
    assert obs.total is not None and obs.total.ttft_p95 is not None
    assert obs.total.ttft_p95 <= 0.5


def test_the_quality_floor_forbids_a_switch_below_it() -> None:
    spec = make_spec(precision={"minQuality": 0.999})  # only bf16 is admissible
    fleet = Fleet(spec)
    now = 0.0
    while now < 600:
        fleet.tick(now, 4.0)  # far beyond 6 bf16 replicas
        now += PERIOD
    assert fleet.active == "bf16"
    assert all(d.action != "SwitchVariant" for d in fleet.decisions)
    assert fleet.replicas() == 6  # maxGPUs 12 / 2 GPUs
    assert (fleet.decisions[-1].action, fleet.decisions[-1].rule) == ("None", Rule.NO_FEASIBLE_POINT)


def test_load_falling_switches_back_up_after_the_cooldown() -> None:
    spec = make_spec(precision={"switchCooldown": "5m"})
    fleet = Fleet(spec)
    now = 0.0
    while now < 900:
        fleet.tick(now, 2.8)  # 22.4 seq/s: bf16 needs 7+ replicas, 6 fit in 12 GPUs
        now += PERIOD
    assert fleet.active == "fp8"
    while now < 2400:
        fleet.tick(now, 0.2)
        now += PERIOD
    assert fleet.active == "bf16"
    ups = [d for d in fleet.decisions if d.action == "SwitchVariant" and d.variant == "bf16"]
    assert [d.rule for d in ups] == [Rule.STEP_UP]


def test_manual_mode_keeps_spec_replicas_but_may_switch_variant() -> None:
    spec = make_spec(scaling={"mode": "Manual", "replicas": 3, "minReplicas": 1, "maxReplicas": 8})
    fleet = Fleet(spec)
    now = 0.0
    while now < 600:
        fleet.tick(now, 1.5)
        now += PERIOD
    assert all(d.replicas == 3 for d in fleet.decisions)
    assert fleet.active == "fp8"


def test_pinned_precision_never_switches_but_scales() -> None:
    spec = make_spec(precision={"policy": "Pinned", "pinnedVariant": "bf16", "minQuality": 0.9})
    fleet = Fleet(spec)
    now = 0.0
    while now < 600:
        fleet.tick(now, 1.0)
        now += PERIOD
    assert fleet.active == "bf16"
    assert all(d.variant == "bf16" for d in fleet.decisions)
    assert fleet.replicas() > 1


def test_fewer_samples_before_lower_precision_when_quality_allows() -> None:
    spec = make_spec(
        scoring={"samples": {"min": 1, "max": 8}},
        precision={"minQuality": 0.98},
        variants=[
            {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 2},
            {"name": "int4", "precision": "awq-int4", "uri": "pvc://m/awq", "quality": 0.97},
        ],
    )
    fleet = Fleet(spec)
    now = 0.0
    while now < 600:
        fleet.tick(now, 2.5)  # 20 seq/s at k=8 needs 7 bf16 replicas, 6 fit; at k=4 it needs 3
        now += PERIOD
    assert fleet.active == "bf16"  # int4 is below the floor
    assert fleet.samples < 8  # k=4 keeps 0.987 ≥ 0.98


def test_state_round_trips_through_status() -> None:
    fleet = Fleet(make_spec())
    fleet.run([(300, 1.0)], PERIOD)
    data = fleet.state.to_dict()
    again = PolicyState.from_dict(data)
    assert again.to_dict() == data
    assert PolicyState.from_dict({"speed": {"fp8": "x"}, "demand": [[1, 2, 3]]}) == PolicyState()


def test_every_decision_is_a_sentence_with_numbers() -> None:
    fleet = Fleet(make_spec())
    fleet.run([(300, 0.2), (900, 1.8), (1200, 0.1)], PERIOD)
    for d in fleet.decisions:
        assert any(ch.isdigit() for ch in d.reason), d.reason
        assert len(d.reason) > 30


#: The rules each action may name (docs/policy.md §8).
RULES_OF_ACTION = {
    "Hold": {
        Rule.METRICS_UNAVAILABLE,
        Rule.NO_READY_WORKER,
        Rule.METRICS_STALE,
        Rule.NO_REQUEST_RATE,
        Rule.NO_OPERATING_POINT,
    },
    "SwitchVariant": {
        Rule.SWITCH_DOWN,
        Rule.SAMPLES_FIRST_TRAP,
        Rule.URGENT_MOVE,
        Rule.STEP_UP,
        Rule.INADMISSIBLE_BUDGET,
    },
    "ScaleUp": {Rule.SCALE_UP, Rule.PANIC, Rule.MANUAL_REPLICAS},
    "ScaleDown": {Rule.SCALE_DOWN, Rule.BURST_FLOOR, Rule.MANUAL_REPLICAS},
    "SetSamples": {
        Rule.STEP_DOWN,
        Rule.SAMPLES_FIRST,
        Rule.URGENT_SAMPLES_FIRST,
        Rule.NO_SURGE_ROOM,
        Rule.STEP_UP,
        Rule.URGENT_MOVE,
        Rule.INADMISSIBLE_BUDGET,
        Rule.COLD_START_BRIDGE,
    },
    "None": {
        Rule.STEP_UP_PENDING,
        Rule.STEP_UP_AWAITS_REPLICAS,
        Rule.URGENT_MOVE_PENDING,
        Rule.SWITCH_COOLDOWN,
        Rule.INADMISSIBLE_BUDGET,
        Rule.URGENT_MOVE,
        Rule.BURST_FLOOR,
        Rule.NO_FEASIBLE_POINT,
        Rule.STEADY,
    },
}


def test_every_decision_names_a_rule_its_action_admits() -> None:
    fleets = [
        Fleet(make_spec(scoring={"samples": {"min": 1, "max": 8}})),
        Fleet(make_spec(precision={"switchCooldown": "5m"})),
        Fleet(make_spec(), cluster_gpus=4),
        Fleet(make_spec(scaling={"mode": "Manual", "replicas": 3, "minReplicas": 1, "maxReplicas": 8})),
        Fleet(make_spec(variants=FP8_ONLY, scoring={"samples": {"min": 1, "max": 8}})),
    ]
    for fleet in fleets:
        fleet.run([(300, 0.2), (900, 2.8), (1500, 0.1), (1800, 4.0), (2400, 0.2)], PERIOD)
    fleets[0].metrics_up = False
    fleets[0].tick(2400.0, 1.0)
    decisions = [d for fleet in fleets for d in fleet.decisions]
    assert {d.action for d in decisions} == set(RULES_OF_ACTION)
    for d in decisions:
        assert d.rule in RULES_OF_ACTION[d.action], (d.action, d.rule, d.reason)


def test_a_steady_fleet_leaves_the_policy_state_unchanged() -> None:
    # Status holds the state: if it changed on every tick, an idle GRMDeployment would cost a
    # status write per control period.
    fleet = Fleet(make_spec(variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}]))
    now = 0.0
    while now < 900:
        fleet.tick(now, 0.0)
        now += PERIOD
    before = fleet.state.to_dict()
    for _ in range(10):
        fleet.tick(now, 0.0)
        now += PERIOD
    assert fleet.state.to_dict() == before
    assert fleet.decisions[-1].action == "None"


def test_recommendation_runs_only_grow_when_the_value_changes() -> None:
    from grm_operator.policy.stabilize import over_window as _over_window
    from grm_operator.policy.stabilize import record as _record

    runs = _record((), 0.0, 3, 300)
    runs = _record(runs, 15.0, 3, 300)
    assert runs == ((0.0, 3),)
    runs = _record(runs, 30.0, 1, 300)
    assert runs == ((0.0, 3), (30.0, 1))
    assert max(_over_window(runs, 200.0, 300)) == 3  # the run of 3 ended at 30 s: inside the window
    assert max(_over_window(runs, 340.0, 300)) == 1  # ... and outside it 310 s later
    assert _record(runs, 400.0, 1, 300) == ((30.0, 1),)
