"""The engine's queue as the scoring front sees it, and when it means the batch is full.

vLLM exports the requests waiting for admission (``vllm:num_requests_waiting``) and, per request
admitted, the time it waited (the ``vllm:request_queue_time_seconds`` histogram). A request
arriving between two engine steps waits one step (10–100 ms) even on an idle engine: at 10
requests/s and 30-ms steps a read finds one waiting about a third of the time. Sample shedding
must not fire on that; it fires when the batch is full, which the two reads of a poll tell
apart (:func:`queue_blocked`): requests still wait, and either those admitted in between waited
``min_wait_s`` or more on average, or none was admitted while some waited on both reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "QUEUE_TIME_METRIC",
    "WAITING_METRIC",
    "QueueReading",
    "engine_queue",
    "engine_waiting",
    "queue_blocked",
]

WAITING_METRIC = "vllm:num_requests_waiting"
QUEUE_TIME_METRIC = "vllm:request_queue_time_seconds"
# The families' own sample lines only (not vllm:num_requests_waiting_by_reason, not the buckets):
# vLLM 0.32's exposition is ~600 lines in ~90 families (tests/fixtures/vllm-0.32-metrics.txt),
# parsed once a second for three numbers.
_WAITING_LINE = re.compile(r"^" + re.escape(WAITING_METRIC) + r"[{ ]")
_QUEUE_TIME_LINE = re.compile(r"^" + re.escape(QUEUE_TIME_METRIC) + r"_(sum|count)[{ ]")


@dataclass(frozen=True)
class QueueReading:
    """One read of the engine's queue: requests waiting now and, when the engine exports the
    queue-time histogram, how many requests have left the queue so far and the seconds they
    waited in all (cumulative counters)."""

    waiting: float
    left: float | None = None
    waited_s: float | None = None


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


def queue_blocked(
    previous: QueueReading | None, current: QueueReading | None, min_wait_s: float
) -> bool | None:
    """Whether the engine's batch is full: ``current`` has requests waiting and, since
    ``previous`` (the read before), the requests admitted waited ``min_wait_s`` or more on average,
    or none was admitted although requests waited on both reads. Without the histogram, a queue
    on both reads. None when ``current`` is unknown; False after a single read (no interval yet) or
    when a counter went back (the engine restarted).
    """
    if current is None:
        return None
    if current.waiting <= 0 or previous is None:
        return False
    if current.left is None or previous.left is None or current.waited_s is None or previous.waited_s is None:
        return previous.waiting > 0
    left = current.left - previous.left
    waited = current.waited_s - previous.waited_s
    if left < 0 or waited < 0:
        return False
    if left == 0:
        return previous.waiting > 0
    return waited / left >= min_wait_s
