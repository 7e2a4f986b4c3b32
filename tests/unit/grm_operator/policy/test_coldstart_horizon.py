"""The cold-start estimate (``grm_operator.policy.coldstart``) and the forecast horizon built on it:
one estimate from the checkpoint's size for the startup probe and the policy, a declared
``profile.coldStart`` first, the precision's prior when the size is unknown.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from grm_operator.control.builders.modelload import startup_budget_s
from grm_operator.policy import PolicyState, decide
from grm_operator.policy.coldstart import ENGINE_START_S, LOAD_GB_PER_S, cold_start
from support.policy import make_observation, make_signals, make_spec

PERIOD = 15.0
NOW = 10_000.0
#: The flagship: 27B parameters read from its name.
GRM_27B = {"name": "deepseek-ai/DeepSeek-GRM-27B", "uri": "pvc://models/grm-27b"}
PROFILE = {
    "stepOverheadMs": 12.5,
    "prefillMsPerToken": 0.055,
    "decodeMsPerSequence": 0.035,
    "kvCacheTokens": 120_000,
}


def fp8(model: dict[str, Any] | None = None, **variant: Any) -> Any:
    """A one-variant spec (fp8 at quality 1), with the model and variant fields given."""
    variants = [{"name": "fp8", "precision": "fp8", "quality": 1.0, **variant}]
    return make_spec(variants=variants, model=GRM_27B if model is None else model)


@pytest.mark.parametrize(
    ("variant", "seconds", "basis"),
    [
        # The 27B bf16 checkpoint (54 GB): 60 + 54 / 0.25.
        ({"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 2}, 276.0, "size"),
        # fp8 without a checkpoint of its own reads the bf16 weights and quantizes on the GPU.
        ({"name": "fp8", "precision": "fp8", "quality": 1.0}, 276.0, "size"),
        # Its own fp8 checkpoint: 27 × 1.1 GB.
        ({"name": "fp8", "precision": "fp8", "quality": 1.0, "uri": "pvc://m/fp8"}, 60 + 29.7 / 0.25, "size"),
        # AWQ int4: 27 × 0.6 GB.
        (
            {"name": "int4", "precision": "awq-int4", "quality": 1.0, "uri": "pvc://m/awq"},
            60 + 16.2 / 0.25,
            "size",
        ),
        # A declared (measured) cold start wins over the size.
        (
            {"name": "fp8", "precision": "fp8", "quality": 1.0, "profile": {**PROFILE, "coldStart": "40s"}},
            40.0,
            "declared",
        ),
    ],
)
def test_the_cold_start_is_estimated_from_the_checkpoint_size_unless_declared(
    variant: dict[str, Any], seconds: float, basis: str
) -> None:
    spec = make_spec(variants=[variant], model=GRM_27B)
    estimate = cold_start(spec, spec.variants[0])
    assert estimate.seconds == pytest.approx(seconds)
    assert estimate.basis == basis


def test_without_a_size_the_precision_prior_is_the_estimate() -> None:
    spec = make_spec(model={"name": "acme/reward-model", "uri": "pvc://models/rm"})
    by_name = {v.name: cold_start(spec, v) for v in spec.variants}
    assert {n: (e.seconds, e.basis) for n, e in by_name.items()} == {
        "bf16": (90.0, "prior"),
        "fp8": (60.0, "prior"),
        "int4": (45.0, "prior"),
    }
    # weightsGB gives the size back: 20 GB of bf16 → 60 + 20 / 0.25 = 140 s.
    sized = make_spec(model={"name": "acme/reward-model", "uri": "pvc://models/rm", "weightsGB": 20})
    assert cold_start(sized, sized.variants[0]).seconds == pytest.approx(ENGINE_START_S + 20 / LOAD_GB_PER_S)


def test_the_startup_budget_is_the_same_estimate_with_its_margin() -> None:
    spec = make_spec(model=GRM_27B)
    for v in spec.variants:
        estimate = cold_start(spec, v)
        assert estimate.basis == "size"
        assert startup_budget_s(spec, v) == pytest.approx(1.5 * estimate.seconds)
    unknown = make_spec(model={"name": "acme/reward-model", "uri": "pvc://models/rm"})
    assert startup_budget_s(unknown, unknown.variants[0]) == pytest.approx(3 * 90.0)


def horizon_and_replicas(spec: Any) -> tuple[float, int]:
    """One tick with demand rising 0.01 score/s every second over the last 3 minutes (k = 8):
    the horizon the decision states and the replicas it asks for."""
    history = tuple((NOW - 180.0 + 15.0 * i, 0.5 + 0.15 * i) for i in range(12))
    state = PolicyState(demand=history)
    rate = 0.5 + 0.15 * 12  # score/s now
    total = make_signals(rate * 8, pods=2, ttft_p95=0.2, e2e_p95=8.0, itl_p95=0.02, running=4.0)
    obs = make_observation("fp8", total, now=NOW, ready=2, samples=8)
    decision, _ = decide(obs, state, spec, NOW)
    found = re.search(r"over the (\d+)s cold-start horizon", decision.reason)
    assert found, decision.reason
    return float(found.group(1)), decision.replicas


def test_the_forecast_horizon_is_the_cold_start_estimate_plus_a_period_at_most_the_trend_window() -> None:
    # 276 + 15 s, but a 3-minute trend is extrapolated 180 s at most.
    sized, sized_replicas = horizon_and_replicas(fp8())
    assert sized == pytest.approx(180.0, abs=0.5)
    # A declared 150 s: 165 s.
    slow, _ = horizon_and_replicas(fp8(profile={**PROFILE, "coldStart": "150s"}))
    assert slow == pytest.approx(150.0 + PERIOD, abs=0.5)
    declared, declared_replicas = horizon_and_replicas(fp8(profile={**PROFILE, "coldStart": "45s"}))
    assert declared == pytest.approx(45.0 + PERIOD, abs=0.5)
    # A longer cold start provisions further ahead on the same trend.
    assert sized_replicas > declared_replicas
    prior, _ = horizon_and_replicas(fp8(model={"name": "acme/reward-model", "uri": "pvc://models/rm"}))
    assert prior == pytest.approx(60.0 + PERIOD, abs=0.5)
