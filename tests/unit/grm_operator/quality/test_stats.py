"""The statistics of the accuracy gate against published values and exact computations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grm_operator.quality.stats import (
    _binomial_sf,
    clopper_pearson_interval,
    items_needed,
    kendall_interval,
    kendall_tau_b,
    lower_bound,
    pass_probability,
    wilson_interval,
)


def test_wilson_matches_published_values() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 → 0.2553–0.3662 (method 3).
    interval = wilson_interval(81, 263)
    assert interval.low == pytest.approx(0.2553, abs=1e-4)
    assert interval.high == pytest.approx(0.3662, abs=1e-4)
    # 8/10: the textbook 0.490–0.943.
    assert wilson_interval(8, 10).low == pytest.approx(0.4902, abs=1e-4)
    assert wilson_interval(8, 10).high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_at_all_successes_is_z2_over_n_plus_z2() -> None:
    # All n agree: low = n / (n + z²), the closed form the docs use (125/125 → 0.9702).
    z2 = 1.959963984540054**2
    for n in (10, 50, 125, 1000):
        assert wilson_interval(n, n).low == pytest.approx(n / (n + z2), rel=1e-12)
        assert wilson_interval(n, n).high == 1.0
    assert wilson_interval(0, 20).low == 0.0


def test_clopper_pearson_matches_closed_forms() -> None:
    # k = n: low = (α/2)^(1/n); k = 0: high = 1 − (α/2)^(1/n).
    for n in (5, 50, 300):
        assert clopper_pearson_interval(n, n).low == pytest.approx(0.025 ** (1 / n), rel=1e-9)
        assert clopper_pearson_interval(0, n).high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
    # 8/10: 0.4439–0.9748 (exact binomial, e.g. R's binom.test).
    interval = clopper_pearson_interval(8, 10)
    assert interval.low == pytest.approx(0.44390, abs=1e-5)
    assert interval.high == pytest.approx(0.97479, abs=1e-5)


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_intervals_contain_the_estimate(counts: tuple[int, int]) -> None:
    k, n = counts
    for interval in (wilson_interval(k, n), clopper_pearson_interval(k, n)):
        assert 0.0 <= interval.low <= k / n <= interval.high <= 1.0
    # The exact interval's ends are where the one-sided binomial tests sit at α/2 = 0.025.
    exact = clopper_pearson_interval(k, n)
    if k > 0:
        assert _binomial_sf(k, n, exact.low) == pytest.approx(0.025, rel=1e-6)
    if k < n:
        assert 1 - _binomial_sf(k + 1, n, exact.high) == pytest.approx(0.025, rel=1e-6)


def test_lower_bound_rises_with_more_agreeing_items() -> None:
    bounds = [lower_bound(n, n) for n in (50, 100, 200, 400)]
    assert bounds == sorted(bounds)
    assert lower_bound(50, 50) < 0.97 < lower_bound(200, 200)
    assert lower_bound(45, 50, method="clopper-pearson") < lower_bound(45, 50)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="within"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.0)


def test_kendall_tau_b_known_values() -> None:
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # One swapped pair of 10: (9 − 1) / 10.
    assert kendall_tau_b([1, 2, 3, 4, 5], [1, 2, 3, 5, 4]) == pytest.approx(0.8)
    # Ties: x = [1,1,2,2], y = [1,2,3,4]: C = 4, D = 0, ties in x = 2 → 4 / √(6·4) = 0.8165.
    assert kendall_tau_b([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(4 / math.sqrt(24))
    with pytest.raises(ValueError, match="constant"):
        kendall_tau_b([1, 1, 1], [1, 2, 3])


def test_kendall_interval_is_fieller_fisher_z() -> None:
    interval = kendall_interval(0.5, 104)
    half = 1.959963984540054 * math.sqrt(0.437 / 100)
    assert interval.low == pytest.approx(math.tanh(math.atanh(0.5) - half))
    assert interval.high == pytest.approx(math.tanh(math.atanh(0.5) + half))
    # A perfect correlation: an interval that holds it, with a lower end below 1.
    perfect = kendall_interval(1.0, 320)
    assert perfect.high == 1.0 and 0.95 < perfect.low < 1.0
    assert kendall_interval(-1.0, 320).low == -1.0
    with pytest.raises(ValueError, match="5 pairs"):
        kendall_interval(0.5, 4)


def test_items_needed_for_a_097_floor() -> None:
    # A perfect variant needs the n with n / (n + z²) ≥ 0.97: n ≥ 0.97·z²/0.03 = 124.2 → 125.
    assert items_needed(0.97, 1.0) == 125
    needed = items_needed(0.97, 0.99)
    assert needed is not None and 300 < needed < 600
    assert pass_probability(0.97, 0.99, needed) >= 0.8
    # Closer to the floor needs more; at or below it no sample size suffices.
    assert items_needed(0.97, 0.98) > needed  # type: ignore[operator]
    assert items_needed(0.97, 0.97) is None
    assert items_needed(0.97, 0.96) is None


def test_pass_probability_is_exact_binomial() -> None:
    # n = 125 passes only at 125/125: P = 0.99^125.
    assert pass_probability(0.97, 0.99, 125) == pytest.approx(0.99**125)
