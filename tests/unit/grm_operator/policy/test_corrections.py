"""The online corrections of the latency model (learnt per variant, decaying toward the priors),
the bounded arrival series the demand distribution reads, and the live demo's switch under load.

The live demo's GRMDeployment (examples/grmd-live-demo.yaml) is the scenario: bf16 2 GPUs a
replica, fp8 1, maxGPUs 4, 2 s control period, 30 s stabilisation window and cooldown, k = 4.
"""

from __future__ import annotations

import yaml

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy import Observation, PolicyState
from grm_operator.policy.capacity import DEFAULT_TAIL
from grm_operator.policy.corrections import TAIL_HALF_LIFE_S, corrections_at
from grm_operator.policy.mpc import decide_mpc as decide
from grm_operator.policy.types import ARRIVAL_BINS
from support.fleet import Fleet
from support.paths import EXAMPLES
from support.policy import make_observation, make_signals, make_spec

LIVE_DEMO = EXAMPLES / "grmd-live-demo.yaml"
PERIOD = 2.0
DROP = 250.0


def live_demo_spec() -> GRMDeploymentSpec:
    return GRMDeploymentSpec.model_validate(yaml.safe_load(LIVE_DEMO.read_text())["spec"])


def run_live_demo(until: float) -> tuple[Fleet, list[tuple[float, int]]]:
    """1 score/s (bf16 fills its 4 GPUs), 3/s from 100 s (fp8 needed), 0.5/s from 250 s.

    Returns the fleet and, per tick, (time, GPUs asked for: every variant's desired replicas).
    """
    spec = live_demo_spec()
    fleet = Fleet(spec, policy=decide)
    gpus: list[tuple[float, int]] = []
    now = 0.0
    while now < until:
        fleet.tick(now, 1.0 if now < 100 else 3.0 if now < DROP else 0.5)
        gpus.append((now, sum(n * spec.variant(v).gpus_per_replica for v, n in fleet.desired.items())))
        now += PERIOD
    return fleet, gpus


def test_live_demo_switches_to_fp8_under_load_within_max_gpus_and_scales_in_after_the_drop() -> None:
    fleet, gpus = run_live_demo(500.0)
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


def _fp8_window(now: float, rps: float, e2e_p95: float) -> Observation:
    """2 fp8 replicas at k = 8 completing ``rps`` sequences/s, TTFT p95 at the 500 ms SLO."""
    signals = make_signals(
        rps,
        pods=2,
        ttft_p50=0.2,
        ttft_p95=0.5,
        itl_p50=0.03,
        itl_p95=0.04,
        e2e_p50=e2e_p95 / 2,
        e2e_p95=e2e_p95,
        running=rps * 5,
        waiting=0.0,
        sample_age_s=1.0,
    )
    return make_observation("fp8", signals, now=now, ready=2, samples=8)


def test_each_variant_learns_only_its_own_tail_and_a_stale_one_decays() -> None:
    spec = make_spec()
    # bf16 left behind with a tail that an overload taught it: e2e 6.0 (bound) makes 20 s read as
    # a 3.3 s mean, so no bf16 replica looks able to hold it.
    state = PolicyState(
        tail={"bf16": {"e2e": 6.0, "ttft": 6.0, "itl": 1.3}},
        speed={"bf16": 1.0},
        learnt_at={"bf16": 0.0},
        last_switch=0.0,
    )
    _first, state = decide(_fp8_window(15.0, 4.0, e2e_p95=19.0), state, spec, 15.0)
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
