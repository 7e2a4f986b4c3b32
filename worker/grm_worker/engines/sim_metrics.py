"""The sim engine's metrics: the ``vllm:*`` Prometheus series a real vLLM 0.32 server exports,
plus the worker's GPU utilisation, for the simulated engine to update and render.

Names, types, labels (``model_name``, ``engine``) and histogram buckets are vLLM 0.32's
(``vllm/v1/metrics/loggers.py``); the unit test ``test_sim_metrics_vs_vllm.py`` checks them
against a real vLLM dump (``tests/fixtures/vllm-0.32-metrics.txt``) family by family.
``grm_worker_gpu_utilization_ratio`` is labelled as the worker labels real GPUs
(:mod:`grm_worker.gpu`), one series per GPU of the replica.
"""

from __future__ import annotations

import socket
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from grm_worker.gpu import GPU_LABELS, GPU_UTIL

__all__ = ["ITL_BUCKETS", "LATENCY_BUCKETS", "N_BUCKETS", "TTFT_BUCKETS", "SimMetrics"]

# Bucket boundaries of vLLM 0.32 (vllm/v1/metrics/loggers.py, as in the committed metrics dump).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
N_BUCKETS = (1, 2, 5, 10, 20)


def _token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to max_model_len (``build_1_2_5_buckets``)."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return tuple(out)
            out.append(value)
        exponent += 1


class SimMetrics:
    """vLLM 0.32's metric families (names, types, labels, buckets) plus the worker's GPU utilisation."""

    def __init__(self, model_name: str, max_model_len: int, gpus: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, labels = self.registry, ["model_name", "engine"]
        values = {"model_name": model_name, "engine": "0"}
        tokens = _token_buckets(max_model_len)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r, multiprocess_mode="mostrecent")

        def counter(name: str, doc: str, extra: list[str] | None = None) -> Counter:
            return Counter(name, doc, labels + (extra or []), registry=r)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, labels, registry=r, buckets=buckets).labels(**values)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.running_l = self.running.labels(**values)
        self.waiting_l = self.waiting.labels(**values)
        self.kv_usage_l = self.kv_usage.labels(**values)
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of tokens."
        )
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = counter(
            "vllm:request_success", "Count of successfully processed requests.", ["finished_reason"]
        )
        for c in (
            self.prefix_queries,
            self.prefix_hits,
            self.preemptions,
            self.prompt_tokens,
            self.generation_tokens,
        ):
            c.labels(**values)
        for reason in ("stop", "length", "abort", "error", "repetition"):
            self.success.labels(finished_reason=reason, **values)
        self.prefix_queries_l = self.prefix_queries.labels(**values)
        self.preemptions_l = self.preemptions.labels(**values)
        self.prompt_tokens_l = self.prompt_tokens.labels(**values)
        self.generation_tokens_l = self.generation_tokens.labels(**values)
        self.values = values
        self.req_prompt = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens)
        self.req_gen = hist(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tokens
        )
        self.iteration = hist(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            tuple(float(b) for b in (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)),
        )
        self.max_gen = hist(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            tokens,
        )
        self.params_n = hist("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.params_max_tokens = hist(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", tokens
        )
        self.ttft = hist(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = hist(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            LATENCY_BUCKETS,
        )
        self.queue = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            LATENCY_BUCKETS,
        )
        self.inference = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            LATENCY_BUCKETS,
        )
        self.prefill_time = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            LATENCY_BUCKETS,
        )
        self.decode_time = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            LATENCY_BUCKETS,
        )
        self.req_preemptions = hist(
            "vllm:request_num_preemptions",
            "Histogram of number of preemptions per request.",
            (1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0),
        )
        host = socket.gethostname()
        self.gpu_util = Gauge(GPU_UTIL, "GPU utilisation (the step loop's busy fraction), 0–1.",
                              list(GPU_LABELS), registry=r)  # fmt: skip
        self.gpu_util_l = [
            self.gpu_util.labels(gpu=str(i), uuid=f"GPU-sim-{host}-{i}", gpu_model="Simulated H100")
            for i in range(gpus)
        ]

    def render(self, gpu_util_ratio: float) -> str:
        """The exposition text, every GPU's utilisation gauge set to ``gpu_util_ratio`` (0–1)."""
        for gauge in self.gpu_util_l:
            gauge.set(round(gpu_util_ratio, 3))
        return generate_latest(self.registry).decode()
