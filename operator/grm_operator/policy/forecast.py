"""The demand distribution over the look-ahead: weighted scenarios of the demand, not a point.

The policy keeps the demand per sample (score requests per second) of the last control periods
(``PolicyState.arrivals``, one value per period, up to an hour). The next ``M`` periods (the
look-ahead: the slowest cold start plus a period) are described by three kinds of scenario, each a
list of ``M`` values with a weight (the weights sum to 1):

* **persistence** (weight 1/2): today's demand continued along its least-squares trend over the
  last 3 minutes (never down, capped at 3× today + 0.1: a trend fitted on a burst's first seconds
  must not provision for a tenfold load). A ramp of +0.05 score/s² is provisioned 75 s ahead.
* **history** (weight (1 − c)/2): "the next minutes look like some minutes of the last hour": every
  ``M``-period stretch of the series, weighted by recency (half-life 15 min), ranked by its peak
  and summarised by eight representatives at the upper ends of the weighted rank bands
  0–20–40–60–80–90–95–99–100 % (weights the band widths), so the worst burst seen keeps 1 % of
  this half. This is where bursty traffic puts its risk. (Tried instead: the stretches' changes
  added to today's demand, which forgets a level the load has left at once: grid mean miss rate
  worse, 95.0 % instead of 99.8 % on code ×1.)
* **provisioned** (weight up to 1/3, falling to 0 as the series fills its first 10 minutes): what
  the running fleet serves, the prior before the series has seen enough to say otherwise (a
  fleet of 8 bf16 replicas is not evidence of a demand of 1 replica; without it, conv ×3.6 at
  error 1.4 switched to 2 fp8 replicas 30 s in and met its load at 81 % attainment).
* **periodic** (weight c/2, all of the history's 1/2 from c ≥ 0.5; only when
  :func:`grm_operator.policy.periodicity.detect_period` finds a period with strength ``c`` in the
  series; the look-ahead is then two cold starts long): what came one, two and three periods ago
  at the same phase, each widened by ±1 period of timing jitter. An RL training loop's next burst
  is then in the distribution at its time and size, ahead of its cold start, and the quiet phase
  between bursts weighs what the quiet phases weighed.

Only persistence and history describe a fleet *at rest* (``steady``): the periodic scenario is
foreseen, so a later tick provisions for it, and it counts only over the look-ahead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from grm_operator.policy.periodicity import Periodicity, detect_period, phase_profile

#: The demand's noise (:func:`noise`) is measured over this many periods (30 min at 15 s), and kept
#: within these bounds: a short or idle series says nothing, and beyond 1 the normal approximation
#: of the miss count says little more.
NOISE_BINS = 120
NOISE_FLOOR = 0.05
NOISE_CAP = 1.0
#: Least-squares trend over this many seconds of the series.
TREND_WINDOW_S = 180.0
#: Age at which a past stretch weighs half as much as the latest: 15 min, three default scale-down
#: windows (the code trace idles up to 13 min between bursts).
HISTORY_HALF_LIFE_S = 900.0
#: Rank bands of the history scenarios (upper ends; the weight of each is its width).
HISTORY_BANDS = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0)
#: Periods searched: at least 4 control periods and 60 s, at most 30 min (two fit in the hour).
MIN_PERIOD_S = 60.0
MAX_PERIOD_S = 1800.0
#: Until the series covers this long, the fleet that runs (sized by the user, or by the policy before
#: a restart) stands for the demand not yet seen, with a weight falling from 1/3 to 0.
PRIOR_MEMORY_S = 600.0
#: From this strength on, the period explains the history (its weight goes to the periodic scenarios).
TRUSTED_PERIOD_STRENGTH = 0.5
#: A period weaker than this is not forecast from (its bursts are not where it says).
MIN_PERIOD_STRENGTH = 0.3


@dataclass(frozen=True)
class Scenario:
    """One possible future: demand per sample (score requests/s) at each of the next periods."""

    kind: str
    weight: float
    values: tuple[float, ...]
    #: Whether it describes the fleet at rest beyond the look-ahead (not a foreseen event).
    steady: bool


@dataclass(frozen=True)
class BurstForecast:
    """The next burst of a periodic load: in how long, how big, and how sure."""

    period_s: float
    in_s: float
    size: float
    confidence: float


@dataclass(frozen=True)
class DemandForecast:
    """The demand now, the scenarios of the look-ahead, and the periodic burst if there is one."""

    now: float
    scenarios: tuple[Scenario, ...]
    burst: BurstForecast | None

    def quantile(self, q: float) -> float:
        """The weighted ``q``-quantile of the scenarios' peaks (score requests/s)."""
        ranked = sorted((max(s.values, default=0.0), s.weight) for s in self.scenarios)
        seen = 0.0
        for peak, weight in ranked:
            seen += weight
            if seen >= q - 1e-9:
                return peak
        return ranked[-1][0] if ranked else 0.0


def noise(series: Sequence[float], bins: int = NOISE_BINS) -> float:
    """The demand's relative standard deviation from one period to the next over the last
    ``bins`` values: RMS of successive differences ÷ √2 ÷ the mean, within
    [NOISE_FLOOR, NOISE_CAP]. Steady conversational traffic measures 0.05-0.15, the bursty code
    trace 1 and more (a burst enters the 1-min window within one 15-s period)."""
    tail = list(series[-bins:])
    mean = math.fsum(tail) / len(tail) if tail else 0.0
    if len(tail) < 4 or mean <= 0:
        return NOISE_FLOOR
    square = math.fsum((b - a) ** 2 for a, b in itertools.pairwise(tail)) / (len(tail) - 1)
    return min(NOISE_CAP, max(NOISE_FLOOR, math.sqrt(square / 2.0) / mean))


def slope(values: Sequence[float], period_s: float) -> float:
    """Least-squares slope (per second) of equally spaced values; 0 with fewer than 3."""
    n = len(values)
    if n < 3:
        return 0.0
    mean_i = (n - 1) / 2
    mean_v = math.fsum(values) / n
    var = math.fsum((i - mean_i) ** 2 for i in range(n))
    return math.fsum((i - mean_i) * (v - mean_v) for i, v in enumerate(values)) / var / period_s


def record(
    arrivals: Sequence[float], at: float | None, now: float, value: float, period_s: float, keep: int
) -> tuple[float, ...]:
    """The series with ``value`` appended at ``now``: a tick missed in between repeats the last
    value (sample and hold keeps the phase of a periodic load), a gap longer than the whole
    series starts it again; at most ``keep`` values."""
    series = list(arrivals)
    if at is not None and series:
        missed = round((now - at) / period_s) - 1
        if missed >= keep or missed < -1:
            series = []
        elif missed > 0:
            series.extend([series[-1]] * missed)
        elif missed == -1:
            series.pop()  # two decisions within one period: the newer replaces the older
    series.append(max(value, 0.0))
    return tuple(series[-keep:])


def forecast(
    series: Sequence[float], period_s: float, ahead: int, provisioned: float = 0.0
) -> DemandForecast:
    """The scenarios of the next ``ahead`` periods given the series (newest last, non-empty), and
    what the running fleet serves (``provisioned``, score/s: the prior while the series is short)."""
    now = series[-1]
    trend_n = max(3, round(TREND_WINDOW_S / period_s))
    rise = max(0.0, slope(series[-trend_n:], period_s))
    persistence = tuple(min(now + rise * period_s * (i + 1), 3 * now + 0.1) for i in range(ahead))
    found = _period(series, period_s)
    confidence = found.strength if found is not None else 0.0
    # A confident period explains the history: its stretches at other phases are not this phase's
    # risk (an RL loop's bursts would keep the burst's fleet through every quiet phase).
    explained = 1.0 if confidence >= TRUSTED_PERIOD_STRENGTH else confidence
    scenarios = [Scenario("persistence", 0.5, persistence, True)]
    history = _history(series, ahead, period_s)
    if history:
        scenarios += [Scenario(s.kind, s.weight * (1 - explained), s.values, True) for s in history]
    burst = None
    if found is not None:
        periodic = _periodic(series, found, ahead)
        scenarios += [Scenario("periodic", explained * 0.5 / len(periodic), v, False) for v in periodic]
        burst = _next_burst(series, found, period_s)
    unseen = max(0.0, 1.0 - len(series) * period_s / PRIOR_MEMORY_S)
    if unseen > 0 and provisioned > 0:
        scenarios.append(Scenario("provisioned", 0.5 * unseen, (provisioned,) * ahead, True))
    total = math.fsum(s.weight for s in scenarios)
    scenarios = [Scenario(s.kind, s.weight / total, s.values, s.steady) for s in scenarios]
    return DemandForecast(now, tuple(scenarios), burst)


def _period(series: Sequence[float], period_s: float) -> Periodicity | None:
    if len(series) < 8:
        return None
    return detect_period(
        series,
        period_s,
        min_period_s=max(MIN_PERIOD_S, 4 * period_s),
        max_period_s=MAX_PERIOD_S,
        min_strength=MIN_PERIOD_STRENGTH,
    )


def _history(series: Sequence[float], ahead: int, period_s: float) -> list[Scenario]:
    """Representatives of the series' ``ahead``-long stretches by weighted rank of their peak
    (weight 1/2; a stretch's weight halves every ``HISTORY_HALF_LIFE_S`` of age)."""
    n = len(series)
    stretches = [
        (max(series[i : i + ahead]), 0.5 ** ((n - i - ahead) * period_s / HISTORY_HALF_LIFE_S), i)
        for i in range(0, n - ahead + 1)
    ]
    if len(stretches) < 2:
        return []
    stretches.sort()
    total = math.fsum(w for _, w, _ in stretches)
    out: list[Scenario] = []
    low, seen, j = 0.0, 0.0, 0
    for high in HISTORY_BANDS:
        while j < len(stretches) - 1 and (seen + stretches[j][1]) / total < high - 1e-9:
            seen += stretches[j][1]
            j += 1
        start = stretches[j][2]
        out.append(Scenario("history", 0.5 * (high - low), tuple(series[start : start + ahead]), True))
        low = high
    return out


def _periodic(series: Sequence[float], found: Periodicity, ahead: int) -> list[tuple[float, ...]]:
    """The next ``ahead`` values as they were 1, 2 and 3 periods ago (±1 period of jitter)."""
    n = len(series)
    out = []
    for back in (1, 2, 3):
        start = n - back * found.period_bins
        if start < 1:
            break
        values = []
        for i in range(ahead):
            at = start + i
            lo, hi = max(0, math.floor(at) - 1), min(n - 1, math.ceil(at) + 1)
            values.append(max(series[lo : hi + 1]) if lo <= hi else 0.0)
        out.append(tuple(values))
    return out


def _next_burst(series: Sequence[float], found: Periodicity, period_s: float) -> BurstForecast:
    """When the busiest phase of the period comes next, and its mean demand."""
    profile = phase_profile(series, found.period_bins)
    peak_phase = max(range(len(profile)), key=lambda p: profile[p])
    now_phase = ((len(series) - 1) % found.period_bins) * len(profile) / found.period_bins
    bins_ahead = (peak_phase - now_phase) % len(profile) * found.period_bins / len(profile)
    return BurstForecast(found.period_s, bins_ahead * period_s, profile[peak_phase], found.strength)
