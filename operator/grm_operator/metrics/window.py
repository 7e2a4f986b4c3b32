"""Windowed rates and percentiles from raw scrapes: what PromQL's ``rate`` and
``histogram_quantile`` compute, done by the operator itself for the Direct source.

* :func:`histogram_quantile` is PromQL's algorithm (promql/quantile.go, ``bucketQuantile``):
  linear interpolation inside the bucket that holds the rank, the lower bound of the first
  bucket taken as 0, and a rank that falls in the ``+Inf`` bucket answered with the largest
  finite bound. Example: buckets ``(0.1: 50, 0.5: 90, +Inf: 100)`` and q = 0.95 put rank 95 in
  ``+Inf``, so the answer is 0.5; q = 0.7 gives rank 70, in (0.1, 0.5] with 40 observations
  of which 20 are needed: 0.1 + 0.4·20/40 = 0.3.
* :func:`counter_increase` sums the increases between consecutive samples and treats any
  decrease as a counter reset (the process restarted and counts from 0), like PromQL.
* A rate is the increase over the time between the first and the last sample in the window,
  per pod; pods are then summed. PromQL additionally extrapolates to the window's edges, which
  changes the increase but not the rate by more than the sampling jitter.
* The request rate is the engines' finished requests less those run for other variants' shadow
  scores (``grm_shadow_served_samples_total``); the shadow verdict counters are read as their
  increase over a window of their own (``spec.precision.shadow.window``).
* :class:`ScrapeStore` keeps a bounded ring buffer of scrapes per pod. Pods that disappear are
  forgotten; a pod with a single scrape in the window contributes gauges but no rates (as in
  Prometheus, a rate needs two samples).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from grm_operator.metrics.exposition import HistogramCounts, PodScrape
from grm_operator.policy.signals import (
    COUNTER_NAMES,
    GAUGE_NAMES,
    GPU_UTIL_NAME,
    HISTOGRAM_NAMES,
    SHADOW_COUNTER_NAMES,
    Signals,
)

__all__ = [
    "PodHistory",
    "ScrapeStore",
    "counter_increase",
    "histogram_increase",
    "histogram_quantile",
    "summarize",
]


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The q-quantile of cumulative ``(upper_bound, count)`` buckets, as PromQL computes it.

    NaN when there are fewer than two buckets, no ``+Inf`` bucket or no observations.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    # Coalesce equal bounds and force monotonic counts: scrapes racing with observations can
    # make a higher bucket read lower than the one below (PromQL's ensureMonotonic).
    bounds: list[float] = []
    counts: list[float] = []
    for bound, count in ordered:
        if bounds and bounds[-1] == bound:
            counts[-1] += count
            continue
        bounds.append(bound)
        counts.append(max(count, counts[-1]) if counts else count)
    observations = counts[-1]
    if observations <= 0 or math.isnan(observations):
        return math.nan
    rank = q * observations
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def counter_increase(values: Sequence[float]) -> float:
    """Increase of a counter over consecutive samples; a decrease is a reset to 0."""
    total = 0.0
    for prev, cur in itertools.pairwise(values):
        total += cur - prev if cur >= prev else cur
    return total


def histogram_increase(histograms: Sequence[HistogramCounts]) -> dict[float, float]:
    """Per-bucket increase over consecutive snapshots of one pod's histogram.

    A snapshot whose count or any bucket went down starts a new process (reset): its own
    counts are the increase since the reset. Buckets missing from either side are skipped.
    """
    total: dict[float, float] = {}
    for prev, cur in itertools.pairwise(histograms):
        before = dict(prev.buckets)
        after = dict(cur.buckets)
        reset = cur.count < prev.count or any(after[le] < before[le] for le in after if le in before)
        for le, value in after.items():
            if reset:
                total[le] = total.get(le, 0.0) + value
            elif le in before:
                total[le] = total.get(le, 0.0) + value - before[le]
    return total


@dataclass
class PodHistory:
    """A ring buffer of one pod's scrapes, oldest first."""

    scrapes: deque[PodScrape]

    @classmethod
    def empty(cls, capacity: int) -> PodHistory:
        """A history keeping at most ``capacity`` scrapes."""
        return cls(scrapes=deque(maxlen=capacity))

    def add(self, scrape: PodScrape) -> None:
        """Append a scrape (scrapes out of time order are dropped)."""
        if self.scrapes and scrape.time <= self.scrapes[-1].time:
            return
        self.scrapes.append(scrape)

    def within(self, start: float, end: float) -> list[PodScrape]:
        """Scrapes taken in ``[start, end]``."""
        return [s for s in self.scrapes if start <= s.time <= end]


class ScrapeStore:
    """Scrape histories of the pods of one GRMDeployment, keyed by pod name."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.pods: dict[str, PodHistory] = {}

    def add(self, pod: str, scrape: PodScrape) -> None:
        """Record a scrape of ``pod``."""
        self.pods.setdefault(pod, PodHistory.empty(self.capacity)).add(scrape)

    def retain(self, pods: Iterable[str]) -> None:
        """Forget every pod not in ``pods`` (deleted, or no longer Ready)."""
        keep = set(pods)
        for name in [p for p in self.pods if p not in keep]:
            del self.pods[name]

    def histories(self, pods: Iterable[str]) -> list[PodHistory]:
        """The histories of ``pods`` that have any."""
        return [self.pods[p] for p in pods if p in self.pods]


def _first_present(names: Sequence[str], scrapes: Sequence[PodScrape], kind: str) -> str | None:
    for name in names:
        for s in scrapes:
            present = s.histogram(name) is not None if kind == "histogram" else s.value(name) is not None
            if present:
                return name
    return None


def _quantiles(
    per_pod: Sequence[Sequence[PodScrape]], names: Sequence[str], qs: Sequence[float]
) -> list[float | None]:
    all_scrapes = [s for scrapes in per_pod for s in scrapes]
    name = _first_present(names, all_scrapes, "histogram")
    if name is None:
        return [None for _ in qs]
    rates: dict[float, float] = {}
    for scrapes in per_pod:
        hs = [h for h in (s.histogram(name) for s in scrapes) if h is not None]
        times = [s.time for s in scrapes if s.histogram(name) is not None]
        if len(hs) < 2 or times[-1] <= times[0]:
            continue
        for le, inc in histogram_increase(hs).items():
            rates[le] = rates.get(le, 0.0) + inc / (times[-1] - times[0])
    out: list[float | None] = []
    for q in qs:
        value = histogram_quantile(q, list(rates.items()))
        out.append(None if math.isnan(value) else value)
    return out


def _rate(per_pod: Sequence[Sequence[PodScrape]], names: Sequence[str]) -> float | None:
    all_scrapes = [s for scrapes in per_pod for s in scrapes]
    name = _first_present(names, all_scrapes, "value")
    if name is None:
        return None
    total: float | None = None
    for scrapes in per_pod:
        points = [(s.time, v) for s in scrapes if (v := s.value(name)) is not None]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            continue
        inc = counter_increase([v for _, v in points])
        total = (total or 0.0) + inc / (points[-1][0] - points[0][0])
    return total


def _increase(per_pod: Sequence[Sequence[PodScrape]], names: Sequence[str]) -> float | None:
    """A counter's increase over the scrapes given, summed over pods (None: no pod has it)."""
    all_scrapes = [s for scrapes in per_pod for s in scrapes]
    name = _first_present(names, all_scrapes, "value")
    if name is None:
        return None
    total = 0.0
    for scrapes in per_pod:
        values = [v for s in scrapes if (v := s.value(name)) is not None]
        total += counter_increase(values)
    return total


def _demand_rate(per_pod: Sequence[Sequence[PodScrape]]) -> float | None:
    """Engine requests per second less those run for other variants' shadow scores (not demand)."""
    rps = _rate(per_pod, COUNTER_NAMES["rps"])
    shadow = _rate(per_pod, COUNTER_NAMES["shadow_served_sps"])
    if rps is None or shadow is None:
        return rps
    # The shadow counter is incremented when a shadow score ends, after its engine requests, so
    # a window can see a few more of them: never below 0.
    return max(0.0, rps - shadow)


def _gauge(latest: Sequence[PodScrape], names: Sequence[str], mean: bool, scale: float = 1.0) -> float | None:
    name = _first_present(names, latest, "value")
    if name is None:
        return None
    values = [v for s in latest if (v := (s.mean(name) if mean else s.value(name))) is not None]
    if not values:
        return None
    return (sum(values) / len(values) if mean else sum(values)) * scale


def _gpu_util(latest: Sequence[PodScrape]) -> float | None:
    # 0–1 per GPU, averaged over the pod's GPUs and then over pods.
    return _gauge(latest, (GPU_UTIL_NAME,), mean=True)


def summarize(
    histories: Iterable[PodHistory], window_s: float, now: float, shadow_window_s: float | None = None
) -> Signals:
    """The signals of a group of pods over ``[now - window_s, now]``.

    Gauges come from each pod's newest scrape in the window; rates and percentiles from the
    increases between its first and last scrape in the window; the shadow verdict counts from
    the increases over ``[now - shadow_window_s, now]`` (default: the window), as far back as
    the pods' histories reach.
    """
    histories = list(histories)
    shadow_pods = [h.within(now - (shadow_window_s or window_s), now) for h in histories]
    shadow_pods = [scrapes for scrapes in shadow_pods if len(scrapes) >= 2]
    per_pod = [h.within(now - window_s, now) for h in histories]
    per_pod = [scrapes for scrapes in per_pod if scrapes]
    if not per_pod:
        return Signals()
    latest = [scrapes[-1] for scrapes in per_pod]
    ttft = _quantiles(per_pod, HISTOGRAM_NAMES["ttft"], (0.5, 0.95))
    itl = _quantiles(per_pod, HISTOGRAM_NAMES["itl"], (0.5, 0.95))
    e2e = _quantiles(per_pod, HISTOGRAM_NAMES["e2e"], (0.5, 0.95))
    (queue_p95,) = _quantiles(per_pod, HISTOGRAM_NAMES["queue_time"], (0.95,))
    return Signals(
        rps=_demand_rate(per_pod),
        prompt_tps=_rate(per_pod, COUNTER_NAMES["prompt_tps"]),
        generation_tps=_rate(per_pod, COUNTER_NAMES["generation_tps"]),
        shed_sps=_rate(per_pod, COUNTER_NAMES["shed_sps"]),
        ttft_p50=ttft[0],
        ttft_p95=ttft[1],
        itl_p50=itl[0],
        itl_p95=itl[1],
        e2e_p50=e2e[0],
        e2e_p95=e2e[1],
        queue_time_p95=queue_p95,
        running=_gauge(latest, GAUGE_NAMES["running"], mean=False),
        waiting=_gauge(latest, GAUGE_NAMES["waiting"], mean=False),
        kv_cache_usage=_gauge(latest, GAUGE_NAMES["kv_cache_usage"], mean=True),
        gpu_util=_gpu_util(latest),
        shadow_verdicts=_increase(shadow_pods, SHADOW_COUNTER_NAMES["shadow_verdicts"]),
        shadow_agreements=_increase(shadow_pods, SHADOW_COUNTER_NAMES["shadow_agreements"]),
        pods_reporting=len(per_pod),
        sample_age_s=max(0.0, now - max(s.time for s in latest)),
    )
