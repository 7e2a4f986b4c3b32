"""The periodicity detector on synthetic series: periodic, not periodic, noisy, drifting."""

from __future__ import annotations

import math
import random

import pytest

from grm_operator.policy.periodicity import autocorrelation, detect_period, phase_profile


def rl_bursts(minutes: int, period_s: float, *, jitter_s: float, burst: float, seed: int) -> list[float]:
    """Arrivals per 10 s bin of a verl-style loop: one burst of ``burst`` requests per step."""
    rng = random.Random(seed)
    bins = [0.0] * (minutes * 6)
    t = rng.uniform(0, period_s)
    while t < minutes * 60:
        # The burst lands over ~20 s (the scoring of one step's rollouts), Poisson-ish.
        for _ in range(int(burst)):
            at = t + rng.expovariate(1 / 8)
            if at < minutes * 60:
                bins[int(at // 10)] += 1
        t += period_s + rng.gauss(0, jitter_s)
    return bins


def test_rl_bursts_with_jitter_give_their_step_period_within_ten_percent() -> None:
    for period_s, seed in ((360.0, 1), (150.0, 2), (600.0, 3)):
        series = rl_bursts(120, period_s, jitter_s=period_s * 0.03, burst=64, seed=seed)
        found = detect_period(series, 10, min_period_s=60, max_period_s=1800)
        assert found is not None, period_s
        assert abs(found.period_s - period_s) <= 0.1 * period_s, (found, period_s)
        assert found.strength > 0.35  # drifting phase spreads the 600 s peak over two bins


def test_a_sine_under_noise_of_equal_power_is_found_with_a_sub_bin_period() -> None:
    rng = random.Random(5)
    # Period 6.4 bins: whole-bin folding would be off by 6 %, the parabola refines it.
    series = [10 + 3 * math.sin(2 * math.pi * i / 6.4) + rng.gauss(0, 3 / math.sqrt(2)) for i in range(600)]
    found = detect_period(series, 60, min_period_s=120, max_period_s=3600)
    assert found is not None
    assert found.period_s == pytest.approx(6.4 * 60, rel=0.03)


def test_poisson_arrivals_at_a_steady_rate_have_no_period() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        series = [float(sum(rng.random() < 0.5 for _ in range(40))) for _ in range(360)]
        assert detect_period(series, 10, min_period_s=20, max_period_s=1800) is None, seed


def test_a_trend_or_a_constant_is_not_a_period() -> None:
    ramp = [float(i) + (i % 3) * 0.01 for i in range(300)]
    assert detect_period(ramp, 60, min_period_s=120, max_period_s=9000) is None
    assert detect_period([7.0] * 300, 60, min_period_s=120, max_period_s=9000) is None


def test_fewer_than_two_periods_seen_is_not_enough() -> None:
    series = rl_bursts(10, 360, jitter_s=0, burst=64, seed=4)  # 1.7 periods
    assert detect_period(series, 10, min_period_s=60, max_period_s=1800) is None


def test_the_fundamental_wins_over_its_multiples() -> None:
    series = [1.0 if i % 5 == 0 else 0.0 for i in range(400)]
    found = detect_period(series, 1, min_period_s=2, max_period_s=100)
    assert found is not None
    assert found.period_bins == pytest.approx(5, rel=0.01)


def test_phase_profile_puts_the_burst_where_it_comes() -> None:
    series = [9.0 if i % 6 == 4 else 1.0 for i in range(120)]
    profile = phase_profile(series, 6)
    assert len(profile) == 6
    assert profile.index(max(profile)) == 4
    assert profile[4] == pytest.approx(9.0)


def test_autocorrelation_is_one_at_lag_zero_and_bad_arguments_are_refused() -> None:
    assert autocorrelation([1.0, 2.0, 3.0, 1.0], 2)[0] == pytest.approx(1.0)
    assert autocorrelation([], 2) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="bin_s"):
        detect_period([1.0], 0, min_period_s=1, max_period_s=2)
    with pytest.raises(ValueError, match="min_period_s"):
        detect_period([1.0], 1, min_period_s=5, max_period_s=2)
    with pytest.raises(ValueError, match="period_bins"):
        phase_profile([1.0], 0.5)
