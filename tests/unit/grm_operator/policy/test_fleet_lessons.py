"""Rules the fleet simulator's benchmark taught the policy (docs/policy.md, "Lessons from the
benchmark"); each test id is the sentence it checks."""

from __future__ import annotations

from grm_operator.policy import Observation, PolicyState, Rule, decide
from grm_operator.policy.capacity import operating_points
from support.fleet import Fleet
from support.policy import make_observation, make_signals, make_spec

FP8_ONLY = [{"name": "fp8", "precision": "fp8", "quality": 1.0}]
BF16_INT4 = [
    {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 2},
    {"name": "int4", "precision": "awq-int4", "uri": "pvc://models/grm-awq", "quality": 0.97},
]


def observe(
    now: float,
    rps: float,
    *,
    ready: int,
    waiting: float = 0.0,
    e2e_p95: float = 5.0,
    e2e_p50: float | None = None,
    samples: int = 8,
) -> Observation:
    """An fp8 fleet at rest on ``ready`` replicas, with quick first tokens."""
    signals = make_signals(
        rps,
        pods=ready,
        ttft_p50=0.1,
        ttft_p95=0.2,
        itl_p50=0.02,
        itl_p95=0.03,
        e2e_p50=e2e_p95 / 2 if e2e_p50 is None else e2e_p50,
        e2e_p95=e2e_p95,
        running=rps * 5,
        waiting=waiting,
        sample_age_s=1.0,
    )
    return make_observation("fp8", signals, now=now, ready=ready, samples=samples)


def _bf16_fleet(seq_rate: float, samples: int, ready: int = 6) -> Observation:
    """bf16 at ``samples`` per request on ``ready`` replicas (6 fill maxGPUs 12), ``seq_rate``
    sequences per second."""
    return make_observation(
        "bf16", make_signals(seq_rate, pods=ready), now=600.0, ready=ready, samples=samples
    )


def test_a_fresh_start_keeps_its_replicas_for_a_full_stabilisation_window_then_at_most_halves() -> None:
    spec = make_spec(variants=FP8_ONLY)
    state = PolicyState()
    replicas = 8
    history = []
    for tick in range(40):  # 10 minutes of a trickle, starting with 8 Ready replicas and no memory
        now = tick * 15.0
        decision, state = decide(observe(now, 0.8, ready=replicas), state, spec, now)
        history.append((now, replicas, decision.replicas))
        replicas = decision.replicas
    inside = [new for now, _, new in history if now < 300.0]
    assert set(inside) == {8}, history  # the 5-minute window reaches back before any memory
    for _, before, after in history:
        assert after >= (before + 1) // 2, history  # at most halved per tick
    assert history[-1][2] == 1


def test_more_samples_wait_until_the_replicas_they_need_are_ready() -> None:
    spec = make_spec(variants=FP8_ONLY, scoring={"samples": {"min": 1, "max": 8}})
    fleet = Fleet(spec, samples=2)
    raised = []
    now = 0.0
    while now < 900:
        obs = fleet.observe(now, 1.2)
        decision = fleet.tick(now, 1.2)
        if decision.samples > obs.samples:
            raised.append((now, obs.ready.get("fp8", 0), decision.replicas, decision.reason))
        now += 15.0
    assert raised, [d.reason for d in fleet.decisions[-5:]]
    for _, ready, replicas, reason in raised:
        assert ready >= replicas, reason  # the budget rose only onto Ready replicas
    # The step up asked for its replicas first and waited for them.
    waited = [d for d in fleet.decisions if d.rule is Rule.STEP_UP_AWAITS_REPLICAS]
    assert waited and all(d.samples == 2 for d in waited), "provisioned before raising"


def test_a_p95_of_a_few_requests_is_a_breach_only_when_their_median_breaches_too() -> None:
    spec = make_spec(variants=FP8_ONLY)  # e2eP95 20 s
    # 0.2 sequences/s over the default 1-minute window: 12 requests, one of them 90 s long.
    straggler = observe(600.0, 0.2, ready=2, e2e_p95=90.0, e2e_p50=6.0)
    decision, _ = decide(straggler, PolicyState(), spec, 600.0)
    assert decision.slo_met is None
    assert (decision.action, decision.rule) == ("None", Rule.STEADY), decision.reason
    assert decision.replicas == 2
    # The same 12 requests all slow (median 45 s): a breach, and the policy panics.
    slow = observe(600.0, 0.2, ready=2, e2e_p95=90.0, e2e_p50=45.0)
    decision, _ = decide(slow, PolicyState(), spec, 600.0)
    assert decision.slo_met is False
    assert (decision.action, decision.rule, decision.replicas) == ("ScaleUp", Rule.PANIC, 4), decision.reason


def test_a_window_that_ended_queued_caps_capacity_at_its_measured_throughput() -> None:
    spec = make_spec(variants=FP8_ONLY)
    # 2 replicas completed 4 sequences/s with 40 waiting: at most 2/s each, whatever the model
    # says (~6/s); demand 4 + 40/20 = 6/s (no trend yet) needs 3 of them, not the model's 2.
    decision, _ = decide(observe(600.0, 4.0, ready=2, waiting=40.0), PolicyState(), spec, 600.0)
    assert decision.demand_seq_rate == 6.0, decision.reason
    assert decision.needed == 3, decision.reason
    assert (decision.action, decision.replicas) == ("ScaleUp", 3), decision.reason


def test_a_switch_keeps_the_sample_budget_admissible_on_the_new_variant() -> None:
    # int4 at quality 0.97 is admissible only with all 8 samples: the budget bf16 runs at (k=2)
    # must not carry over to it. bf16 has been learnt twice as slow as its profile, which leaves
    # it no load within the 500 ms TTFT SLO: int4×k8 is the only point that holds the demand.
    spec = make_spec(variants=BF16_INT4, scoring={"samples": {"min": 1, "max": 8}})
    assert [p.samples for p in operating_points(spec) if p.variant.name == "int4"] == [8]
    slow_bf16 = PolicyState(speed={"bf16": 2.0}, learnt_at={"bf16": 600.0})
    running = make_observation("bf16", make_signals(2.0, pods=2), now=600.0, ready=2, samples=2)
    decision, _ = decide(running, slow_bf16, spec, 600.0)
    assert (decision.action, decision.rule, decision.variant) == ("SwitchVariant", Rule.SWITCH_DOWN, "int4")
    assert decision.samples == 8, decision.reason


def test_a_scale_up_bridges_its_cold_start_with_fewer_samples_and_restores_them_once_ready() -> None:
    spec = make_spec(variants=FP8_ONLY, scoring={"samples": {"min": 1, "max": 8}})  # k=2 keeps 0.975
    fleet = Fleet(spec)
    ticks = []  # (Ready replicas seen, decision)
    now = 0.0
    while now < 1500:
        rate = 0.3 if now < 300 else 2.0  # a burst: 2.4 → 16 seq/s at k=8
        ready = fleet.observe(now, rate).ready["fp8"]
        ticks.append((ready, fleet.tick(now, rate)))
        now += 15.0
    i, (ready, spike) = next((i, t) for i, t in enumerate(ticks) if i >= 20 and t[1].action == "ScaleUp")
    assert ready < spike.replicas
    assert spike.samples < 8, spike.reason  # the Ready replica serves fewer samples meanwhile
    assert spike.samples >= 2  # never below the quality floor
    ready, restore = next(t for t in ticks[i + 1 :] if t[1].samples != spike.samples)
    assert (restore.action, restore.rule, restore.samples) == ("SetSamples", Rule.STEP_UP, 8), restore.reason
    assert ready >= spike.replicas  # restored once the replicas asked for were Ready
    assert fleet.samples == 8, [d.reason for _, d in ticks if d.action != "None"][-4:]
    assert fleet.replicas() >= 3


def test_samples_first_only_onto_a_point_that_holds_the_demand_with_margin() -> None:
    # 6 bf16 replicas (12 GPUs) at k=8 see 32 seq/s, 4 per sample, with the default latency
    # model (no correction: the window reports no latency). bf16×k4 would need ⌈16 / 3.2⌉ = 5 of
    # the 6 the budget holds but ⌈1.25 × 16 / 3.2⌉ = 7 with the margin: at the edge of its budget
    # the next minute's growth breaches it, so the step goes to k=2 (4 needed with margin).
    spec = make_spec(scoring={"samples": {"min": 2, "max": 8}})

    def step(seq_rate: float) -> int:
        decision, _ = decide(_bf16_fleet(seq_rate, 8), PolicyState(), spec, 600.0)
        assert (decision.action, decision.rule) == ("SetSamples", Rule.SAMPLES_FIRST), decision.reason
        assert decision.variant == "bf16"
        return decision.samples

    assert step(24.0) == 4  # ⌈1.25 × 12 / 3.2⌉ = 5 ≤ 6: k=4 holds with margin
    assert step(32.0) == 2


def test_with_no_gpu_room_for_a_switch_fewer_samples_on_the_running_variant_come_first() -> None:
    # 6 bf16 replicas fill maxGPUs 12. 36 seq/s at k=4 (9 per sample) needs 12 bf16×k4 replicas;
    # bf16×k2 needs all 6 (no margin), so the ladder picks fp8×k4 (7 replicas) — whose surge
    # has no GPU next to the 12 in use. Lowering k serves more at once, so that comes first.
    spec = make_spec(scoring={"samples": {"min": 2, "max": 4}})
    decision, _ = decide(_bf16_fleet(36.0, 4), PolicyState(), spec, 600.0)
    assert (decision.action, decision.rule) == ("SetSamples", Rule.NO_SURGE_ROOM), decision.reason
    assert (decision.variant, decision.samples, decision.replicas) == ("bf16", 2, 6)
    # Nothing on bf16 serves more (k fixed at 4, as in the live demo): the switch as before.
    fixed = make_spec(scoring={"samples": {"min": 4, "max": 4}})
    decision, _ = decide(_bf16_fleet(36.0, 4), PolicyState(), fixed, 600.0)
    assert (decision.action, decision.rule) == ("SwitchVariant", Rule.SWITCH_DOWN), decision.reason
    assert (decision.variant, decision.replicas) == ("fp8", 7)


def test_samples_first_gives_way_to_a_switch_when_it_would_fill_the_budget_and_the_surge_fits() -> None:
    # maxGPUs 12: 6 bf16 (2 GPUs) or 12 fp8 replicas. bf16 runs at k=4 and 3.2 seq/s per replica.
    spec = make_spec(scoring={"samples": {"min": 2, "max": 4}})
    # 6 per sample on 3 replicas: bf16×k4 needs 8 of 6; bf16×k2 needs ⌈1.25 × 12 / 3.2⌉ = 5 with
    # margin, one below its budget: samples first, as before (a scale-up to 4).
    decision, _ = decide(_bf16_fleet(6.0 * 4, 4, ready=3), PolicyState(), spec, 600.0)
    assert (decision.action, decision.rule) == ("ScaleUp", Rule.SCALE_UP), decision.reason
    assert (decision.variant, decision.samples, decision.replicas) == ("bf16", 2, 4)
    # 7 per sample: bf16×k2 needs ⌈1.25 × 14 / 3.2⌉ = 6, all its budget, and 3 more replicas than
    # run (a cold start either way). From 6 bf16 replicas on 12 GPUs no step up to fp8 ever finds
    # GPUs for its surge, so it switches now: fp8×k4 (quality 0.995 > bf16×k2's 0.987) needs 5,
    # and the 6 free GPUs hold more than half of them.
    decision, _ = decide(_bf16_fleet(7.0 * 4, 4, ready=3), PolicyState(), spec, 600.0)
    assert (decision.action, decision.rule) == ("SwitchVariant", Rule.SAMPLES_FIRST_TRAP), decision.reason
    assert (decision.variant, decision.replicas) == ("fp8", 5)
    # The same load on 5 bf16 replicas: 2 free GPUs hold fewer than half of the 5, so the switch
    # would roll a full fleet; fewer samples first, as before.
    decision, _ = decide(_bf16_fleet(7.0 * 4, 4, ready=5), PolicyState(), spec, 600.0)
    assert (decision.action, decision.rule) == ("SetSamples", Rule.SAMPLES_FIRST), decision.reason
    assert (decision.variant, decision.samples) == ("bf16", 2)
