"""What a GRMDeployment used and delivered over a window: the reductions of its :class:`History`.

Per variant (each variant serves with the sample budget of the spec; the fronts' drawn samples
give the budget actually used, shedding included):

* **hours active** — the bins in which the variant had at least one pod, in hours;
* **replica-hours** — pod-seconds / 3600 (``pod_seconds``); **GPU-hours** — replica-hours ×
  the variant's ``gpusPerReplica``;
* **request share** — its score requests over all of them;
* **SLO attainment** — the fraction of its score requests whose e2e latency is within
  ``slo.e2eP95`` (from the ``grm_score_latency_seconds`` buckets) and of its engine requests whose
  TTFT is within ``slo.ttftP95`` (``vllm:time_to_first_token_seconds``); ``slo_attainment`` is
  the lower of the two (a per-request joint fraction is not in the histograms; the lower is its
  upper bound). Requests the fronts rejected or failed count as misses of the e2e term;
* per **sample budget** of a variant (the fronts' ``grm_sample_budget`` at each bin end;
  :class:`BudgetUsage`): the same hours, replica- and GPU-hours, request share and SLO
  attainment, over the bins that ended with that budget;
* **mean score latency** — Σ ``grm_score_latency_seconds_sum`` / Σ ``_count`` over the
  window, shown beside the replay's;
* **shed samples**, **mean samples per score**, **quality**: the measured quality when the
  status carries one (``status.variants[].quality.value``, from the accuracy gate), else the
  declared ``quality``.

The arrival process is the score requests per bin (all variants), with tokens per critique sample
(the engines' token counters over the fronts' samples drawn, summed over ±5 minutes around the
bin, since tokens are counted while requests run and samples when they end), its
peaks and its periodicity. The fronts count a request when they answer it (its outcome is known
then), so the series is the arrivals shifted by the latency — seconds, against bins of a minute —
and requests still in flight at the window's end fall outside it. The periodicity is found by
:func:`grm_operator.policy.periodicity.detect_period`, searched between two bins and half the
range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy.periodicity import Periodicity, detect_period
from grm_operator.report.history import History, fraction_within, histogram_quantile

__all__ = ["TOKEN_WINDOW_S", "Arrivals", "BudgetUsage", "Usage", "VariantUsage", "summarise"]

#: Tokens per sample are averaged over this long either side of a bin (module docstring).
TOKEN_WINDOW_S = 300.0


@dataclass
class VariantUsage:
    """One variant's share of the window (module docstring)."""

    name: str
    gpus_per_replica: int
    hours_active: float
    replica_hours: float
    gpu_hours: float
    requests: float
    request_share: float
    samples_per_request: float | None
    shed_samples: float
    ttft_attainment: float | None
    e2e_attainment: float | None
    slo_attainment: float | None
    quality: float
    quality_source: str
    budgets: list[BudgetUsage] = field(default_factory=list)


@dataclass
class BudgetUsage:
    """One variant at one sample budget: the bins that ended with that budget (``samples`` None:
    bins in which no pod of the variant reported a budget)."""

    variant: str
    samples: int | None
    hours_active: float
    replica_hours: float
    gpu_hours: float
    requests: float
    request_share: float
    ttft_attainment: float | None
    e2e_attainment: float | None
    slo_attainment: float | None


@dataclass
class Arrivals:
    """The arrival process per bin: score requests, mean tokens per score, peaks, period."""

    step_s: float
    times: list[float]
    requests: list[float]
    prompt_tokens: list[float]
    output_tokens: list[float]
    peak_rps: float
    mean_rps: float
    peaks: list[tuple[float, float]]
    periodicity: Periodicity | None


@dataclass
class Usage:
    """The whole window: totals, per-variant usage, the arrivals and the per-bin series for plots."""

    start: float
    end: float
    gpu_hours: float
    replica_hours: float
    requests: float
    outcomes: dict[str, float]
    ttft_attainment: float | None
    e2e_attainment: float | None
    slo_attainment: float | None
    shed_samples: float
    mean_quality: float | None
    variants: dict[str, VariantUsage]
    arrivals: Arrivals
    #: Mean pods per bin, by variant.
    replicas: dict[str, list[float]] = field(default_factory=dict)
    e2e_p95: list[float | None] = field(default_factory=list)
    ttft_p95: list[float | None] = field(default_factory=list)
    peak_gpus: float = 0.0
    #: Mean latency of the successful score requests over the window, s (None: none measured).
    mean_e2e_s: float | None = None


def _zero(values: Sequence[float]) -> list[float]:
    return [0.0 if math.isnan(v) else v for v in values]


def _total(
    series: Mapping[str, Sequence[float]], bins: int, variants: Sequence[str] | None = None
) -> list[float]:
    out = [0.0] * bins
    for key, values in series.items():
        if variants is not None and key not in variants:
            continue
        for i, v in enumerate(_zero(values)):
            out[i] += v
    return out


def _merge(per_bin: Sequence[Mapping[float, float]]) -> dict[float, float]:
    merged: dict[float, float] = {}
    for buckets in per_bin:
        for le, count in buckets.items():
            merged[le] = merged.get(le, 0.0) + count
    return merged


def _attainment(buckets: Mapping[float, float], target: float | None, misses: float = 0.0) -> float | None:
    if target is None:
        return None
    within, total = fraction_within(buckets, target)
    if total + misses <= 0:
        return None
    return within / (total + misses)


def _lower(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _measured_quality(status: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in (status or {}).get("variants") or []:
        measured = item.get("quality") if isinstance(item, Mapping) else None
        value = measured.get("value") if isinstance(measured, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[str(item.get("name"))] = float(value)
    return out


def _peaks(times: Sequence[float], rps: Sequence[float], limit: int = 5) -> list[tuple[float, float]]:
    """The highest local maxima of the request rate, highest first (time of the bin's end, rps)."""
    candidates = [
        (times[i], rps[i])
        for i in range(len(rps))
        if rps[i] > 0 and (i == 0 or rps[i] >= rps[i - 1]) and (i == len(rps) - 1 or rps[i] > rps[i + 1])
    ]
    return sorted(candidates, key=lambda p: -p[1])[:limit]


def arrivals(history: History) -> Arrivals:
    """The arrival process of the window (all variants together)."""
    bins, step = history.bins, history.step_s
    requests = _total(history.requests, bins)
    samples = _total(history.samples, bins)
    prompt = _total(history.prompt_tokens, bins)
    generation = _total(history.generation_tokens, bins)
    # Tokens per critique sample (every sample is one engine request carrying the prompt), as the
    # ratio of the counters' sums over ±TOKEN_WINDOW_S around the bin: the engines count tokens
    # while they run, the fronts count samples when the score ends, so one short bin's own ratio
    # is off by whatever was in flight (a 4-s bin with one score done and five running read 5×
    # the tokens per sample).
    half = max(0, round(TOKEN_WINDOW_S / step))
    all_samples = sum(samples)
    mean_prompt = sum(prompt) / all_samples if all_samples > 0 else 0.0
    mean_output = sum(generation) / all_samples if all_samples > 0 else 0.0

    def per_sample(tokens: Sequence[float], i: int, fallback: float) -> float:
        lo, hi = max(0, i - half), min(bins, i + half + 1)
        drawn = sum(samples[lo:hi])
        return sum(tokens[lo:hi]) / drawn if drawn > 0 else fallback

    prompt_per = [per_sample(prompt, i, mean_prompt) for i in range(bins)]
    output_per = [per_sample(generation, i, mean_output) for i in range(bins)]
    times = [t - history.start for t in history.bin_ends()]
    rps = [r / step for r in requests]
    period = detect_period(requests, step, min_period_s=2 * step, max_period_s=max(2 * step, bins * step / 2))
    return Arrivals(
        step_s=step,
        times=times,
        requests=requests,
        prompt_tokens=prompt_per,
        output_tokens=output_per,
        peak_rps=max(rps, default=0.0),
        mean_rps=sum(requests) / (bins * step),
        peaks=_peaks(times, rps),
        periodicity=period,
    )


def _budgets(
    history: History,
    name: str,
    per_gpu: int,
    all_requests: float,
    failed: float,
    targets: tuple[float | None, float | None],
) -> list[BudgetUsage]:
    """The variant's usage split by the sample budget its bins ended with (smallest first); the
    rejected and failed requests count as e2e misses by request share, as for the variant."""
    bins, step = history.bins, history.step_s
    pod_s = _zero(history.pod_seconds.get(name, [math.nan] * bins))
    requests = _zero(history.requests.get(name, [math.nan] * bins))
    budget = history.sample_budget.get(name, [math.nan] * bins)
    ttft_bins = history.ttft_buckets.get(name, [])
    e2e_bins = history.e2e_buckets.get(name, [])
    groups: dict[int | None, list[int]] = {}
    for i in range(bins):
        if pod_s[i] <= 0 and requests[i] <= 0:
            continue
        key = None if i >= len(budget) or math.isnan(budget[i]) else round(budget[i])
        groups.setdefault(key, []).append(i)
    out = []
    for key in sorted(groups, key=lambda k: (k is None, k or 0)):
        idx = groups[key]
        reqs = sum(requests[i] for i in idx)
        ttft = _attainment(_merge([ttft_bins[i] for i in idx if i < len(ttft_bins)]), targets[0])
        share = reqs / all_requests if all_requests > 0 else 0.0
        e2e = _attainment(_merge([e2e_bins[i] for i in idx if i < len(e2e_bins)]), targets[1], failed * share)
        out.append(
            BudgetUsage(
                variant=name,
                samples=key,
                hours_active=sum(step for i in idx if pod_s[i] > 0) / 3600.0,
                replica_hours=sum(pod_s[i] for i in idx) / 3600.0,
                gpu_hours=sum(pod_s[i] for i in idx) * per_gpu / 3600.0,
                requests=reqs,
                request_share=share,
                ttft_attainment=ttft,
                e2e_attainment=e2e,
                slo_attainment=_lower(ttft, e2e),
            )
        )
    return out


def summarise(history: History, spec: GRMDeploymentSpec, status: Mapping[str, Any] | None = None) -> Usage:
    """Reduce the window's series to the report's numbers (module docstring)."""
    bins, step = history.bins, history.step_s
    names = [v.name for v in spec.variants]
    names += [n for n in history.variants() if n not in names]
    gpus = {v.name: v.gpus_per_replica for v in spec.variants}
    declared = {v.name: v.quality for v in spec.variants}
    measured = _measured_quality(status)
    ttft_target, e2e_target = spec.slo.ttft_p95_s, spec.slo.e2e_p95_s
    all_requests = sum(_total(history.requests, bins))
    outcomes = {k: sum(_zero(v)) for k, v in history.outcomes.items() if k}
    failed = sum(v for k, v in outcomes.items() if k != "ok")
    variants: dict[str, VariantUsage] = {}
    replicas: dict[str, list[float]] = {}
    gpu_series = [0.0] * bins
    for name in names:
        pod_s = _zero(history.pod_seconds.get(name, [math.nan] * bins))
        reqs = sum(_zero(history.requests.get(name, [])))
        drawn = sum(_zero(history.samples.get(name, [])))
        ok_share = reqs / all_requests if all_requests > 0 else 0.0
        ttft = _attainment(_merge(history.ttft_buckets.get(name, [])), ttft_target)
        # A variant's share of the rejected and failed requests, by its share of all requests.
        e2e = _attainment(_merge(history.e2e_buckets.get(name, [])), e2e_target, failed * ok_share)
        per_gpu = gpus.get(name, 1)
        replicas[name] = [p / step for p in pod_s]
        for i, p in enumerate(pod_s):
            gpu_series[i] += p / step * per_gpu
        quality = measured.get(name, declared.get(name, math.nan))
        budgets = _budgets(history, name, per_gpu, all_requests, failed, (ttft_target, e2e_target))
        variants[name] = VariantUsage(
            name=name,
            gpus_per_replica=per_gpu,
            hours_active=sum(step for p in pod_s if p > 0) / 3600.0,
            replica_hours=sum(pod_s) / 3600.0,
            gpu_hours=sum(pod_s) * per_gpu / 3600.0,
            requests=reqs,
            request_share=ok_share,
            samples_per_request=drawn / reqs if reqs > 0 else None,
            shed_samples=sum(_zero(history.shed_samples.get(name, []))),
            ttft_attainment=ttft,
            e2e_attainment=e2e,
            slo_attainment=_lower(ttft, e2e),
            quality=quality,
            quality_source="measured" if name in measured else "declared",
            budgets=budgets,
        )
    all_ttft = _merge([b for per in history.ttft_buckets.values() for b in per])
    all_e2e = _merge([b for per in history.e2e_buckets.values() for b in per])
    ttft_all = _attainment(all_ttft, ttft_target)
    e2e_all = _attainment(all_e2e, e2e_target, failed)
    served = [v for v in variants.values() if v.requests > 0 and not math.isnan(v.quality)]
    served_requests = sum(v.requests for v in served)
    mean_quality = sum(v.quality * v.requests for v in served) / served_requests if served_requests else None
    e2e_p95: list[float | None] = []
    ttft_p95: list[float | None] = []
    for i in range(bins):
        e2e_p95.append(histogram_quantile(0.95, _merge([per[i] for per in history.e2e_buckets.values()])))
        ttft_p95.append(histogram_quantile(0.95, _merge([per[i] for per in history.ttft_buckets.values()])))
    return Usage(
        start=history.start,
        end=history.end,
        gpu_hours=sum(v.gpu_hours for v in variants.values()),
        replica_hours=sum(v.replica_hours for v in variants.values()),
        requests=all_requests,
        outcomes=outcomes,
        ttft_attainment=ttft_all,
        e2e_attainment=e2e_all,
        slo_attainment=_lower(ttft_all, e2e_all),
        shed_samples=sum(v.shed_samples for v in variants.values()),
        mean_quality=mean_quality,
        variants=variants,
        arrivals=arrivals(history),
        replicas=replicas,
        e2e_p95=e2e_p95,
        ttft_p95=ttft_p95,
        peak_gpus=max(gpu_series, default=0.0),
        mean_e2e_s=_mean_latency(history),
    )


def _mean_latency(history: History) -> float | None:
    """Σ latency / Σ count of the score latency histogram over all variants and bins."""
    count = sum(sum(_zero(v)) for v in history.e2e_count.values())
    seconds = sum(sum(_zero(v)) for v in history.e2e_seconds.values())
    return seconds / count if count > 0 else None
