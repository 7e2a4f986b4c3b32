"""The burst floor: after a burst, scaling in stops at the replicas that serve the burst's peak with
the sample budget at its lowest admissible value (the instant lever), for three scale-down windows.

A bursty trace idles and then brings many times its mean within seconds; a replica asked for then
is Ready only after its cold start (bf16: 90 s), so what serves the next burst's first minute is
what stands. With samples 1–4, a quarter of the burst's fleet at k = 4 holds it at k = 1.
"""

from __future__ import annotations

import math

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy import Decision, PolicyState, Rule, decide
from grm_operator.policy.capacity import DEFAULT_TAIL, Workload, operating_points, replica_capacity
from grm_operator.policy.decide import BURST_MEMORY_WINDOWS
from support.fleet import Fleet
from support.policy import make_observation, make_signals, make_spec

PERIOD = 15.0
WINDOW = 300.0  # the default scaleDownStabilization
BURST = (300.0, 420.0)  # 2 minutes at the burst rate
BURST_RATE = 6.0  # score requests/s
IDLE_RATE = 0.2


def ladder_spec(k_min: int, shed: str = "Off") -> GRMDeploymentSpec:
    """The ladder; shedding Off by default, as the closed-loop fleet (support.fleet) does not shed."""
    return make_spec(
        slo={"ttftP95": "10s", "e2eP95": "60s"},
        scaling={"minReplicas": 1, "maxReplicas": 16, "maxGPUs": 16},
        precision={"policy": "Auto", "minQuality": 0.97},
        scoring={"samples": {"min": k_min, "max": 4}, "shedSamples": shed},
    )


def run(spec: GRMDeploymentSpec, until: float) -> list[tuple[float, int, Decision]]:
    """(time, active replicas, decision) per tick of idle → burst → idle."""
    fleet = Fleet(spec)
    out = []
    now = 0.0
    while now < until:
        rate = BURST_RATE if BURST[0] <= now < BURST[1] else IDLE_RATE
        decision = fleet.tick(now, rate)
        out.append((now, fleet.replicas(), decision))
        now += PERIOD
    return out


def at(series: list[tuple[float, int, Decision]], t: float) -> tuple[float, int, Decision]:
    return next(p for p in series if p[0] >= t)


def test_scale_in_after_a_burst_stops_at_the_floor_for_three_windows() -> None:
    spec = ladder_spec(k_min=1)
    series = run(spec, BURST[1] + BURST_MEMORY_WINDOWS * WINDOW + 5 * 60)
    peak = max(n for _, n, _ in series)
    # One window after the burst the stabilisation window alone would allow 1 replica.
    _, held, decision = at(series, BURST[1] + WINDOW + 120)
    bf16_k1 = next(p for p in operating_points(spec) if p.label == "bf16×k1")
    floor = math.ceil(
        BURST_RATE / replica_capacity(spec, bf16_k1.variant, Workload(1000.0, 300.0), 1.0, DEFAULT_TAIL)
    )
    assert 1 < held < peak, (held, peak)
    assert held >= floor - 1  # the peak the policy saw, through the metrics window, per sample
    assert decision.rule is Rule.BURST_FLOOR, decision.reason
    # Three windows after the last busy tick, the memory has let go of the burst.
    _, late, decision = at(series, BURST[1] + BURST_MEMORY_WINDOWS * WINDOW + 4 * 60)
    assert late == 1, decision.reason


def test_no_floor_without_a_lower_sample_budget() -> None:
    # samples fixed at 4: no instant lever, the floor would only lengthen the user's window.
    series = run(ladder_spec(k_min=4), BURST[1] + WINDOW + 5 * 60)
    _, n, decision = at(series, BURST[1] + WINDOW + 4 * 60)
    assert n == 1, decision.reason
    assert any(d.action == "ScaleDown" for _, _, d in series)
    assert not any(d.rule is Rule.BURST_FLOOR for _, _, d in series)


def test_unknown_request_rate_holds_instead_of_reading_zero() -> None:
    # A restarted Prometheus has one sample of each counter: rate() answers nothing for a
    # while. Demand 0 would scale 6 replicas down; unknown holds them.
    spec = ladder_spec(k_min=1)
    unknown_rate = make_signals(None, pods=6, running=12.0, waiting=0.0, sample_age_s=2.0)
    obs = make_observation("bf16", unknown_rate, now=1000.0, ready=6, samples=4)
    decision, state = decide(obs, PolicyState(), spec, 1000.0)
    assert (decision.action, decision.rule, decision.replicas) == ("Hold", Rule.NO_REQUEST_RATE, 6)
    assert state == PolicyState()
