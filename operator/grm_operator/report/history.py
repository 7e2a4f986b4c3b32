"""A GRMDeployment's history read back from Prometheus: the range queries and the per-bin series.

The report divides the time range into bins of ``step`` seconds and asks Prometheus one range
query per quantity (``/api/v1/query_range`` through ``prometheus-api-client``), each evaluated at
the end of every bin over the bin's own range ``[step]``, so bin i holds what happened in
``(t_i − step, t_i]`` and the bins tile the range without overlap. Every query selects the
GRMDeployment's worker series by the target labels of docs/metrics.md
(``{namespace="rl",grm_dev_deployment="reward"}``) and splits them by ``grm_dev_variant``.

The queries (:data:`QUERIES`; ``{selector}``, ``{step}`` and ``{resolution}`` filled in, ``SEL``
below), each split ``by (grm_dev_variant)``:

* ``requests``: ``increase(grm_score_requests_total SEL [step])``, and ``outcomes`` the same
  ``by (outcome)``;
* ``samples``: ``increase(grm_score_samples_sum SEL [step])`` (critique samples drawn);
* ``prompt_tokens``, ``generation_tokens``: ``increase(vllm:prompt_tokens_total SEL [step])``,
  ``increase(vllm:generation_tokens_total SEL [step])``;
* ``shed_samples``: ``increase(grm_score_samples_shed_total SEL [step])``;
* ``pod_seconds``: ``sum_over_time((count by (grm_dev_variant) (up SEL))[step:resolution])``
  divided by ``count_over_time(vector(1)[step:resolution])`` (the mean pods over the bin's
  points), times the step in seconds;
* ``e2e_buckets``, ``ttft_buckets``: ``sum by (grm_dev_variant, le) (increase(B SEL [step]))`` for
  ``B`` = ``grm_score_latency_seconds_bucket`` and ``vllm:time_to_first_token_seconds_bucket``.

Why these. Arrivals are the GRM front's score requests (every outcome: a rejected request was
demand too); tokens per score come from the engines' token counters divided by the samples the
fronts drew. Pods are Prometheus' scrape targets (``up``, whether or not the scrape succeeded: a
starting pod holds its GPUs before it answers), counted every ``resolution`` seconds inside each
bin, so a pod that lived 20 s of a 60-s bin counts a third of a replica there. Latency attainment
comes from the histograms' bucket counts (see :func:`fraction_within`), not from p95s, since the
fraction of requests under the target is what an SLO promises.
"""

from __future__ import annotations

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
    "fetch_history",
    "fraction_within",
    "histogram_quantile",
    "selector",
]


class HistoryError(Exception):
    """Prometheus could not be read, or answered something the report cannot use."""


QUERIES: dict[str, str] = {
    "requests": "sum by (grm_dev_variant) (increase(grm_score_requests_total{selector}[{step}]))",
    "outcomes": "sum by (outcome) (increase(grm_score_requests_total{selector}[{step}]))",
    "samples": "sum by (grm_dev_variant) (increase(grm_score_samples_sum{selector}[{step}]))",
    "prompt_tokens": "sum by (grm_dev_variant) (increase(vllm:prompt_tokens_total{selector}[{step}]))",
    "generation_tokens": (
        "sum by (grm_dev_variant) (increase(vllm:generation_tokens_total{selector}[{step}]))"
    ),
    "shed_samples": "sum by (grm_dev_variant) (increase(grm_score_samples_shed_total{selector}[{step}]))",
    # The mean pod count over the bin's evaluation points, times the bin: Prometheus before 3.0
    # includes the range's left end (5 points in [4s:1s]), 3.0 does not (4); dividing by the
    # count of points makes the answer the same under both.
    "pod_seconds": (
        "sum_over_time((count by (grm_dev_variant) (up{selector}))[{step}:{resolution}])"
        " / on() group_left() count_over_time(vector(1)[{step}:{resolution}]) * {step_s}"
    ),
    "e2e_buckets": (
        "sum by (grm_dev_variant, le) (increase(grm_score_latency_seconds_bucket{selector}[{step}]))"
    ),
    "ttft_buckets": (
        "sum by (grm_dev_variant, le) (increase(vllm:time_to_first_token_seconds_bucket{selector}[{step}]))"
    ),
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
    #: Per variant, per bin: bucket upper bound → cumulative count in the bin.
    e2e_buckets: dict[str, list[dict[float, float]]] = field(default_factory=dict)
    ttft_buckets: dict[str, list[dict[float, float]]] = field(default_factory=dict)
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


def _index(history: History, stamp: float) -> int | None:
    # Bin i is evaluated at start + (i+1)·step; stamps come back on that grid (±rounding).
    i = round((stamp - history.start) / history.step_s) - 1
    return i if 0 <= i < history.bins else None


def _series(history: History, result: Sequence[Mapping[str, Any]], label: str) -> Series:
    out: Series = {}
    for item in result:
        key = str((item.get("metric") or {}).get(label, ""))
        values = out.setdefault(key, [math.nan] * history.bins)
        for stamp, raw in item.get("values") or []:
            i = _index(history, float(stamp))
            if i is None:
                continue
            value = _value(raw)
            if not math.isnan(value):
                values[i] = value if math.isnan(values[i]) else values[i] + value
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
        for stamp, raw in item.get("values") or []:
            i = _index(history, float(stamp))
            value = _value(raw)
            if i is not None and not math.isnan(value):
                per_bin[i][le] = per_bin[i].get(le, 0.0) + value
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
    first = datetime.fromtimestamp(start + step_s, UTC)
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
        else:
            setattr(
                history,
                name,
                _series(history, result, "outcome" if name == "outcomes" else "grm_dev_variant"),
            )
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
