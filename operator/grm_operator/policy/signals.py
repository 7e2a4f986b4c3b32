"""The signals the operator reads from workers, and the metric names each is computed from.

A :class:`Signals` is the reduction of one window of metrics over a group of pods (one variant,
or the whole GRMDeployment): rates, latency percentiles, gauges. Both sources produce it — the
Direct source from its own scrapes, the Prometheus source from PromQL — so the policy cannot
tell them apart. ``None`` means "not known" (no series, idle window, too few samples), never 0.

The request rate (``rps``, the demand) is the engines' finished requests less those a
reference variant's engine ran for other variants' shadow scores
(``grm_shadow_served_samples_total``): shadow scoring watches quality and is never demand.

The end-to-end latency (``e2e``, what ``slo.e2eP95`` bounds) is that of a whole GRM score: the
scoring front's ``grm_score_latency_seconds``, one observation per successful
``/v1/grm/score`` request with all its critique samples. vLLM's
``vllm:e2e_request_latency_seconds`` times one engine request (one critique sample, or one
relayed OpenAI call), k of which make a score; the operator does not read it.

vLLM renamed metrics across releases; every signal lists its names newest first and the
sources take the first one a worker exposes:

* ``vllm:kv_cache_usage_perc`` (≥ 0.10) was ``vllm:gpu_cache_usage_perc``;
* ``vllm:inter_token_latency_seconds`` (≥ 0.11) was ``vllm:time_per_output_token_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = [
    "COUNTER_NAMES",
    "DCGM_GPU_UTIL_NAME",
    "GAUGE_NAMES",
    "GPU_UTIL_NAME",
    "HISTOGRAM_NAMES",
    "SHADOW_COUNTER_NAMES",
    "SIGNAL_NAMES",
    "Signals",
]

#: Histograms by signal stem, newest name first.
HISTOGRAM_NAMES: dict[str, tuple[str, ...]] = {
    "ttft": ("vllm:time_to_first_token_seconds",),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    # A whole GRM score, timed by the worker's front (not vLLM's per-request histogram).
    "e2e": ("grm_score_latency_seconds",),
    "queue_time": ("vllm:request_queue_time_seconds",),
}

#: Counters (sample names, with ``_total``) by signal, newest name first.
COUNTER_NAMES: dict[str, tuple[str, ...]] = {
    "rps": ("vllm:request_success_total",),
    "prompt_tps": ("vllm:prompt_tokens_total",),
    "generation_tps": ("vllm:generation_tokens_total",),
    # The GRM worker's own: samples of score requests' budgets not drawn under a queue.
    "shed_sps": ("grm_score_samples_shed_total",),
    # The GRM worker's own: engine requests (critique samples) a reference drew for other
    # variants' shadow scores. Not demand: subtracted from ``rps`` (grm_worker.shadow).
    "shadow_served_sps": ("grm_shadow_served_samples_total",),
}

#: Counters of shadow scoring (grm_worker.shadow), read as increases over
#: ``spec.precision.shadow.window`` (not rates): verdicts compared with the reference's, and of
#: those the ones that agreed.
SHADOW_COUNTER_NAMES: dict[str, tuple[str, ...]] = {
    "shadow_verdicts": ("grm_shadow_verdicts_total",),
    "shadow_agreements": ("grm_shadow_agreements_total",),
}

#: Gauges by signal, newest name first. running/waiting are summed over pods, kv_cache averaged.
GAUGE_NAMES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
}

#: GPU utilisation per GPU, 0–1, under the worker's own name (label ``gpu``): the worker exports
#: it from NVML, the sim engine its step loop's busy fraction. Not DCGM's name, which NVIDIA's
#: GPU Operator's dcgm-exporter already exports for the same GPUs with other labels and units.
GPU_UTIL_NAME = "grm_worker_gpu_utilization_ratio"

#: NVIDIA dcgm-exporter's GPU utilisation, in percent per GPU, labelled with the pod using the GPU
#: (``namespace``/``pod``). The Prometheus source falls back to it for pods without the worker's
#: own gauge (a worker without NVML access); the Direct source scrapes only workers.
DCGM_GPU_UTIL_NAME = "DCGM_FI_DEV_GPU_UTIL"

#: Every metric name a worker scrape is reduced to (the Direct source keeps only these).
SIGNAL_NAMES: tuple[str, ...] = (
    *(n for names in HISTOGRAM_NAMES.values() for n in names),
    *(n for names in COUNTER_NAMES.values() for n in names),
    *(n for names in GAUGE_NAMES.values() for n in names),
    *(n for names in SHADOW_COUNTER_NAMES.values() for n in names),
    GPU_UTIL_NAME,
)


@dataclass(frozen=True)
class Signals:
    """One window of metrics over a group of pods. Rates per second, latencies in seconds."""

    rps: float | None = None
    prompt_tps: float | None = None
    generation_tps: float | None = None
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    itl_p50: float | None = None
    itl_p95: float | None = None
    #: Latency of a whole GRM score request (``grm_score_latency_seconds``).
    e2e_p50: float | None = None
    e2e_p95: float | None = None
    queue_time_p95: float | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    #: Samples per second of score requests' budgets that workers did not draw because their
    #: engine had a queue (``grm_score_samples_shed_total``): demand the sequence rate misses.
    shed_sps: float | None = None
    gpu_util: float | None = None
    #: Verdicts compared with the reference's over the shadow window (a count, not a rate), and
    #: of those the ones that agreed (``grm_shadow_verdicts_total``, ``grm_shadow_agreements_total``).
    shadow_verdicts: float | None = None
    shadow_agreements: float | None = None
    #: Pods that contributed at least one sample in the window.
    pods_reporting: int = 0
    #: Age of the newest sample at ``now`` (None when there is none).
    sample_age_s: float | None = None

    def known(self) -> int:
        """How many of the numeric signals are known (for tests and logs)."""
        skip = {"pods_reporting", "sample_age_s", "shadow_verdicts", "shadow_agreements"}
        return sum(1 for f in fields(self) if f.name not in skip and getattr(self, f.name) is not None)
