"""Builds worker /metrics text in vLLM 0.32's exposition format (names, HELP/TYPE lines, the
``engine`` and ``model_name`` labels, vLLM's bucket bounds) from numbers a test chooses, and the
GRM front's score-latency histogram (:func:`score_latency_text`) as prometheus_client writes it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# vLLM 0.32's bucket bounds (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


@dataclass
class Hist:
    """Raw observations of one histogram (the text carries their cumulative bucket counts)."""

    bounds: Sequence[float]
    observations: list[float] = field(default_factory=list)

    def lines(self, name: str, labels: str) -> list[str]:
        out = [f"# HELP {name} Histogram.", f"# TYPE {name} histogram"]
        prefix = f"{labels}," if labels else ""
        for b in self.bounds:
            n = sum(1 for o in self.observations if o <= b)
            out.append(f'{name}_bucket{{{prefix}le="{b}"}} {float(n)}')
        out.append(f'{name}_bucket{{{prefix}le="+Inf"}} {float(len(self.observations))}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_count{braces} {float(len(self.observations))}")
        out.append(f"{name}_sum{braces} {sum(self.observations)}")
        return out


def score_latency_text(score: Hist) -> str:
    """The front's ``grm_score_latency_seconds`` (unlabelled, one observation per GRM score)."""
    return "\n".join(score.lines("grm_score_latency_seconds", "")) + "\n"


@dataclass
class Engine:
    """One engine's counters, gauges and histograms."""

    ttft: Hist = field(default_factory=lambda: Hist(TTFT_BUCKETS))
    itl: Hist = field(default_factory=lambda: Hist(ITL_BUCKETS))
    e2e: Hist = field(default_factory=lambda: Hist(E2E_BUCKETS))
    queue: Hist = field(default_factory=lambda: Hist(E2E_BUCKETS))
    success: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    running: float = 0.0
    waiting: float = 0.0
    kv_cache: float = 0.0


def vllm_text(engines: Mapping[str, Engine], model: str = "grm", old_names: bool = False) -> str:
    """Exposition text of a pod running ``engines`` (engine index → state).

    ``old_names`` uses the pre-0.10 names (gpu_cache_usage_perc, time_per_output_token_seconds).
    """
    kv = "vllm:gpu_cache_usage_perc" if old_names else "vllm:kv_cache_usage_perc"
    itl = "vllm:time_per_output_token_seconds" if old_names else "vllm:inter_token_latency_seconds"
    lines: list[str] = []
    for gauge, attr in (("vllm:num_requests_running", "running"), ("vllm:num_requests_waiting", "waiting"),
                        (kv, "kv_cache")):  # fmt: skip
        lines += [f"# HELP {gauge} Gauge.", f"# TYPE {gauge} gauge"]
        for e, s in engines.items():
            lines.append(f'{gauge}{{engine="{e}",model_name="{model}"}} {getattr(s, attr)}')
    for counter, attr in (("vllm:request_success", "success"), ("vllm:prompt_tokens", "prompt_tokens"),
                          ("vllm:generation_tokens", "generation_tokens")):  # fmt: skip
        lines += [f"# HELP {counter}_total Counter.", f"# TYPE {counter}_total counter"]
        for e, s in engines.items():
            lines.append(f'{counter}_total{{engine="{e}",model_name="{model}"}} {getattr(s, attr)}')
            lines.append(f'{counter}_created{{engine="{e}",model_name="{model}"}} 1.76e9')
    for name, attr in (("vllm:time_to_first_token_seconds", "ttft"), (itl, "itl"),
                       ("vllm:e2e_request_latency_seconds", "e2e"),
                       ("vllm:request_queue_time_seconds", "queue")):  # fmt: skip
        for e, s in engines.items():
            hist_lines = getattr(s, attr).lines(name, f'engine="{e}",model_name="{model}"')
            lines += hist_lines if e == next(iter(engines)) else hist_lines[2:]
    return "\n".join(lines) + "\n"
