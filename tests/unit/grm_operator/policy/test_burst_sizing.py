"""Burst sizing: load that comes in repeated bursts shorter than the e2e target (an RL training
step's batch within seconds) is sized by the replicas that serve one burst together inside the
SLO, not by its metrics window's mean rate, so the fleet does not scale in below it between
bursts.

The scenario: 384 score requests at k = 2 (768 sequences) every 3 minutes, read by a 1-min window
as 12.8 sequences/s (6.4 per sample) for four ticks, idle between. 12 fp8 replicas run; their
recommendations of the last 5 minutes were 5 (what the mean rate asks for). At the next idle tick
the rules without burst sizing halve the fleet to 6.
"""

from __future__ import annotations

import math

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy import PolicyState, decide
from grm_operator.policy.capacity import Workload, burst_capacity
from grm_operator.policy.decide import _recent_burst
from support.policy import OUTPUT, PROMPT, make_observation, make_signals, make_spec

PERIOD = 15.0
WINDOW = 60.0  # the metrics window
BURST_PER_SAMPLE = 6.4  # score requests/s one window reads while it holds a burst of 384
SAMPLES = 2
NOW = 300.0
READY = 12


def rl_spec(**slo: str) -> GRMDeploymentSpec:
    return make_spec(
        slo=slo or {"ttftP95": "10s", "e2eP95": "60s"},
        scaling={"minReplicas": 1, "maxReplicas": 16, "maxGPUs": 16},
        precision={"policy": "Pinned", "pinnedVariant": "fp8", "minQuality": 0.97},
        scoring={"samples": {"min": SAMPLES, "max": SAMPLES}},
    )


def burst(start: float) -> list[tuple[float, float]]:
    """The four window readings of one burst (per sample), from ``start``."""
    return [(start + i * PERIOD, BURST_PER_SAMPLE) for i in range(4)]


def idle(start: float, stop: float) -> list[tuple[float, float]]:
    return [(t, 0.0) for t in range(int(start), int(stop), int(PERIOD))]


def tick(demand: list[tuple[float, float]], spec: GRMDeploymentSpec) -> int:
    """Replicas asked for at NOW, an idle window, with ``demand`` remembered and 5 recommended
    over the whole scale-down window."""
    state = PolicyState(demand=tuple(demand), recommendations=((0.0, 5),))
    signals = make_signals(0.0, pods=READY, running=0.0, waiting=0.0, sample_age_s=7.5)
    obs = make_observation("fp8", signals, now=NOW, ready=READY, samples=SAMPLES)
    decision, _ = decide(obs, state, spec, NOW)
    return decision.replicas


def test_a_burst_is_served_together_by_the_kv_caches_it_fills() -> None:
    spec = rl_spec()
    fp8 = spec.variant("fp8")
    # 120k KV tokens ÷ 1,800 a sequence: 66 in flight; the next round (15.4 s) starts after the
    # 10 s TTFT target, so a replica serves 66 sequences of a burst.
    assert math.floor(burst_capacity(spec, fp8, Workload(1500.0, 300.0), 1.0)) == 66
    # A relaxed TTFT (30 s, 90 s e2e) leaves time for more rounds.
    relaxed = rl_spec(ttftP95="30s", e2eP95="90s")
    assert burst_capacity(relaxed, fp8, Workload(1500.0, 300.0), 1.0) > 2 * 66


def test_between_repeated_bursts_the_fleet_stays_at_what_a_burst_needs() -> None:
    spec = rl_spec()
    demand = [*burst(0.0), *idle(60.0, 180.0), *burst(180.0), *idle(240.0, NOW)]
    per_replica = burst_capacity(spec, spec.variant("fp8"), Workload(PROMPT, OUTPUT), 1.0)
    need = math.ceil(BURST_PER_SAMPLE * WINDOW * SAMPLES / per_replica)
    assert 5 < need <= READY
    # The window's mean alone would halve the fleet to 6 (the recommendations' 5, at most halving);
    # the burst keeps what one burst needs (9 with the idle window's default 1,000-token prompts).
    assert tick(demand, spec) == need


def test_a_single_burst_or_steady_load_is_sized_by_the_mean_rate() -> None:
    spec = rl_spec()
    # One burst, nothing before it: the burst floor's business, not a repeated load.
    assert tick([*idle(60.0, 180.0), *burst(180.0), *idle(240.0, NOW)], spec) == READY // 2
    # Load without an idle gap is not a burst, however it varies.
    steady = [(t, 3.0 + (t % 60) / 30) for t in range(0, int(NOW), int(PERIOD))]
    assert _recent_burst(steady, NOW, WINDOW, 60.0) == 0.0


def test_a_stretch_longer_than_the_window_and_the_e2e_target_is_no_burst() -> None:
    # 2.5 minutes of readings from a 1-min window: the arrivals spanned 1.5 minutes, more than
    # the 60-s e2e target, so they were not due together.
    before = [*burst(0.0), *idle(60.0, 315.0)]
    long_load = [(float(t), BURST_PER_SAMPLE) for t in range(315, 466, int(PERIOD))]
    assert _recent_burst([*before, *long_load], 480.0, WINDOW, 60.0) == 0.0
    # The same load read for 45 s (arrivals within seconds) is a burst of its peak × the window.
    assert _recent_burst([*before, *burst(315.0)], 480.0, WINDOW, 60.0) == BURST_PER_SAMPLE * WINDOW


def test_a_switch_sizes_the_new_variant_for_the_burst() -> None:
    # int4 runs but the quality floor (0.98) no longer admits it: the policy switches at once, in
    # a lull between bursts. Sized by the lull's demand (0) the new fleet would be 1 replica.
    spec = make_spec(
        slo={"ttftP95": "10s", "e2eP95": "60s"},
        scaling={"minReplicas": 1, "maxReplicas": 16, "maxGPUs": 16},
        precision={"policy": "Auto", "minQuality": 0.98, "qualityPolicy": "Declared"},
        scoring={"samples": {"min": SAMPLES, "max": SAMPLES}},
    )
    demand = [*burst(0.0), *idle(60.0, 180.0), *burst(180.0), *idle(240.0, NOW)]
    state = PolicyState(demand=tuple(demand), recommendations=((0.0, 5),))
    signals = make_signals(0.0, pods=4, running=0.0, waiting=0.0, sample_age_s=7.5)
    obs = make_observation("int4", signals, now=NOW, ready=4, samples=SAMPLES)
    decision, _ = decide(obs, state, spec, NOW)
    assert decision.action == "SwitchVariant"
    per_replica = burst_capacity(spec, spec.variant(decision.variant), Workload(PROMPT, OUTPUT), 1.0)
    need = math.ceil(BURST_PER_SAMPLE * WINDOW * SAMPLES / per_replica)
    assert need > 1
    assert (decision.replicas, decision.needed) == (need, need)
