"""The shared latency model: the step-time formula, the steady-state worked examples of its
docstrings, feasibility limits, the SLO rate search, and profile overrides."""

from __future__ import annotations

import math

import pytest

from grm_worker.contract.perfmodel import (
    DEFAULT_PROFILES,
    PRECISIONS,
    max_rate_at_slo,
    profile_for,
    steady_state,
    step_time_s,
)


def test_every_precision_has_a_profile_and_int4_variants_share_one() -> None:
    assert set(PRECISIONS) == set(DEFAULT_PROFILES)
    assert DEFAULT_PROFILES["gptq-int4"] == DEFAULT_PROFILES["awq-int4"]
    assert DEFAULT_PROFILES["bf16"].gpus == 2 and DEFAULT_PROFILES["fp8"].gpus == 1
    # Quality ladder is also a speed ladder at small batches: the fixed step cost falls.
    c = [DEFAULT_PROFILES[p].step_overhead_s for p in ("bf16", "fp8", "awq-int4")]
    assert c == sorted(c, reverse=True)


def test_step_time_worked_example() -> None:
    # fp8: 32 sequences at 2k context: 12.5 + 1.12 + 10.49 ms ≈ 24.1 ms.
    fp8 = DEFAULT_PROFILES["fp8"]
    assert step_time_s(fp8, 0, 32, 32 * 2048) == pytest.approx(0.0241, abs=2e-4)
    assert step_time_s(fp8, 1000, 0, 0) == pytest.approx(0.0125 + 0.055)


def test_steady_state_worked_example() -> None:
    s = steady_state(DEFAULT_PROFILES["fp8"], 2.0, 1000, 300)
    assert s.load == pytest.approx(0.2414, abs=1e-3)
    assert s.step_s == pytest.approx(0.0165, abs=2e-4)
    assert s.running_seqs == pytest.approx(9.9, abs=0.1)
    assert s.feasible and s.ttft_s < s.e2e_s
    assert s.e2e_s == pytest.approx(s.ttft_s + 299 * s.step_s)


def test_overload_and_kv_limits_are_infeasible() -> None:
    fp8 = DEFAULT_PROFILES["fp8"]
    over = steady_state(fp8, 100.0, 1000, 300)
    assert not over.feasible and math.isinf(over.step_s)
    tight = profile_for("fp8", kv_cache_tokens=5000)
    assert not steady_state(tight, 2.0, 1000, 300).feasible
    with pytest.raises(ValueError):
        steady_state(fp8, 1.0, 100, 0)


def test_max_rate_at_slo_is_the_edge_of_the_targets() -> None:
    fp8 = DEFAULT_PROFILES["fp8"]
    rate = max_rate_at_slo(fp8, 1000, 300, itl_s=0.03)
    assert rate > 0
    assert steady_state(fp8, rate, 1000, 300).step_s <= 0.03
    assert steady_state(fp8, rate * 1.02, 1000, 300).step_s > 0.03
    # A looser target allows more; an impossible one nothing.
    assert max_rate_at_slo(fp8, 1000, 300, itl_s=0.05) > rate
    assert max_rate_at_slo(fp8, 1000, 300, ttft_s=0.001) == 0.0
    # Without targets the load cap binds.
    capped = max_rate_at_slo(fp8, 1000, 300, max_load=0.5)
    assert steady_state(fp8, capped, 1000, 300).load == pytest.approx(0.5, abs=1e-6)


def test_profile_overrides_and_scaling() -> None:
    p = profile_for("bf16", step_overhead_s=0.03, max_num_seqs=8)
    assert (p.step_overhead_s, p.max_num_seqs, p.gpus) == (0.03, 8, 2)
    with pytest.raises(ValueError, match="unknown precision"):
        profile_for("int3")
    with pytest.raises(ValueError, match="unknown performance profile fields"):
        profile_for("fp8", nonsense=1)
    slow = DEFAULT_PROFILES["fp8"].scaled(2.0)
    assert step_time_s(slow, 100, 4, 4000) == pytest.approx(
        2 * step_time_s(DEFAULT_PROFILES["fp8"], 100, 4, 4000)
    )
    with pytest.raises(ValueError):
        DEFAULT_PROFILES["fp8"].scaled(0)
