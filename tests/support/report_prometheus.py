"""A fake Prometheus for the report's tests: it answers the report's range queries from a known
fleet — 2 bf16 replicas (2 GPUs each) for the first half, 1 fp8 replica after, a load that repeats
every 6 minutes, latency histograms with a known share under the SLO."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from grm_operator.report.cli import make_report
from grm_operator.report.document import Report

START = 1_780_000_000.0
STEP = 60.0
BINS = 36  # 36 minutes: six repetitions of a 6-minute period
NS, NAME = "rl", "reward"

SPEC: dict[str, Any] = {
    "model": {"name": "m", "uri": "pvc://models/m"},
    "variants": [
        {"name": "bf16", "precision": "bf16", "quality": 1.0, "gpusPerReplica": 2},
        {"name": "fp8", "precision": "fp8", "quality": 0.995, "gpusPerReplica": 1},
    ],
    "slo": {"ttftP95": "2s", "e2eP95": "20s"},
    "scaling": {"minReplicas": 1, "maxReplicas": 4, "maxGPUs": 4, "controlPeriod": "15s"},
    "precision": {"minQuality": 0.99},
    "scoring": {"samples": {"min": 4, "max": 4}},
}


def requests_in_minute(i: int) -> float:
    """Score requests in minute i: 30 at phase 0-1 of every 6 minutes, 6 otherwise."""
    return 30.0 if i % 6 < 2 else 6.0


def budget_in_minute(i: int) -> int:
    """bf16's sample budget at the end of minute i: 4, then 2 from minute 9 (the operator's shed)."""
    return 4 if i < 9 else 2


def variant_in_minute(i: int) -> str:
    return "bf16" if i < BINS // 2 else "fp8"


class FakePrometheus:
    """Answers the report's range queries (recognised by their metric) from the fleet above, as
    Prometheus would: one cumulative series per pod, at the range start and every bin end; the
    bf16 pod's series ends when it goes, the fp8 pod's begins when it comes (its counter from 0)."""

    def __init__(self, fail: str | None = None, bins: int = BINS) -> None:
        self.fail = fail
        self.bins = bins
        self.calls: list[tuple[str, str]] = []

    def _present(self, k: int, variant: str) -> bool:
        """Whether the variant's pod is scraped at point k (the range start is k = 0, bin i ends at
        k = i + 1): bf16 from before the range to the end of its bins, fp8 from the end of its first."""
        if variant == "bf16":
            return k <= BINS // 2
        return k >= BINS // 2 + 1

    def _counter(
        self, labels: dict[str, str], variant: str, per_bin: Callable[[int], float], offset: float = 100.0
    ) -> dict[str, Any]:
        """A pod's counter: bf16 had counted ``offset`` before the range (not in the report)."""
        values = []
        total = offset if variant == "bf16" else 0.0
        for k in range(self.bins + 1):
            if k > 0 and variant_in_minute(k - 1) == variant:
                total += per_bin(k - 1)
            if self._present(k, variant):
                values.append([START + k * STEP, str(total)])
        return {"metric": {"grm_dev_variant": variant, "pod": f"{variant}-0", **labels}, "values": values}

    def _counters(self, per_bin: Callable[[int], float], **labels: str) -> list[dict[str, Any]]:
        return [self._counter(labels, v, per_bin) for v in ("bf16", "fp8")]

    def custom_query_range(
        self, query: str, start_time: datetime, end_time: datetime, step: str
    ) -> list[dict[str, Any]]:
        self.calls.append((query, step))
        assert start_time.timestamp() == START and end_time.timestamp() == START + self.bins * STEP
        if self.fail and self.fail in query:
            raise ConnectionError("connection refused")
        if query.startswith("grm_score_requests_total"):
            return self._counters(lambda i: requests_in_minute(i) - 1, outcome="ok") + self._counters(
                lambda i: 1.0, outcome="rejected"
            )
        if query.startswith("grm_score_samples_sum"):
            return self._counters(lambda i: 4 * (requests_in_minute(i) - 1))
        if "prompt_tokens" in query:
            return self._counters(lambda i: 4 * (requests_in_minute(i) - 1) * 200)
        if "generation_tokens" in query:
            return self._counters(lambda i: 4 * (requests_in_minute(i) - 1) * 100)
        if "samples_shed" in query:
            return self._counters(lambda i: 2.0)
        if "grm_sample_budget" in query:  # bf16 at k = 4 for 9 minutes, then 2; fp8 at 4
            return [
                {
                    "metric": {"grm_dev_variant": v},
                    "values": [
                        [START + k * STEP, str(budget_in_minute(k - 1) if v == "bf16" else 4)]
                        for k in range(self.bins + 1)
                        if k > 0 and variant_in_minute(k - 1) == v
                    ],
                }
                for v in ("bf16", "fp8")
            ]
        if "up{" in query:  # pod-seconds per bin: 2 bf16 pods, then 1 fp8 pod, all bin long
            return [
                {
                    "metric": {"grm_dev_variant": v},
                    "values": [
                        [START + k * STEP, str((2 if v == "bf16" else 1) * STEP)]
                        for k in range(self.bins + 1)
                        if k > 0 and variant_in_minute(k - 1) == v
                    ],
                }
                for v in ("bf16", "fp8")
            ]
        # e2e latency: a mean of 10.4 s, the buckets' 80 % at 8 s and 20 % at 20 s.
        if query.startswith("grm_score_latency_seconds_sum"):
            return self._counters(lambda i: (0.8 * 8 + 0.2 * 20) * (requests_in_minute(i) - 1))
        if query.startswith("grm_score_latency_seconds_count"):
            return self._counters(lambda i: requests_in_minute(i) - 1)
        if "bucket" in query:
            # e2e: of every bin's answered requests, 80 % ≤ 10 s, all ≤ 30 s; TTFT: all ≤ 0.5 s.
            e2e = "grm_score_latency" in query
            bounds = (10.0, 30.0, math.inf) if e2e else (0.5, math.inf)
            out = []
            for le in bounds:
                share = 0.8 if (e2e and le == 10.0) else 1.0
                label = "+Inf" if math.isinf(le) else f"{le}"

                def per_bin(i: int, share: float = share) -> float:
                    return share * (requests_in_minute(i) - 1) * (1 if e2e else 4)

                out += self._counters(per_bin, le=label)
            return out
        raise AssertionError(f"unexpected query {query}")


def fake_report(resource: dict[str, Any]) -> Report:
    """The whole report of ``resource`` over the fake fleet's window, 5-s cold starts."""
    return make_report(
        FakePrometheus(),
        prometheus_url="http://prom:9090",
        resource=resource,
        start=START,
        end=START + BINS * STEP,
        step_s=STEP,
        resolution_s=15.0,
        cold_start_s=5.0,
    )
