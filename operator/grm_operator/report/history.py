"""A GRMDeployment's history read back from Prometheus: the range queries and the per-bin series.

The report divides the time range into bins of ``step`` seconds and asks Prometheus one range
query per quantity (``/api/v1/query_range`` through ``prometheus-api-client``), evaluated at the
range's start and at the end of every bin. Every query selects the GRMDeployment's worker series
by the target labels of docs/metrics.md (``{namespace="rl",grm_dev_deployment="reward"}``).

**Counters are read raw, one series per pod, and differenced here** — not with ``increase()``.
``increase(x[step])`` over back-to-back windows loses what a counter gained between the last
sample of one window and the first of the next and makes up for it by extrapolation: with a 1-s
scrape and 4-s bins, a burst of 5 requests per bin came back as 2.7, 5.3 or 0 (measured on the
local cluster). The value of each pod's counter at every bin end is exact; the bin's increase is
its difference to the previous bin end. A series that appears during the range is a new pod,
whose counter started at 0 (the workers export theirs at 0 from the start), so its first value is
its increase; a value lower than the previous one is a reset (a restart), the new value is the
increase. A pod's last requests before it went away, after its last scrape, are not seen.

The queries (:data:`QUERIES`, ``SEL`` the selector):

* ``requests``: ``grm_score_requests_total SEL`` (per pod and ``outcome``);
* ``samples``: ``grm_score_samples_sum SEL`` (critique samples drawn);
* ``prompt_tokens``, ``generation_tokens``: ``vllm:prompt_tokens_total SEL``,
  ``vllm:generation_tokens_total SEL``;
* ``shed_samples``: ``grm_score_samples_shed_total SEL``;
* ``e2e_buckets``, ``ttft_buckets``: ``grm_score_latency_seconds_bucket SEL``,
  ``vllm:time_to_first_token_seconds_bucket SEL``;
* ``e2e_seconds``, ``e2e_count``: ``grm_score_latency_seconds_sum SEL`` and ``_count SEL``, the
  mean score latency;
* ``pod_seconds``: ``sum_over_time((count by (grm_dev_variant) (up SEL))[step:resolution])``
  divided by ``count_over_time(vector(1)[step:resolution])`` (the mean pods over the bin's
  points), times the step in seconds;
* ``sample_budget``: ``max by (grm_dev_variant) (grm_sample_budget SEL)``, the budget at each
  bin end, which attributes a whole bin to the budget it ended with (a change inside a bin is
  placed at its end).

Why these. Arrivals are the GRM front's score requests (every outcome: a rejected request was
demand too); tokens per score come from the engines' token counters divided by the samples the
fronts drew. Pods are Prometheus' scrape targets (``up``, whether or not the scrape succeeded: a
starting pod holds its GPUs before it answers), counted every ``resolution`` seconds inside each
bin, so a pod that lived 20 s of a 60-s bin counts a third of a replica there. Latency attainment
comes from the histograms' bucket counts (see :func:`fraction_within`), not from p95s, since the
fraction of requests under the target is what an SLO promises.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = [
    "QUERIES",
    "History",
    "HistoryError",
    "RangeQuerier",
    "counter_increases",
    "fetch_history",
    "fraction_within",
    "histogram_quantile",
    "selector",
]


class HistoryError(Exception):
    """Prometheus could not be read, or answered something the report cannot use."""


QUERIES: dict[str, str] = {
    "requests": "grm_score_requests_total{selector}",
    "samples": "grm_score_samples_sum{selector}",
    "prompt_tokens": "vllm:prompt_tokens_total{selector}",
    "generation_tokens": "vllm:generation_tokens_total{selector}",
    "shed_samples": "grm_score_samples_shed_total{selector}",
    # The mean pod count over the bin's evaluation points, times the bin: Prometheus before 3.0
    # includes the range's left end (5 points in [4s:1s]), 3.0 does not (4); dividing by the
    # count of points makes the answer the same under both.
    "pod_seconds": (
        "sum_over_time((count by (grm_dev_variant) (up{selector}))[{step}:{resolution}])"
        " / on() group_left() count_over_time(vector(1)[{step}:{resolution}]) * {step_s}"
    ),
    # The sample budget each variant's fronts ran with at every bin end (all pods of a variant get
    # the same budget from the operator; max covers the seconds while a push reaches them).
    "sample_budget": "max by (grm_dev_variant) (grm_sample_budget{selector})",
    "e2e_buckets": "grm_score_latency_seconds_bucket{selector}",
    "ttft_buckets": "vllm:time_to_first_token_seconds_bucket{selector}",
    "e2e_seconds": "grm_score_latency_seconds_sum{selector}",
    "e2e_count": "grm_score_latency_seconds_count{selector}",
}
"""Every PromQL query the report runs, by name (module docstring)."""


class RangeQuerier(Protocol):
    """What the report needs of a Prometheus client: ``PrometheusConnect.custom_query_range``."""

    def custom_query_range(
        self, query: str, start_time: datetime, end_time: datetime, step: str
    ) -> list[dict[str, Any]]: ...


def selector(namespace: str, name: str | None) -> str:
    """The label matchers of a GRMDeployment's worker series (all of a namespace without a name)."""
    matchers = [f'namespace="{namespace}"']
    matchers.append(f'grm_dev_deployment="{name}"' if name else 'grm_dev_deployment!=""')
    return "{" + ",".join(matchers) + "}"


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def render_query(name: str, sel: str, step_s: float, resolution_s: float) -> str:
    """The text of query ``name`` for this selector, bin and resolution."""
    # str.format would read the PromQL's own braces; the placeholders are replaced literally.
    text = QUERIES[name]
    for key, value in (
        ("{selector}", sel),
        ("{step}", _duration(step_s)),
        ("{step_s}", f"{step_s:g}"),
        ("{resolution}", _duration(resolution_s)),
    ):
        text = text.replace(key, value)
    return text


Series = dict[str, list[float]]
"""Values per bin by variant (``""`` for a series without a variant label); NaN where absent."""


@dataclass
class History:
    """The per-bin series of one GRMDeployment (or namespace) over ``[start, end]``."""

    start: float
    step_s: float
    bins: int
    requests: Series = field(default_factory=dict)
    outcomes: Series = field(default_factory=dict)
    samples: Series = field(default_factory=dict)
    prompt_tokens: Series = field(default_factory=dict)
    generation_tokens: Series = field(default_factory=dict)
    shed_samples: Series = field(default_factory=dict)
    pod_seconds: Series = field(default_factory=dict)
    #: Per variant, per bin: the sample budget at the bin's end (NaN: no pod reported one).
    sample_budget: Series = field(default_factory=dict)
    #: Per variant, per bin: bucket upper bound → cumulative count in the bin.
    e2e_buckets: dict[str, list[dict[float, float]]] = field(default_factory=dict)
    ttft_buckets: dict[str, list[dict[float, float]]] = field(default_factory=dict)
    #: Seconds and count of the successful score requests' latencies, per variant and bin.
    e2e_seconds: Series = field(default_factory=dict)
    e2e_count: Series = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.start + self.bins * self.step_s

    def bin_ends(self) -> list[float]:
        """Unix time at the end of every bin."""
        return [self.start + (i + 1) * self.step_s for i in range(self.bins)]

    def variants(self) -> list[str]:
        """Every variant seen in any series, sorted."""
        names: set[str] = set()
        for series in (self.requests, self.pod_seconds, self.samples, self.prompt_tokens):
            names.update(series)
        names.update(self.e2e_buckets)
        return sorted(n for n in names if n)


def _value(raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _points(history: History, item: Mapping[str, Any]) -> list[float]:
    """A series' values at the range start (index 0) and every bin end (index i + 1); NaN where absent."""
    values = [math.nan] * (history.bins + 1)
    for stamp, raw in item.get("values") or []:
        # Points are on the grid start + k·step (±rounding of the client's start time).
        k = round((float(stamp) - history.start) / history.step_s)
        if 0 <= k <= history.bins:
            values[k] = _value(raw)
    return values


def counter_increases(points: Sequence[float]) -> list[float]:
    """Per-bin increases of one counter series from its values at the range start and bin ends.

    Absent at a bin end: 0 for that bin. Present after an absence (or first seen after the range
    start): a new pod, whose counter started at 0 — the value is the increase. Lower than before: a
    reset, the new value is the increase. E.g. points [nan, 2, 5, nan, 1, 0.5] → [2, 3, 0, 1, 0.5].
    """
    out = []
    for prev, value in itertools.pairwise(points):
        if math.isnan(value):
            out.append(0.0)
        elif math.isnan(prev) or value < prev:
            out.append(value)
        else:
            out.append(value - prev)
    return out


def _counter_series(history: History, result: Sequence[Mapping[str, Any]], label: str) -> Series:
    out: Series = {}
    for item in result:
        key = str((item.get("metric") or {}).get(label, ""))
        total = out.setdefault(key, [0.0] * history.bins)
        for i, inc in enumerate(counter_increases(_points(history, item))):
            total[i] += inc
    return out


def _gauge_series(history: History, result: Sequence[Mapping[str, Any]], label: str) -> Series:
    out: Series = {}
    for item in result:
        key = str((item.get("metric") or {}).get(label, ""))
        total = out.setdefault(key, [math.nan] * history.bins)
        for i, value in enumerate(_points(history, item)[1:]):
            if not math.isnan(value):
                total[i] = value if math.isnan(total[i]) else total[i] + value
    return out


def _buckets(history: History, result: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[float, float]]]:
    out: dict[str, list[dict[float, float]]] = {}
    for item in result:
        metric = item.get("metric") or {}
        try:
            le = float(metric.get("le", "nan"))
        except ValueError:
            continue
        if math.isnan(le):
            continue
        per_bin = out.setdefault(str(metric.get("grm_dev_variant", "")), [{} for _ in range(history.bins)])
        for i, inc in enumerate(counter_increases(_points(history, item))):
            per_bin[i][le] = per_bin[i].get(le, 0.0) + inc
    return out


def fetch_history(
    prometheus: RangeQuerier,
    *,
    sel: str,
    start: float,
    end: float,
    step_s: float,
    resolution_s: float,
) -> History:
    """Run every query of :data:`QUERIES` over ``[start, end]`` (Unix seconds) in ``step_s`` bins."""
    if step_s <= 0 or resolution_s <= 0:
        raise HistoryError(f"step and resolution must be positive, got {step_s} and {resolution_s}")
    if resolution_s > step_s:
        raise HistoryError(f"the resolution ({resolution_s:g}s) must not exceed the step ({step_s:g}s)")
    bins = math.floor((end - start) / step_s)
    if bins < 1:
        raise HistoryError(f"the range ({end - start:g}s) is shorter than one step ({step_s:g}s)")
    history = History(start=start, step_s=step_s, bins=bins)
    first = datetime.fromtimestamp(start, UTC)
    last = datetime.fromtimestamp(start + bins * step_s, UTC)
    for name in QUERIES:
        text = render_query(name, sel, step_s, resolution_s)
        history.queries[name] = text
        try:
            result = prometheus.custom_query_range(text, first, last, _duration(step_s))
        except Exception as exc:  # the client raises requests' and its own errors; one message
            raise HistoryError(f"Prometheus query {name} failed: {exc}") from exc
        if name.endswith("_buckets"):
            setattr(history, name, _buckets(history, result))
        elif name in ("pod_seconds", "sample_budget"):
            setattr(history, name, _gauge_series(history, result, "grm_dev_variant"))
        else:
            setattr(history, name, _counter_series(history, result, "grm_dev_variant"))
            if name == "requests":
                history.outcomes = _counter_series(history, result, "outcome")
    return history


def fraction_within(buckets: Mapping[float, float], threshold: float) -> tuple[float, float]:
    """(observations ≤ ``threshold``, all observations) of a cumulative histogram.

    Inside the bucket holding the threshold the count is interpolated linearly, as
    ``histogram_quantile`` does for ranks: with buckets ≤10 s: 80, ≤15 s: 100, ≤20 s: 120 and a
    20-s target all 120 are within; with a 12-s target 80 + 20·(2/5) = 88 are. A threshold beyond
    the highest finite bound counts every observation below it and none of the ``+Inf`` bucket's.
    """
    if not buckets:
        return 0.0, 0.0
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if math.isinf(bounds[-1]) else max(buckets.values())
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if threshold < le:
            if math.isinf(le):
                return below, total
            width = le - lower
            share = (threshold - lower) / width if width > 0 else 1.0
            return below + (count - below) * max(0.0, share), total
        lower, below = le, count
    return below, total


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's ``histogram_quantile`` on one cumulative histogram (None when it is empty)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # the highest finite bound, as Prometheus answers
            width = le - lower
            inside = count - below
            return lower + width * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, count
    return lower
