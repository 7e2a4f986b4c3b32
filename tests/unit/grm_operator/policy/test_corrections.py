"""The online corrections of the latency model (learnt per variant, decaying toward the priors),
the bounded arrival series the demand distribution reads, and the live demo's switch under load.

The live demo's GRMDeployment is the scenario (support.live_demo).
"""

from __future__ import annotations

from grm_operator.policy import PolicyState
from grm_operator.policy.capacity import DEFAULT_TAIL
from grm_operator.policy.corrections import TAIL_HALF_LIFE_S, corrections_at
from grm_operator.policy.mpc import decide_mpc as decide
from grm_operator.policy.types import ARRIVAL_BINS
from support.fleet import Fleet
from support.live_demo import DROP, PERIOD, live_demo_spec, run_live_demo
from support.policy import fp8_window, make_spec, stale_bf16_state


def test_live_demo_switches_to_fp8_under_load_within_max_gpus_and_scales_in_after_the_drop() -> None:
    fleet, gpus = run_live_demo(500.0, policy=decide)
    switches = [(i, d) for i, d in enumerate(fleet.decisions) if d.action == "SwitchVariant"]
    assert switches and switches[0][1].variant == "fp8", [d.reason for _, d in switches]
    assert switches[0][0] * PERIOD < DROP  # fp8 serves the demo's load on fewer GPUs than bf16
    spec = live_demo_spec()
    for i, d in switches:
        # The switch surges the new variant beside the running one (rolling when the whole new
        # fleet does not fit): at least one new replica fits maxGPUs (4) beside the running ones.
        running = gpus[i - 1][1] if i else 0
        assert running + spec.variant(d.variant).gpus_per_replica <= spec.max_gpus(), d.reason
        assert d.winner is not None and d.winner.variant == d.variant
    # 0.5 score/s after the drop: no more GPUs than under load (the load of 4 minutes ago stays in
    # the demand distribution as the risk of its return), at most one switch more.
    loaded = max(g for t, g in gpus if 100 <= t < DROP)
    assert gpus[-1][1] <= loaded and len(switches) <= 2, gpus[-1]


def test_a_tail_learnt_in_an_overload_decays_toward_the_prior() -> None:
    state = PolicyState(tail={"bf16": {"e2e": 4.0, "ttft": 2.0}}, learnt_at={"bf16": 1000.0})
    _, now_tail = corrections_at(state, "bf16", 1000.0)
    assert now_tail["e2e"] == 4.0
    _, later = corrections_at(state, "bf16", 1000.0 + TAIL_HALF_LIFE_S)
    assert abs(later["e2e"] - (DEFAULT_TAIL["e2e"] + 2.5 / 2)) < 1e-9  # half of the excess is gone
    _, much_later = corrections_at(state, "bf16", 1000.0 + 20 * TAIL_HALF_LIFE_S)
    assert abs(much_later["e2e"] - DEFAULT_TAIL["e2e"]) < 1e-4
    assert much_later["itl"] == DEFAULT_TAIL["itl"]  # never learnt: the prior
    speed, _ = corrections_at(PolicyState(speed={"bf16": 1.4}, learnt_at={"bf16": 0.0}), "bf16", 900.0)
    assert 1.0 < speed < 1.4  # speed decays too, more slowly (15 min half-life)


def test_each_variant_learns_only_its_own_tail_and_a_stale_one_decays() -> None:
    spec = make_spec()
    state = stale_bf16_state()
    _first, state = decide(fp8_window(15.0, 4.0, e2e_p95=19.0), state, spec, 15.0)
    assert state.tail["bf16"] == {"e2e": 6.0, "ttft": 6.0, "itl": 1.3}  # fp8's window taught bf16 nothing
    assert set(state.tail["fp8"]) == {"ttft", "itl", "e2e"}
    assert state.learnt_at["bf16"] == 0.0 and state.learnt_at["fp8"] == 15.0
    # Its decayed tail lets bf16 serve again: what it is computed with falls toward the prior.
    _, bf16_tail = corrections_at(state, "bf16", 15.0 + 4 * TAIL_HALF_LIFE_S)
    assert bf16_tail["e2e"] < 2.0


def test_the_arrival_series_stays_bounded_and_round_trips_through_status() -> None:
    # 90 minutes at 15 s periods: 360 ticks, of which the last ARRIVAL_BINS (1 h) are kept.
    fleet = Fleet(make_spec(variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}]), policy=decide)
    now = 0.0
    while now < 5400:
        fleet.tick(now, 2.0 if 600 <= now < 615 else 0.5)
        now += 15.0
    assert len(fleet.state.arrivals) == ARRIVAL_BINS
    assert PolicyState.from_dict(fleet.state.to_dict()).arrivals == fleet.state.arrivals
    # A malformed series is dropped whole (a hole would shift its phase), not patched.
    assert PolicyState.from_dict({"arrivals": [1, "x", 2]}).arrivals == ()
