"""The Wilson score interval (``wilson_interval``): a confidence interval for a proportion, here
the agreement of a variant's GRM verdicts with the reference's.

Why Wilson and not the normal ("Wald") interval p ± z·√(p(1−p)/n): at the agreements that
matter (0.95–1.0) and the sample sizes one gets (tens to hundreds) the Wald interval collapses —
100 agreements out of 100 give p = 1 and a zero-width interval [1, 1], which would admit any
variant on a lucky sample. Wilson's interval inverts the score test and stays honest there:
100/100 at 95 % gives [0.963, 1.0]. It is the interval Agresti & Coull (1998) recommend for
binomial proportions.

    centre = (p + z²/2n) / (1 + z²/n)
    half   = z / (1 + z²/n) · √(p(1−p)/n + z²/4n²)

Worked numbers (z = 1.96, 95 % two-sided): 0/0 → [0, 1] (no evidence); 97/100 → [0.915,
0.990]; 490/500 → [0.964, 0.989]. How many comparisons a floor needs: a perfect record of n
gives a lower bound n/(n + z²), so clearing a floor f needs n ≥ z²·f/(1 − f): 125 for f =
0.97, 381 for f = 0.99. Pure (no I/O), so both the operator and the evaluation tools can use it.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["comparisons_to_clear", "wilson_interval", "z_for"]


def z_for(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (0.95 → 1.960)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of ``successes`` out of ``n`` trials.

    ``n`` = 0 gives (0, 1): nothing is known. Counts may be non-integral (increases of
    Prometheus counters are extrapolated) but must satisfy 0 ≤ successes ≤ n.
    """
    if n < 0 or successes < 0 or successes > n + 1e-9:
        raise ValueError(f"need 0 ≤ successes ≤ n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = z_for(confidence)
    p = min(1.0, successes / n)
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    # At p = 0 (p = 1) the bound is exactly 0 (1); rounding would leave 1e-17 there.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def comparisons_to_clear(floor: float, confidence: float = 0.95) -> int:
    """The fewest comparisons whose perfect record has a lower bound ≥ ``floor``:
    ⌈z²·f/(1 − f)⌉ (125 at f = 0.97, 95 %). Below that, a lower bound under the floor says
    nothing about the variant; 0 for a floor of 0."""
    if floor <= 0.0:
        return 0
    if floor >= 1.0:
        raise ValueError("no finite number of comparisons clears a floor of 1")
    z = z_for(confidence)
    return math.ceil(z * z * floor / (1.0 - floor) - 1e-9)
