"""Periodicity of an arrival series: is the load periodic (an RL training loop), with what period.

RL training calls its reward model once per training step (verl's colocated mode: all rollouts
finish, then every sample is scored at once) or as samples complete (standalone mode, OpenRLHF,
slime), so its load repeats with the step time, which drifts as sequence lengths change. Both the
policy (online, over the last tens of minutes, to start replicas before the next burst) and the
report (offline, over days) ask the same question of a series of arrival counts per bin, so the
detector lives here, pure and dependency-free.

Method: the sample autocorrelation of the mean-removed series, r(k) for lags between the shortest
and longest period asked about. The period is the lag of the highest local maximum of r, unless a
shorter maximum divides it: a series with period P also correlates at 2P, 3P, ..., and when the
phase drifts (jittered training steps) the peak at P spreads over two bins and can come out lower
than the one at 2P. So the period is the shortest maximum whose lag the highest one's is a whole
multiple of (within 10 %) and whose r reaches 60 % of the highest. The lag is refined to a
fraction of a bin by a parabola through r at lag−1, lag, lag+1, since a 6-minute period in
1-minute bins is otherwise only known to ±8 %.

The answer is *no period* (``None``) when

* fewer than two whole periods fit in the series (r at lag P then averages fewer than P pairs of
  one repetition with the next, which says little);
* the series is constant (nothing to correlate);
* the peak is not significant: white noise of N samples has r(k) ≈ N(0, 1/N) at every lag, so
  over the tens to hundreds of lags searched its largest value reaches about 3.5/√N by chance; a
  peak must exceed ``max(min_strength, 4/√N)``;
* the peak is not a peak: a trend or a slow drift makes r decay monotonically from lag 0, so r at
  the candidate must rise above the lowest r before it by at least half its height (its
  prominence), which a decaying r never does.

``strength`` is r at the period, in (0, 1]: 1 for a series that repeats exactly, about 0.5 for a
sine under noise of equal power. It is the confidence a caller weighs its forecast by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Periodicity", "autocorrelation", "detect_period", "phase_profile"]

#: How far from a whole multiple of a shorter maximum's lag the highest one may lie.
_MULTIPLE_TOLERANCE = 0.10

#: The least r, as a fraction of the highest maximum's, of a maximum that is its fundamental.
_FUNDAMENTAL_FRACTION = 0.6

#: White noise of N samples stays below this many 1/sqrt(N) at nearly every lag searched.
_NOISE_SIGMAS = 4.0


@dataclass(frozen=True)
class Periodicity:
    """A detected period: ``period_s`` seconds, autocorrelation ``strength`` at that lag."""

    period_s: float
    strength: float
    #: The period in bins, refined to a fraction of a bin.
    period_bins: float
    #: The significance threshold the peak had to exceed (for reports).
    threshold: float


def autocorrelation(series: Sequence[float], max_lag: int) -> list[float]:
    """Sample autocorrelation r(0..max_lag) of ``series`` (biased estimator, r(0) = 1).

    The biased estimator (dividing every lag by N, not N − k) keeps |r| ≤ 1 and shrinks long lags,
    which favours the fundamental period over its multiples. A constant series has no
    autocorrelation; it returns all zeros.
    """
    n = len(series)
    if n == 0:
        return [0.0] * (max_lag + 1)
    mean = math.fsum(series) / n
    centred = [x - mean for x in series]
    variance = math.fsum(c * c for c in centred)
    if variance <= 0.0:
        return [0.0] * (max_lag + 1)
    acf = []
    for lag in range(max_lag + 1):
        if lag >= n:
            acf.append(0.0)
            continue
        acf.append(math.fsum(centred[i] * centred[i + lag] for i in range(n - lag)) / variance)
    return acf


def detect_period(
    counts: Sequence[float],
    bin_s: float,
    *,
    min_period_s: float,
    max_period_s: float,
    min_strength: float = 0.3,
) -> Periodicity | None:
    """The period of ``counts`` (arrivals per ``bin_s``-second bin, oldest first), or ``None``.

    Only periods in [``min_period_s``, ``max_period_s``] are searched; the longest searchable is
    also capped at half the series, so that two repetitions are seen. ``min_strength`` is the
    least autocorrelation a caller accepts as a period whatever the series length.
    """
    if bin_s <= 0:
        raise ValueError(f"bin_s must be positive, got {bin_s}")
    if not 0 < min_period_s <= max_period_s:
        raise ValueError(f"need 0 < min_period_s <= max_period_s, got {min_period_s} and {max_period_s}")
    n = len(counts)
    # A local maximum needs a neighbour either side, hence at least 2 bins.
    min_lag = max(2, math.ceil(min_period_s / bin_s))
    max_lag = min(math.floor(max_period_s / bin_s), n // 2)
    if max_lag < min_lag:
        return None
    acf = autocorrelation(counts, max_lag + 1)
    threshold = max(min_strength, _NOISE_SIGMAS / math.sqrt(n))
    maxima = [
        lag
        for lag in range(min_lag, max_lag + 1)
        if acf[lag] >= acf[lag - 1] and acf[lag] > acf[lag + 1] and acf[lag] > threshold
    ]
    # Prominence: the lowest r between lag 0 and the candidate must lie well below it.
    maxima = [lag for lag in maxima if acf[lag] - min(acf[: lag + 1]) >= acf[lag] / 2]
    if not maxima:
        return None
    highest = max(maxima, key=lambda m: acf[m])
    lag = min(m for m in maxima if acf[m] >= _FUNDAMENTAL_FRACTION * acf[highest] and _divides(m, highest))
    refined = lag + _parabola_offset(acf[lag - 1], acf[lag], acf[lag + 1])
    return Periodicity(period_s=refined * bin_s, strength=acf[lag], period_bins=refined, threshold=threshold)


def phase_profile(counts: Sequence[float], period_bins: float) -> list[float]:
    """The mean count at each phase of a period, ``round(period_bins)`` values, phase 0 first.

    Bin i has phase ``(i mod period_bins)``, rounded down to a whole bin, so a fractional period
    (e.g. 6.4 bins) does not smear a burst over two phases as a whole-bin fold would after a few
    repetitions. The profile's argmax is where in the period the burst comes; its max over its
    mean is how bursty the period is.
    """
    if period_bins < 1:
        raise ValueError(f"period_bins must be at least 1, got {period_bins}")
    phases = max(1, round(period_bins))
    sums = [0.0] * phases
    seen = [0] * phases
    for i, count in enumerate(counts):
        phase = min(phases - 1, int((i % period_bins) * phases / period_bins))
        sums[phase] += count
        seen[phase] += 1
    return [s / k if k else 0.0 for s, k in zip(sums, seen, strict=True)]


def _divides(short: int, long: int) -> bool:
    """Whether lag ``long`` is a whole multiple of lag ``short``, within the tolerance."""
    multiple = long / short
    return abs(multiple - round(multiple)) <= _MULTIPLE_TOLERANCE * round(multiple)


def _parabola_offset(left: float, centre: float, right: float) -> float:
    """Where a parabola through (−1, left), (0, centre), (1, right) peaks, in (−0.5, 0.5)."""
    curvature = left - 2 * centre + right
    if curvature >= 0:
        return 0.0
    return max(-0.5, min(0.5, 0.5 * (left - right) / curvature))
