"""Sample shedding: when the engine's batch is full, and how many samples a score request drops.

The worker's front applies these rules to its own reads of the engine's queue; the operator's
fleet simulator applies the same functions to its simulated replicas, so what it predicts is
what the workers do. Pure: no I/O, no Prometheus parsing (that is :mod:`grm_worker.queue`).

A request arriving between two engine steps waits one step (10–100 ms) even on an idle engine:
at 10 requests/s and 30-ms steps a read finds one waiting about a third of the time. Shedding
must not fire on that; it fires when the batch is full, which two reads of the queue tell apart
(:func:`queue_blocked`): requests still wait, and either those admitted in between waited
``min_wait_s`` or more on average, or none was admitted while some waited on both reads. While
the batch is full a new score request runs at the shed floor (:func:`shed_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QueueReading", "queue_blocked", "shed_samples"]


@dataclass(frozen=True)
class QueueReading:
    """One read of the engine's queue: requests waiting now and, when the engine exports the
    queue-time histogram, how many requests have left the queue so far and the seconds they
    waited in all (cumulative counters)."""

    waiting: float
    left: float | None = None
    waited_s: float | None = None


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


def shed_samples(samples: int, floor: int | None, waiting: float | None) -> int:
    """Samples a request of ``samples`` (its budget) does not draw: ``samples − floor`` while the
    engine has requests waiting, else 0.

    A queue means the batch is full; running new requests at the quality floor drains it
    samples/floor times faster at once (k = 4 → 1: 4×), where a new replica would take minutes to
    start, and each request still meets the floor. ``waiting`` None (unknown: the engine's metrics
    could not be read) never sheds, nor does ``floor`` None (shedding off).
    """
    if floor is None or waiting is None or not waiting > 0:
        return 0
    return max(0, samples - floor)
