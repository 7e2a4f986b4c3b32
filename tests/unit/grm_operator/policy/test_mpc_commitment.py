"""What the optimiser's objective weighs a move over (docs/policy.md §10): replicas asked for now
are paid and serve for a commitment *after* the look-ahead in which they start."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from grm_operator.policy import PolicyState
from grm_operator.policy.coldstart import StartSample
from grm_operator.policy.mpc import decide_mpc
from support.policy import make_observation, make_signals, make_spec

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
