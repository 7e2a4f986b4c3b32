"""What the optimiser's objective weighs a move over (docs/policy.md §10): replicas asked for now
are paid and serve for a commitment *after* the look-ahead in which they start, and the prior for
demand not yet seen is the fleet as found, not the fleet the optimiser has asked for since."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from grm_operator.policy import PolicyState
from grm_operator.policy.coldstart import StartSample
from grm_operator.policy.mpc import decide_mpc
from support.policy import make_observation, make_signals, make_spec

PERIOD = 15.0
NOW = 10_000.0


def fp8_spec() -> Any:
    """One fp8 variant of the 27B model at quality 1, SLO 10 s TTFT / 60 s e2e, 16 GPUs."""
    return make_spec(
        model={"name": "deepseek-ai/DeepSeek-GRM-27B", "uri": "pvc://models/grm-27b"},
        variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}],
        slo={"ttftP95": "10s", "e2eP95": "60s"},
        scaling={"minReplicas": 1, "maxReplicas": 16, "maxGPUs": 16},
        scoring={"samples": {"min": 1, "max": 1}},
    )


def slow_starts() -> dict[str, tuple[StartSample, ...]]:
    """Two measured fp8 cold starts of 270 and 280 s: a look-ahead of 20 periods (300 s), as
    long as the scale-down window."""
    starts = (270.0, 280.0)
    return {"fp8": tuple(StartSample(f"w-{s:.0f}", NOW - 1000.0 + i, s) for i, s in enumerate(starts))}


def window(
    rps: float, pods: int, *, waiting: float = 0.0, e2e_p95: float = 8.0, ttft_p95: float = 0.5
) -> Any:
    """A window of ``rps`` sequences/s completed by ``pods`` fp8 workers."""
    return make_signals(
        rps,
        pods=pods,
        ttft_p50=ttft_p95 / 2,
        ttft_p95=ttft_p95,
        itl_p50=0.03,
        itl_p95=0.04,
        e2e_p50=e2e_p95 / 2,
        e2e_p95=e2e_p95,
        running=rps * 5,
        waiting=waiting,
        sample_age_s=1.0,
    )


def test_replicas_that_start_beyond_the_look_ahead_are_still_worth_asking_for() -> None:
    # 2 fp8 replicas meet a crowd: 40 sequences/s arrive (a queue of 600), they complete 11. A
    # replica asked for now is Ready after 285 s, inside the last period of the 300-s look-ahead:
    # weighed over the look-ahead alone it serves nothing, so every fleet "misses" the same and
    # the cheapest is to add none (the flash crowd stayed on 2 replicas for 5 minutes).
    spec = fp8_spec()
    crowd = window(11.0, 2, waiting=600.0, e2e_p95=90.0, ttft_p95=40.0)
    obs = replace(make_observation("fp8", crowd, now=NOW, ready=2, samples=1), cold_starts=slow_starts())
    decision, _ = decide_mpc(obs, PolicyState(), spec, NOW)
    assert decision.winner is not None
    assert decision.winner.replicas >= 6, decision.reason
    assert decision.replicas >= 6


def test_the_prior_for_unseen_demand_is_the_fleet_as_found() -> None:
    # A fleet of 4 replicas at k = 1 serving 2 sequences/s: the series starts, the prior is what
    # the 4 serve. The optimiser asks for more; a tick later the 8 it runs are no new evidence.
    spec = fp8_spec()
    first = make_observation("fp8", window(2.0, 4), now=NOW, ready=4, samples=1)
    _, state = decide_mpc(first, PolicyState(), spec, NOW)
    assert state.prior_demand is not None and state.prior_demand > 2.0
    later = make_observation("fp8", window(2.0, 8), now=NOW + PERIOD, ready=8, samples=1)
    decision, after = decide_mpc(later, state, spec, NOW + PERIOD)
    assert after.prior_demand == state.prior_demand
    # Judged on the same window by a fleet that found 8 replicas running, the prior is twice as
    # large: the demand the optimiser provisions for is the smaller one.
    _, found_eight = decide_mpc(later, PolicyState(), spec, NOW + PERIOD)
    assert found_eight.prior_demand is not None
    assert found_eight.prior_demand > 1.5 * state.prior_demand
    assert "p90 of the next" in decision.reason


def test_the_prior_is_forgotten_once_the_series_covers_ten_minutes() -> None:
    spec = fp8_spec()
    state = PolicyState(arrivals=(2.0,) * 40, arrivals_at=NOW - PERIOD, prior_demand=50.0)
    obs = make_observation("fp8", window(2.0, 2), now=NOW, ready=2, samples=1)
    _, after = decide_mpc(obs, state, spec, NOW)
    assert after.prior_demand is None
    # Kept through status: written, read back.
    kept = PolicyState(arrivals=(2.0,) * 3, arrivals_at=NOW, prior_demand=12.5)
    assert PolicyState.from_dict(kept.to_dict()).prior_demand == 12.5
    assert PolicyState.from_dict({**kept.to_dict(), "priorDemand": "x"}).prior_demand is None
