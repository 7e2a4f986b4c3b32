"""The way back up the quality ladder: after a switch to a faster variant, falling load brings the
best one back — once a scale-down stabilisation window has seen no peak, with the 25 % margin on
the demand (so the surge fits maxGPUs), and with correction factors that forget old overloads.

The live demo's GRMDeployment is the scenario (support.live_demo).
"""

from __future__ import annotations

from grm_operator.policy import Rule, decide
from grm_operator.policy.corrections import TAIL_HALF_LIFE_S, corrections_at
from grm_operator.policy.decide import PEAK_POINTS, TREND_WINDOW_S
from support.fleet import Fleet
from support.live_demo import DROP, PERIOD, live_demo_spec, run_live_demo
from support.policy import fp8_window, make_spec, stale_bf16_state


def test_live_demo_switches_to_fp8_under_load_and_back_to_bf16_after_the_window() -> None:
    fleet, _ = run_live_demo(500.0)
    switches = [(d, i * PERIOD) for i, d in enumerate(fleet.decisions) if d.action == "SwitchVariant"]
    assert [d.variant for d, _ in switches] == ["fp8", "bf16"], [d.reason for d, _ in switches]
    down, up = switches[0][1], switches[1][1]
    assert 100 <= down < DROP
    # Not before the 30 s window has seen no peak (until DROP + 30) and then fitted for 30 s more
    # (the Fleet reports the new rate at once; a real 10 s metrics window adds up to 10 s).
    assert DROP + 2 * 30 <= up <= DROP + 2 * 30 + 3 * PERIOD, up
    assert [(d.rule, d.replicas) for d, _ in switches] == [(Rule.SWITCH_DOWN, 3), (Rule.STEP_UP, 1)]
    assert fleet.active == "bf16" and fleet.replicas() == 1
    assert fleet.decisions[-1].action == "None"  # and it stays there


def test_live_demo_step_up_surge_fits_max_gpus() -> None:
    # The switch surges 1 bf16 replica (2 GPUs) next to the running fp8 one (1 GPU): 3 ≤ 4. With
    # the margin on the replica count (⌈1 × 1.25⌉ = 2 bf16 = 4 GPUs + 1) it never fitted.
    fleet, gpus = run_live_demo(340.0)
    index = next(
        i for i, d in enumerate(fleet.decisions) if d.action == "SwitchVariant" and d.variant == "bf16"
    )
    before = gpus[index - 1][1]  # fp8 GPUs running when the switch was decided
    surge = before + fleet.decisions[index].replicas * 2
    assert before == 1 and surge == 3 <= 4


def test_step_up_waits_while_the_window_holds_a_peak() -> None:
    # One high tick 20 s after the drop (inside the 30 s look-back) restarts the wait.
    spec = live_demo_spec()
    fleet = Fleet(spec)
    now = 0.0
    while now < 400:
        rate = 1.0 if now < 100 else 3.0 if now < DROP or now == DROP + 40 else 0.5
        fleet.tick(now, rate)
        now += PERIOD
    up = next(i * PERIOD for i, d in enumerate(fleet.decisions) if d.variant == "bf16" and i * PERIOD > 100)
    assert up >= DROP + 40 + 2 * 30, up


def test_each_variant_learns_only_its_own_tail_and_stale_ones_stop_blocking_the_way_up() -> None:
    spec = make_spec()
    state = stale_bf16_state()
    first, state = decide(fp8_window(15.0, 4.0, e2e_p95=19.0), state, spec, 15.0)
    assert state.tail["bf16"] == {"e2e": 6.0, "ttft": 6.0, "itl": 1.3}  # fp8's window taught bf16 nothing
    assert set(state.tail["fp8"]) == {"ttft", "itl", "e2e"}
    assert state.learnt_at["bf16"] == 0.0 and state.learnt_at["fp8"] == 15.0
    # No step up to bf16 fits, not even pending.
    assert (first.action, first.rule, first.variant) == ("None", Rule.STEADY, "fp8")
    assert state.better_since is None
    # 4 seq/s at k = 8 is 0.5 score/s: a couple of bf16 replicas once its tail has decayed.
    now = 15.0
    while now < 1800 and state.better_since is None:
        now += 15.0
        _, state = decide(fp8_window(now, 4.0, e2e_p95=8.0), state, spec, now)
    assert state.better_since is not None, "bf16 never fitted again"
    _, bf16_tail = corrections_at(state, "bf16", now)
    assert bf16_tail["e2e"] < 2.0 and now <= 8 * TAIL_HALF_LIFE_S


def test_demand_history_stays_bounded_and_keeps_its_peak() -> None:
    # A 1-hour stabilisation window at 15 s periods would hold 240 demand points unthinned.
    spec = make_spec(
        variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}],
        scaling={"scaleDownStabilization": "1h", "maxReplicas": 8, "maxGPUs": 12},
    )
    fleet = Fleet(spec)
    now = 0.0
    while now < 3600:  # the burst at 600 s is 50 minutes back at the end: inside the window
        fleet.tick(now, 2.0 if 600 <= now < 615 else 0.5)
        now += 15.0
    demand = fleet.state.demand
    assert len(demand) <= TREND_WINDOW_S / 15 + 1 + PEAK_POINTS, len(demand)
    assert max(v for _, v in demand) >= 2.0  # the burst's point survives the thinning
    # Slices are aligned to absolute time: the next tick keeps the old points it kept before.
    old = {p for p in demand if now - 15.0 - p[0] > TREND_WINDOW_S}  # already thinned
    fleet.tick(now, 0.5)
    assert old and old <= set(fleet.state.demand) | {p for p in old if now - p[0] > 3600}
