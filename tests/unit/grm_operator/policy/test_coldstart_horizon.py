"""The cold-start estimate (``grm_operator.policy.coldstart``) and the forecast horizon built on it:
a declared ``profile.coldStart`` first, then the pods' measured cold starts (kept in
status.policyState), then the checkpoint's size, the precision's prior when the size is unknown;
the startup probe takes the estimate without the measurement.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest

from grm_operator.control.builders.modelload import startup_budget_s
from grm_operator.policy import PolicyState, decide
from grm_operator.policy.coldstart import (
    ENGINE_START_S,
    LOAD_GB_PER_S,
    MEASURED_SAMPLES,
    ColdStart,
    StartSample,
    cold_start,
    measured_seconds,
    remember,
)
from grm_operator.policy.mpc import decide_mpc
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


def starts(*seconds: float, variant: str = "fp8", at: float = NOW - 1000.0) -> tuple[StartSample, ...]:
    """Measured cold starts of pods ``<variant>-0``, ``-1``, … Ready 10 s apart from ``at``."""
    return tuple(StartSample(f"{variant}-{i}", at + 10.0 * i, s) for i, s in enumerate(seconds))


def test_a_measured_cold_start_is_the_p90_of_at_least_two_samples() -> None:
    assert measured_seconds(()) is None
    # One pod on one node is not yet a measurement (a lucky start would shorten every horizon).
    assert measured_seconds(starts(40.0)) is None
    # The p90 of two leans to the slower one.
    assert measured_seconds(starts(40.0, 250.0)) == pytest.approx(40.0 + 0.9 * 210.0)
    # One slow node among eight (it pulled the image first) weighs 0.3: 288 + 0.3 × 122.
    eight = starts(262.0, 265.0, 270.0, 271.0, 274.0, 280.0, 288.0, 410.0)
    assert measured_seconds(eight) == pytest.approx(324.6)


def test_the_cold_start_prefers_declared_then_measured_then_size_then_prior() -> None:
    measured = starts(100.0, 120.0)
    sized = fp8()
    assert cold_start(sized, sized.variants[0]) == ColdStart(276.0, "size")
    assert cold_start(sized, sized.variants[0], measured) == ColdStart(pytest.approx(118.0), "measured")
    # One sample: still the size.
    assert cold_start(sized, sized.variants[0], measured[:1]).basis == "size"
    declared = fp8(profile={**PROFILE, "coldStart": "45s"})
    assert cold_start(declared, declared.variants[0], measured) == ColdStart(45.0, "declared")
    unsized = fp8(model={"name": "acme/reward-model", "uri": "pvc://models/rm"})
    assert cold_start(unsized, unsized.variants[0]).basis == "prior"
    assert cold_start(unsized, unsized.variants[0], measured).basis == "measured"


def test_the_startup_budget_never_follows_a_measurement() -> None:
    # The budget reads the spec only: a 30 s measured start on one node leaves the 27B bf16's
    # 1.5 × 276 s for a slower node's load (the budget is in the pod template: a budget that
    # followed the measurement would also roll every worker each time it moved).
    spec = fp8()
    state = PolicyState().learn_cold_starts({"fp8": starts(30.0, 31.0, 32.0)})
    assert cold_start(spec, spec.variants[0], state.cold_starts["fp8"]).seconds < 40.0
    assert startup_budget_s(spec, spec.variants[0]) == pytest.approx(1.5 * 276.0)


def test_each_pod_is_remembered_once_and_only_the_newest_eight() -> None:
    first = remember((), starts(100.0, 110.0))
    assert [s.pod for s in first] == ["fp8-0", "fp8-1"]
    # The same pods offered again (every tick while they are Ready), even with another reading
    # of their times, change nothing.
    again = remember(first, (StartSample("fp8-0", NOW, 999.0), *starts(100.0, 110.0)))
    assert again == first
    # Twelve pods: the eight Ready last are kept, oldest first; offering all twelve again keeps
    # those eight (the four cut sort before them), so status is not rewritten every tick.
    twelve = starts(*[100.0 + i for i in range(12)])
    kept = remember((), twelve)
    assert len(kept) == MEASURED_SAMPLES and [s.pod for s in kept] == [f"fp8-{i}" for i in range(4, 12)]
    assert remember(kept, twelve) == kept
    # A newer pod displaces the oldest.
    newer = StartSample("fp8-new", NOW, 150.0)
    assert remember(kept, [newer]) == (*kept[1:], newer)


def test_measured_cold_starts_survive_a_restart_through_status_and_stay_bounded() -> None:
    state = PolicyState().learn_cold_starts(
        {"fp8": starts(100.0, 120.5), "int4": starts(60.0, variant="int4")}
    )
    stored = state.to_dict()
    assert stored["coldStarts"] == {
        "fp8": [["fp8-0", NOW - 1000.0, 100.0], ["fp8-1", NOW - 990.0, 120.5]],
        "int4": [["int4-0", NOW - 1000.0, 60.0]],
    }
    assert PolicyState.from_dict(json.loads(json.dumps(stored))) == state
    assert PolicyState().to_dict()["coldStarts"] is None  # nothing measured: nothing in status
    # A status written by hand (or by a future version) with twenty samples, some unreadable:
    # the newest eight readable ones are kept.
    written = [[f"p{i}", NOW + i, 100.0 + i] for i in range(20)] + [
        ["bad", "x", 1.0],
        ["neg", NOW, -5.0],
        "junk",
    ]
    parsed = PolicyState.from_dict({"coldStarts": {"fp8": written, "odd": "junk"}})
    assert [s.pod for s in parsed.cold_starts["fp8"]] == [f"p{i}" for i in range(12, 20)]
    assert "odd" not in parsed.cold_starts


def measured_horizon(spec: Any, seen: dict[str, tuple[StartSample, ...]]) -> tuple[float, PolicyState]:
    """The horizon of one tick (as :func:`horizon_and_replicas`) whose observation offers the pods'
    cold starts ``seen``, and the state it returns."""
    history = tuple((NOW - 180.0 + 15.0 * i, 0.5 + 0.15 * i) for i in range(12))
    total = make_signals((0.5 + 0.15 * 12) * 8, pods=2, ttft_p95=0.2, e2e_p95=8.0, itl_p95=0.02, running=4.0)
    obs = replace(make_observation("fp8", total, now=NOW, ready=2, samples=8), cold_starts=seen)
    decision, state = decide(obs, PolicyState(demand=history), spec, NOW)
    found = re.search(r"over the (\d+)s cold-start horizon", decision.reason)
    assert found, decision.reason
    return float(found.group(1)), state


def test_the_horizon_follows_the_measured_cold_start() -> None:
    spec = fp8()  # 276 s from its size: a 180 s horizon (the trend's cap)
    assert measured_horizon(spec, {})[0] == pytest.approx(180.0, abs=0.5)
    # The cluster loads from a local NVMe: two pods Ready 40 and 50 s after their binding.
    horizon, state = measured_horizon(spec, {"fp8": starts(40.0, 50.0)})
    assert horizon == pytest.approx(49.0 + PERIOD, abs=0.5)
    assert [s.seconds for s in state.cold_starts["fp8"]] == [40.0, 50.0]
    # One pod only: the size still rules.
    assert measured_horizon(spec, {"fp8": starts(40.0)})[0] == pytest.approx(180.0, abs=0.5)
    # A declared cold start outranks the measurement.
    declared = fp8(profile={**PROFILE, "coldStart": "100s"})
    assert measured_horizon(declared, {"fp8": starts(40.0, 50.0)})[0] == pytest.approx(115.0, abs=0.5)


def test_the_rules_learn_cold_starts_while_they_hold() -> None:
    # The scale-up's replicas got Ready while the fleet holds for their metrics (none reported yet).
    obs = replace(
        make_observation("fp8", make_signals(None, pods=0), now=NOW, ready=2, samples=8),
        cold_starts={"fp8": starts(40.0, 50.0)},
    )
    decision, state = decide(obs, PolicyState(), fp8(), NOW)
    assert decision.action == "Hold"
    assert len(state.cold_starts["fp8"]) == 2


def mpc_look_ahead(spec: Any, seen: dict[str, tuple[StartSample, ...]]) -> float:
    """The look-ahead (seconds) the optimiser states for one tick at a steady 1 score/s."""
    total = make_signals(8.0, pods=2, ttft_p95=0.2, e2e_p95=8.0, itl_p95=0.02, running=4.0, sample_age_s=1.0)
    obs = replace(make_observation("fp8", total, now=NOW, ready=2, samples=8), cold_starts=seen)
    decision, _ = decide_mpc(obs, PolicyState(), spec, NOW)
    found = re.search(r"p90 of the next (\d+)s", decision.reason)
    assert found, decision.reason
    return float(found.group(1))


def test_the_optimisers_look_ahead_follows_the_measured_cold_start() -> None:
    spec = fp8()
    # Without a measurement, its precision prior (fp8 60 s) and a period: 5 periods.
    assert mpc_look_ahead(spec, {}) == pytest.approx(75.0)
    # Measured 200 and 210 s: ⌈(209 + 15) / 15⌉ = 15 periods.
    assert mpc_look_ahead(spec, {"fp8": starts(200.0, 210.0)}) == pytest.approx(225.0)
