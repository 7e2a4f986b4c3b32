"""The engine's queue as the scoring front reads it from the engine's Prometheus text.

vLLM exports the requests waiting for admission (``vllm:num_requests_waiting``) and, per request
admitted, the time it waited (the ``vllm:request_queue_time_seconds`` histogram).
:func:`engine_queue` turns one exposition into a :class:`~grm_worker.contract.shedding.QueueReading`;
whether two readings mean a full batch is the contract's rule,
:func:`grm_worker.contract.shedding.queue_blocked`.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from grm_worker.contract.shedding import QueueReading

__all__ = [
    "QUEUE_TIME_METRIC",
    "WAITING_METRIC",
    "engine_queue",
    "engine_waiting",
]

WAITING_METRIC = "vllm:num_requests_waiting"
QUEUE_TIME_METRIC = "vllm:request_queue_time_seconds"
# The families' own sample lines only (not vllm:num_requests_waiting_by_reason, not the buckets):
# vLLM 0.32's exposition is ~600 lines in ~90 families (tests/fixtures/vllm-0.32-metrics.txt),
# parsed once a second for three numbers.
_WAITING_LINE = re.compile(r"^" + re.escape(WAITING_METRIC) + r"[{ ]")
_QUEUE_TIME_LINE = re.compile(r"^" + re.escape(QUEUE_TIME_METRIC) + r"_(sum|count)[{ ]")


def _sums(metrics_text: str, pattern: re.Pattern[str]) -> dict[str, float]:
    lines = [line for line in metrics_text.splitlines() if pattern.match(line)]
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def engine_waiting(metrics_text: str) -> float | None:
    """Requests waiting in the engine's queue: ``vllm:num_requests_waiting`` summed over its label
    sets (one per engine, e.g. per data-parallel rank), or None when the text has no such gauge.

    Raises ``ValueError`` on lines of that family the Prometheus parser rejects.
    """
    return _sums(metrics_text, _WAITING_LINE).get(WAITING_METRIC)


def engine_queue(metrics_text: str) -> QueueReading | None:
    """The queue in an engine's exposition text (sums over label sets), None without the gauge.

    Raises ``ValueError`` on lines of those families the Prometheus parser rejects.
    """
    waiting = engine_waiting(metrics_text)
    if waiting is None:
        return None
    times = _sums(metrics_text, _QUEUE_TIME_LINE)
    return QueueReading(
        waiting, times.get(f"{QUEUE_TIME_METRIC}_count"), times.get(f"{QUEUE_TIME_METRIC}_sum")
    )
