"""The Prometheus source: the same signals as the Direct source, computed by PromQL.

Prometheus must scrape the worker pods with two labels copied from the pod labels
``grm.dev/deployment`` and ``grm.dev/variant`` (``labelmap`` of
``__meta_kubernetes_pod_label_grm_dev_(deployment|variant)``; docs/metrics.md has the scrape
config) plus the usual ``namespace`` and ``pod``. The selector of a GRMDeployment is then
``{namespace="rl",grm_dev_deployment="reward"}``.

One query per signal returns the per-variant and the total value at once::

    sum by (grm_dev_variant) (rate(vllm:request_success_total{sel}[1m]))
      or sum (rate(vllm:request_success_total{sel}[1m]))

``or`` keeps every left-hand series and adds right-hand series whose label set is new; the
aggregate without ``by`` has the empty label set, so it is the total. Metric renames chain in
the same way, new name first (``avg by (v) (new) or avg by (v) (old) or avg (new) or avg
(old)``), so a fleet half on an old vLLM still reads. Idle windows give NaN percentiles (no
observations) and missing series give no result; both become ``None``.

The HTTP API is called with aiohttp directly (``/api/v1/query``): the operator is async, and
the query strings are all that is needed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import aiohttp

from grm_operator.metrics.source import MetricsError, MetricsTarget, Reading
from grm_operator.policy.signals import (
    COUNTER_NAMES,
    DCGM_GPU_UTIL_NAME,
    GAUGE_NAMES,
    GPU_UTIL_NAME,
    HISTOGRAM_NAMES,
    SHADOW_COUNTER_NAMES,
    Signals,
)

__all__ = [
    "DEPLOYMENT_LABEL",
    "SIGNAL_FIELDS",
    "VARIANT_LABEL",
    "Prometheus",
    "default_queries",
    "promql_duration",
    "render_query",
    "selector",
]

VARIANT_LABEL = "grm_dev_variant"
DEPLOYMENT_LABEL = "grm_dev_deployment"

#: spec.metrics.queries keys → Signals fields.
SIGNAL_FIELDS: dict[str, str] = {
    "rps": "rps",
    "promptTokens": "prompt_tps",
    "generationTokens": "generation_tps",
    "shedSamples": "shed_sps",
    "ttftP50": "ttft_p50",
    "ttftP95": "ttft_p95",
    "itlP50": "itl_p50",
    "itlP95": "itl_p95",
    "e2eP50": "e2e_p50",
    "e2eP95": "e2e_p95",
    "queueTimeP95": "queue_time_p95",
    "running": "running",
    "waiting": "waiting",
    "kvCacheUsage": "kv_cache_usage",
    "gpuUtil": "gpu_util",
    "pods": "pods_reporting",
    "sampleAge": "sample_age_s",
    "shadowVerdicts": "shadow_verdicts",
    "shadowAgreements": "shadow_agreements",
}

# How a total is derived from per-variant values when an override query returns no total.
_SUM = {
    "rps",
    "prompt_tps",
    "generation_tps",
    "shed_sps",
    "running",
    "waiting",
    "pods_reporting",
    "shadow_verdicts",
    "shadow_agreements",
}
_MEAN = {"kv_cache_usage", "gpu_util"}
_MIN = {"sample_age_s"}

DEFAULT_TIMEOUT_S = 5.0


def selector(namespace: str, name: str) -> str:
    """The label matchers (with braces) selecting one GRMDeployment's worker series."""
    return f'{{namespace="{namespace}",{DEPLOYMENT_LABEL}="{name}"}}'


def promql_duration(seconds: float) -> str:
    """A PromQL duration: whole seconds as ``60s``, else milliseconds (``1500ms``)."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def _by_variant_or_total(agg: str, inners: Sequence[str], by: str = VARIANT_LABEL) -> str:
    per_variant = [f"{agg} by ({by}) ({inner})" for inner in inners]
    total = [f"{agg} ({inner})" for inner in inners]
    return " or ".join(per_variant + total)


def _quantile(q: float, names: Sequence[str]) -> str:
    parts = [
        f"histogram_quantile({q}, sum by (le, {VARIANT_LABEL}) (rate({n}_bucket{{selector}}[{{window}}])))"
        for n in names
    ] + [f"histogram_quantile({q}, sum by (le) (rate({n}_bucket{{selector}}[{{window}}])))" for n in names]
    return " or ".join(parts)


def _rate(names: Sequence[str]) -> str:
    return _by_variant_or_total("sum", [f"rate({n}{{selector}}[{{window}}])" for n in names])


def _demand_rate() -> str:
    # The engines' finished requests less those run for other variants' shadow scores (not
    # demand, grm_worker.shadow), per variant and in total; where a worker does not export the
    # shadow counter (an older worker) the difference has no series and `or` takes the plain rate.
    (success,), (shadow,) = COUNTER_NAMES["rps"], COUNTER_NAMES["shadow_served_sps"]

    def net(by: str) -> str:
        rate = f"rate({success}{{selector}}[{{window}}])"
        served = f"rate({shadow}{{selector}}[{{window}}])"
        return f"clamp_min({by} ({rate}) - {by} ({served}), 0) or {by} ({rate})"

    return f"{net(f'sum by ({VARIANT_LABEL})')} or {net('sum')}"


def _increase_over_shadow_window(names: Sequence[str]) -> str:
    return _by_variant_or_total("sum", [f"increase({n}{{selector}}[{{shadowWindow}}])" for n in names])


def _gpu_util() -> str:
    # The worker's own gauge (0–1) carries our scrape labels. NVIDIA's dcgm-exporter (the
    # fallback, percent) labels each GPU with the pod using it (namespace, pod) but not with our
    # labels; `up` of our scrape carries each pod's variant, so a join attaches it. A pod's own
    # series win (`or on (namespace, pod)`); then the mean per variant and overall.
    pods = f"max by (namespace, pod, {VARIANT_LABEL}) (up{{selector}})"
    exporter = f'{DCGM_GPU_UTIL_NAME}{{{DEPLOYMENT_LABEL}=""}} / 100'
    joined = f"{exporter} * on (namespace, pod) group_left ({VARIANT_LABEL}) {pods}"
    per_gpu = f"{GPU_UTIL_NAME}{{selector}} or on (namespace, pod) ({joined})"
    return f"avg by ({VARIANT_LABEL}) ({per_gpu}) or avg ({per_gpu})"


def default_queries() -> dict[str, str]:
    """The built-in query of every signal, with ``{selector}`` and ``{window}`` placeholders."""
    running = GAUGE_NAMES["running"][0]
    return {
        "rps": _demand_rate(),
        "promptTokens": _rate(COUNTER_NAMES["prompt_tps"]),
        "generationTokens": _rate(COUNTER_NAMES["generation_tps"]),
        "shedSamples": _rate(COUNTER_NAMES["shed_sps"]),
        "ttftP50": _quantile(0.5, HISTOGRAM_NAMES["ttft"]),
        "ttftP95": _quantile(0.95, HISTOGRAM_NAMES["ttft"]),
        "itlP50": _quantile(0.5, HISTOGRAM_NAMES["itl"]),
        "itlP95": _quantile(0.95, HISTOGRAM_NAMES["itl"]),
        "e2eP50": _quantile(0.5, HISTOGRAM_NAMES["e2e"]),
        "e2eP95": _quantile(0.95, HISTOGRAM_NAMES["e2e"]),
        "queueTimeP95": _quantile(0.95, HISTOGRAM_NAMES["queue_time"]),
        "running": _by_variant_or_total("sum", [f"{n}{{selector}}" for n in GAUGE_NAMES["running"]]),
        "waiting": _by_variant_or_total("sum", [f"{n}{{selector}}" for n in GAUGE_NAMES["waiting"]]),
        "kvCacheUsage": _by_variant_or_total(
            "avg", [f"{n}{{selector}}" for n in GAUGE_NAMES["kv_cache_usage"]]
        ),
        "gpuUtil": _gpu_util(),
        "pods": _by_variant_or_total("count", ["up{selector} == 1"]),
        "shadowVerdicts": _increase_over_shadow_window(SHADOW_COUNTER_NAMES["shadow_verdicts"]),
        "shadowAgreements": _increase_over_shadow_window(SHADOW_COUNTER_NAMES["shadow_agreements"]),
        "sampleAge": " or ".join(
            [
                f"time() - max by ({VARIANT_LABEL}) (timestamp({running}{{selector}}))",
                f"time() - max (timestamp({running}{{selector}}))",
            ]
        ),
    }


def render_query(template: str, sel: str, window_s: float, shadow_window_s: float | None = None) -> str:
    """Substitute ``{selector}`` (matchers with braces), ``{matchers}`` (the same without braces,
    to combine with matchers of one's own), ``{window}`` and ``{shadowWindow}`` (the shadow
    verdicts' window, default the window); plain replacement, since PromQL has braces of its own."""
    return (
        template.replace("{selector}", sel)
        .replace("{matchers}", sel[1:-1])
        .replace("{window}", promql_duration(window_s))
        .replace("{shadowWindow}", promql_duration(shadow_window_s or window_s))
    )


def _number(raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


def split_result(data: Mapping[str, Any]) -> tuple[float | None, dict[str, float | None]]:
    """An instant query's ``data`` split into the total (series without the variant label, or
    a scalar) and the values by variant."""
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return _number(result[1]), {}
    if kind != "vector" or not isinstance(result, list):
        raise MetricsError(f"unexpected Prometheus result type {kind!r}")
    total: float | None = None
    variants: dict[str, float | None] = {}
    for series in result:
        labels = series.get("metric", {})
        value = _number(series.get("value", [None, None])[1])
        variant = labels.get(VARIANT_LABEL)
        if variant is None:
            total = value
        else:
            variants[variant] = value
    return total, variants


def _derive_total(field: str, values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    if field in _SUM:
        return sum(known)
    if field in _MEAN:
        return sum(known) / len(known)
    if field in _MIN:
        return min(known)
    # Percentiles cannot be merged; the worst variant is the conservative total.
    return max(known)


class Prometheus:
    """Reads signals from a Prometheus server's HTTP API."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def query(self, promql: str) -> Mapping[str, Any]:
        """Run one instant query; the answer's ``data``. Failures raise :class:`MetricsError`."""
        try:
            async with self._client().post(f"{self.url}/api/v1/query", data={"query": promql}) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise MetricsError(f"Prometheus at {self.url} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise MetricsError(f"Prometheus rejected query {promql!r}: {error}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise MetricsError("Prometheus answered without data")
        return data

    async def observe(self, target: MetricsTarget, window_s: float, now: float) -> Reading:
        """Every signal of ``target`` over the last ``window_s`` (``now`` is Prometheus' own)."""
        del now  # Prometheus evaluates at its own current time.
        queries = {**default_queries(), **dict(target.queries)}
        unknown = sorted(set(queries) - set(SIGNAL_FIELDS))
        if unknown:
            raise MetricsError(f"unknown signal(s) in spec.metrics.queries: {', '.join(unknown)}")
        sel = selector(target.namespace, target.name)
        keys = list(queries)
        long = target.shadow_window_s
        answers = await asyncio.gather(
            *(self.query(render_query(queries[k], sel, window_s, long)) for k in keys)
        )
        total: dict[str, Any] = {}
        per_variant: dict[str, dict[str, Any]] = {v: {} for v in target.variants}
        for key, data in zip(keys, answers, strict=True):
            field = SIGNAL_FIELDS[key]
            t, by_variant = split_result(data)
            if t is None:
                t = _derive_total(field, [by_variant.get(v) for v in target.variants])
            total[field] = t
            for v in target.variants:
                per_variant[v][field] = by_variant.get(v)
        return Reading(
            total=_signals(total),
            variants={v: _signals(values) for v, values in per_variant.items()},
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def _signals(values: Mapping[str, Any]) -> Signals:
    pods = values.get("pods_reporting")
    fields = {k: v for k, v in values.items() if k != "pods_reporting"}
    signals = Signals(**fields)
    return replace(signals, pods_reporting=int(pods) if pods is not None else 0)
