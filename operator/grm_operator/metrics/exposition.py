"""One scrape of one worker's ``/metrics``, reduced to the numbers the operator reads.

A vLLM worker exposes every metric once per engine (labels ``engine``, ``model_name``); a pod
with a data-parallel engine has several label sets per name. The operator only ever wants the
pod's total, so a scrape is folded here into :class:`PodScrape`: each sample name summed over
its label sets (and histogram buckets summed per ``le``), together with how many series were
summed, so that ratio gauges such as ``vllm:kv_cache_usage_perc`` can be averaged instead.

Parsing uses prometheus_client's text parser (the exposition format's reference
implementation in Python), so escaping, ``+Inf``/``NaN`` and comments follow the format.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ExpositionError", "HistogramCounts", "PodScrape", "parse_scrape"]


class ExpositionError(ValueError):
    """The text is not in the Prometheus exposition format."""


@dataclass(frozen=True)
class HistogramCounts:
    """Cumulative bucket counts of one histogram (summed over label sets), ``le`` ascending.

    ``buckets`` always ends with ``+Inf`` when the source exposed it; ``count`` and ``sum`` are
    the ``_count`` and ``_sum`` samples.
    """

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float


@dataclass(frozen=True)
class PodScrape:
    """What one scrape of one pod said, at ``time`` (seconds, the caller's clock)."""

    time: float
    values: Mapping[str, float] = field(default_factory=dict)
    series: Mapping[str, int] = field(default_factory=dict)
    histograms: Mapping[str, HistogramCounts] = field(default_factory=dict)

    def value(self, name: str) -> float | None:
        """The sum over label sets of sample ``name`` (counters use their ``_total`` name)."""
        return self.values.get(name)

    def mean(self, name: str) -> float | None:
        """The mean over label sets of sample ``name`` (for per-engine ratios)."""
        total = self.values.get(name)
        n = self.series.get(name, 0)
        return None if total is None or n == 0 else total / n

    def histogram(self, name: str) -> HistogramCounts | None:
        """The histogram whose samples are ``name_bucket``, ``name_count``, ``name_sum``."""
        return self.histograms.get(name)


def _le(labels: Mapping[str, str]) -> float | None:
    raw = labels.get("le")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def parse_scrape(text: str, time: float, keep: Iterable[str] | None = None) -> PodScrape:
    """Fold exposition ``text`` into a :class:`PodScrape` taken at ``time``.

    ``keep`` limits the result to the given metric names (sample names for counters and gauges,
    base names for histograms); None keeps everything. NaN samples are dropped: a gauge the
    engine has not set yet says nothing.
    """
    wanted = set(keep) if keep is not None else None
    values: dict[str, float] = {}
    series: dict[str, int] = {}
    buckets: dict[str, dict[float, float]] = {}
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise ExpositionError(f"cannot parse metrics text: {exc}") from exc
    for family in families:
        if family.type == "histogram":
            if wanted is not None and family.name not in wanted:
                continue
            for s in family.samples:
                if math.isnan(s.value):
                    continue
                if s.name.endswith("_bucket"):
                    le = _le(s.labels)
                    if le is not None:
                        per = buckets.setdefault(family.name, {})
                        per[le] = per.get(le, 0.0) + s.value
                elif s.name.endswith("_count"):
                    counts[family.name] = counts.get(family.name, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    sums[family.name] = sums.get(family.name, 0.0) + s.value
            continue
        for s in family.samples:
            if wanted is not None and s.name not in wanted:
                continue
            if math.isnan(s.value) or s.name.endswith("_created"):
                continue
            values[s.name] = values.get(s.name, 0.0) + s.value
            series[s.name] = series.get(s.name, 0) + 1
    histograms = {
        name: HistogramCounts(
            buckets=tuple(sorted(per.items())),
            count=counts.get(name, per.get(math.inf, 0.0)),
            sum=sums.get(name, 0.0),
        )
        for name, per in buckets.items()
    }
    return PodScrape(time=time, values=values, series=series, histograms=histograms)
