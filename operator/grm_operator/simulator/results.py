"""What a run of the fleet simulation yields and how it is judged: the benchmark's numbers (SLO
attainment, GPU-hours, mean quality, p95 latencies, switches, scale events, rejections) and the
time series for the plot.

A request meets the SLO when its own TTFT, end-to-end latency and mean inter-token latency are
each within the spec's p95 targets; a pod's GPUs count from its request (from its scheduling
when it was Pending) until it is released or the trace ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from grm_operator.api.models import SLO
from grm_operator.simulator.engine import Group
from grm_operator.simulator.pod import Pod
from grm_operator.simulator.scrape import percentile


@dataclass
class SeriesPoint:
    """One control tick of the time series (for the plot)."""

    time: float
    #: GPUs scheduled (held by pods, draining ones included).
    gpus: int
    replicas: dict[str, int]
    active: str
    samples: int
    ttft_p95: float | None
    e2e_p95: float | None


@dataclass
class RunResult:
    """A controller's run: the numbers of the table and of ``--json``, and the series for the plot."""

    name: str
    slo_attainment: float
    gpu_hours: float
    mean_quality: float
    p95_ttft_s: float
    p95_e2e_s: float
    switches: int
    scale_events: int
    rejected: int
    served: int
    total: int
    series: list[SeriesPoint]

    def summary(self) -> dict[str, float | int]:
        """The per-policy object of ``--json``."""
        return {
            "slo_attainment": round(self.slo_attainment, 6),
            "gpu_hours": round(self.gpu_hours, 4),
            "mean_quality": round(self.mean_quality, 6),
            "p95_ttft_s": round(self.p95_ttft_s, 4),
            "p95_e2e_s": round(self.p95_e2e_s, 4),
            "switches": self.switches,
            "scale_events": self.scale_events,
            "rejected": self.rejected,
        }


def run_result(
    name: str,
    slo: SLO,
    *,
    total: int,
    done: list[Group],
    rejected: int,
    pods: list[Pod],
    switches: int,
    scale_events: int,
    series: list[SeriesPoint],
    end: float,
) -> RunResult:
    """The result of controller ``name``'s run over a trace of ``total`` requests ending at ``end``."""
    met = 0
    ttfts: list[float] = []
    e2es: list[float] = []
    quality = 0.0
    # The targets parsed once (each property parses its duration string).
    ttft_slo, e2e_slo, itl_slo = slo.ttft_p95_s, slo.e2e_p95_s, slo.itl_p95_s
    for g in done:
        assert g.first_token is not None and g.finished is not None
        ttft = g.first_token - g.arrival
        e2e = g.finished - g.arrival
        itl = g.decode_s / (g.output - 1) if g.output > 1 else 0.0
        ttfts.append(ttft)
        e2es.append(e2e)
        quality += g.quality
        if (
            (ttft_slo is None or ttft <= ttft_slo)
            and (e2e_slo is None or e2e <= e2e_slo)
            and (itl_slo is None or itl <= itl_slo)
        ):
            met += 1
    gpu_s = 0.0
    for pod in pods:
        if pod.scheduled is None:
            continue
        start = pod.requested if pod.scheduled == pod.requested else pod.scheduled
        stop = min(pod.released if pod.released is not None else end, end)
        gpu_s += pod.gpus * max(0.0, stop - start)
    served = len(done)
    return RunResult(
        name=name,
        slo_attainment=met / total if total else 1.0,
        gpu_hours=gpu_s / 3600.0,
        mean_quality=quality / served if served else 0.0,
        p95_ttft_s=percentile(ttfts, 95) or 0.0,
        p95_e2e_s=percentile(e2es, 95) or 0.0,
        switches=switches,
        scale_events=scale_events,
        rejected=rejected,
        served=served,
        total=total,
        series=series,
    )
