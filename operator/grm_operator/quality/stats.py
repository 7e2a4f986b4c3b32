"""Statistics of a quality measurement: binomial intervals, rank correlation, sample sizes.

A variant's measured quality is a proportion, the share of evaluation items on which its GRM
verdict (which response wins) matches the reference's. The gate compares the **lower** end of a
confidence interval with the floor, never the point estimate: 50 of 50 agreeing items is a point
estimate of 1.0, but a true agreement of 0.93 gives 50 of 50 with probability 0.93^50 = 2.6 %, so
with 50 items the data cannot tell a 0.93 variant from a perfect one. The lower bound (Wilson:
0.929 for 50/50) says how good the variant is *at least*, at the chosen confidence, and it rises
with the number of items, so a small set cannot admit a variant by luck.

* :func:`wilson_interval`: the Wilson score interval (good coverage near 0 and 1, where the normal
  "Wald" interval collapses to a width of 0 at 50/50); the gate's default.
* :func:`clopper_pearson_interval`: the exact interval (inverting the binomial test), conservative.
* :func:`kendall_tau_b` with :func:`kendall_interval`: rank agreement of the two models' scores,
  with the Fisher-z interval of Fieller, Hartley & Pearson (1957), variance 0.437 / (n − 4).
* :func:`items_needed`: how many items a floor needs so a variant of a given true agreement passes
  with a given probability (power), computed exactly from the binomial distribution.

Pure: no I/O, stdlib only (``math``, ``statistics.NormalDist``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

__all__ = [
    "Interval",
    "IntervalMethod",
    "binomial_interval",
    "clopper_pearson_interval",
    "items_needed",
    "kendall_interval",
    "kendall_tau_b",
    "lower_bound",
    "pass_probability",
    "wilson_interval",
]

IntervalMethod = Literal["wilson", "clopper-pearson"]

#: Two-sided confidence of every interval unless said otherwise: its lower end is a one-sided
#: 97.5 % lower bound.
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    estimate: float
    low: float
    high: float


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check_counts(successes: int, n: int) -> None:
    if n < 1:
        raise ValueError(f"need at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within [0, n={n}], got {successes}")


def wilson_interval(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Wilson score interval of a binomial proportion (two-sided ``confidence``)."""
    _check_counts(successes, n)
    z = _z(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Exact ends at 0 and n (the formula gives them up to rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high)


def _binomial_sf(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), summed in log space (n up to ~10⁶ without overflow)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def clopper_pearson_interval(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Exact (Clopper-Pearson) interval: the ``p`` whose one-sided binomial tests at
    ``(1 − confidence) / 2`` just fail to reject; found by bisection (60 halvings: 1e-18)."""
    _check_counts(successes, n)
    alpha = (1.0 - confidence) / 2.0
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    low = 0.0
    if successes > 0:
        # P(X ≥ successes | p) grows with p: the low end is where it equals alpha.
        a, b = 0.0, 1.0
        for _ in range(60):
            mid = (a + b) / 2
            if _binomial_sf(successes, n, mid) < alpha:
                a = mid
            else:
                b = mid
        low = (a + b) / 2
    high = 1.0
    if successes < n:
        # P(X ≤ successes | p) = 1 − P(X ≥ successes + 1) falls with p: the high end equals alpha.
        a, b = 0.0, 1.0
        for _ in range(60):
            mid = (a + b) / 2
            if 1.0 - _binomial_sf(successes + 1, n, mid) > alpha:
                a = mid
            else:
                b = mid
        high = (a + b) / 2
    return Interval(successes / n, low, high)


def binomial_interval(
    successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE, method: IntervalMethod = "wilson"
) -> Interval:
    """The interval of ``method`` (``wilson`` or ``clopper-pearson``)."""
    if method == "wilson":
        return wilson_interval(successes, n, confidence)
    if method == "clopper-pearson":
        return clopper_pearson_interval(successes, n, confidence)
    raise ValueError(f"unknown interval method {method!r}: expected wilson or clopper-pearson")


def lower_bound(
    successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE, method: IntervalMethod = "wilson"
) -> float:
    """The lower end of the interval: what the gate compares with ``precision.minQuality``."""
    return binomial_interval(successes, n, confidence, method).low


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b of paired observations (ties in either variable corrected); O(n²).

    Raises ValueError for fewer than 2 pairs or when either side is constant (τ undefined).
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
    n = len(x)
    if n < 2:
        raise ValueError("need at least 2 pairs for a rank correlation")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    if denominator == 0:
        raise ValueError("a side is constant: rank correlation undefined")
    return (concordant - discordant) / denominator


def kendall_interval(tau: float, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Fisher-z interval of Kendall's τ from ``n`` pairs: atanh(τ) ± z·√(0.437 / (n − 4))
    (Fieller, Hartley & Pearson 1957); needs n ≥ 5."""
    if n < 5:
        raise ValueError(f"need at least 5 pairs for an interval of Kendall's tau, got {n}")
    if not -1.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [-1, 1], got {tau}")
    # atanh(±1) is infinite: clamp so a perfect correlation still gets a finite (upper = 1) interval.
    centre = math.atanh(max(-0.999999, min(0.999999, tau)))
    half = _z(confidence) * math.sqrt(0.437 / (n - 4))
    return Interval(tau, math.tanh(centre - half), math.tanh(centre + half))


def pass_probability(
    floor: float,
    agreement: float,
    n: int,
    confidence: float = DEFAULT_CONFIDENCE,
    method: IntervalMethod = "wilson",
) -> float:
    """Probability that a variant whose true agreement is ``agreement`` passes a gate at ``floor``
    with ``n`` items: P(lower bound of X/n ≥ floor), X ~ Binomial(n, agreement)."""
    # The lower bound grows with the count: the smallest passing count decides.
    for k in range(n + 1):
        if lower_bound(k, n, confidence, method) >= floor:
            return _binomial_sf(k, n, agreement)
    return 0.0


def items_needed(
    floor: float,
    agreement: float,
    power: float = 0.8,
    confidence: float = DEFAULT_CONFIDENCE,
    method: IntervalMethod = "wilson",
    limit: int = 1_000_000,
) -> int | None:
    """The fewest items with which a variant of true ``agreement`` passes the gate at ``floor``
    with probability ≥ ``power``; None when ``agreement`` ≤ ``floor`` (no sample size suffices)
    or more than ``limit`` would be needed.

    The pass probability is not monotone in n (the passing count jumps by whole items), so this is
    the first n from which it stays ≥ power over the next 20 sizes; found by doubling, then a
    linear scan.
    """
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if agreement <= floor:
        return None

    def passes(n: int) -> bool:
        return all(
            pass_probability(floor, agreement, m, confidence, method) >= power for m in (n, n + 7, n + 20)
        )

    high = 1
    while not passes(high):
        high *= 2
        if high > limit:
            return None
    low = high // 2
    # Bisection to a bracket of 16, then a scan; each check keeps the sawtooth in mind.
    while high - low > 16:
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid
    for n in range(max(1, low), high + 1):
        if pass_probability(floor, agreement, n, confidence, method) >= power and passes(n):
            return n
    return high
