"""The optimiser's model of misses (docs/policy.md §10): the demand's measured noise in the
expected misses, the missed share a window's percentiles imply, and the miss penalty as the
attainment constraint's multiplier."""

from __future__ import annotations

import math

import pytest

from grm_operator.policy.corrections import missed_fraction
from grm_operator.policy.forecast import NOISE_CAP, NOISE_FLOOR, noise
from grm_operator.policy.moves import MAX_PENALTY_FACTOR, excess, penalty_factor
from support.policy import make_signals, make_spec


def test_without_noise_a_miss_is_the_demand_beyond_what_is_served() -> None:
    assert excess(5.0, 3.0, 0.0) == 2.0
    assert excess(3.0, 5.0, 0.0) == 0.0


def test_a_fleet_at_its_modelled_capacity_expects_misses_in_proportion_to_the_noise() -> None:
    # E[(X − c)⁺] at x = c is σ·φ(0) = 0.399 σ x: 0 at rest without noise, 0.4 score/s at σ = 0.1.
    assert excess(10.0, 10.0, 0.1) == pytest.approx(0.1 * 10.0 / math.sqrt(2 * math.pi))
    # More noise, more misses expected at the same headroom; headroom lowers them.
    assert excess(10.0, 12.0, 0.5) > excess(10.0, 12.0, 0.1) > 0.0
    assert excess(10.0, 14.0, 0.3) < excess(10.0, 12.0, 0.3)


def test_the_noise_of_steady_demand_is_small_and_that_of_bursts_large() -> None:
    steady = [5.0 + 0.1 * (i % 2) for i in range(60)]
    bursts = [8.0 if i % 10 == 0 else 0.2 for i in range(60)]
    assert noise(steady) == NOISE_FLOOR
    assert noise(bursts) > 0.9
    assert noise(bursts) <= NOISE_CAP
    assert noise([]) == NOISE_FLOOR  # nothing seen says nothing
    assert noise([0.0] * 20) == NOISE_FLOOR


def test_the_missed_share_of_a_window_follows_its_percentiles() -> None:
    spec = make_spec(slo={"ttftP95": "10s", "e2eP95": "60s"})
    at_p95 = make_signals(4.0, pods=2, ttft_p50=2.0, ttft_p95=10.0, e2e_p50=10.0, e2e_p95=20.0)
    assert missed_fraction(spec, at_p95) == pytest.approx(0.05, abs=1e-3)
    at_p50 = make_signals(4.0, pods=2, ttft_p50=10.0, ttft_p95=30.0)
    assert missed_fraction(spec, at_p50) == pytest.approx(0.5, abs=1e-3)
    fast = make_signals(4.0, pods=2, ttft_p50=0.5, ttft_p95=1.0, e2e_p50=5.0, e2e_p95=9.0)
    fraction = missed_fraction(spec, fast)
    assert fraction is not None and fraction < 1e-4
    assert missed_fraction(spec, make_signals(4.0, pods=2)) is None  # no percentiles: unknown


def test_the_miss_penalty_rises_with_the_share_missed_over_the_last_hour() -> None:
    load = [2.0] * 100
    assert penalty_factor(load, [0.0] * 100) == 1.0  # the target met: the fixed price
    assert penalty_factor(load, [0.005] * 100) == 1.0  # never cheaper than the fixed price
    assert penalty_factor(load, [0.03] * 100) == pytest.approx(3.0)
    assert penalty_factor(load, [0.5] * 100) == MAX_PENALTY_FACTOR
    # A missed share weighs by the load of its period: misses in an idle period count nothing.
    assert penalty_factor([0.0] * 50 + [2.0] * 50, [0.9] * 50 + [0.0] * 50) == 1.0
    assert penalty_factor([], []) == 1.0
