"""One simulated worker replica: its engine, its lifecycle times (requested, scheduled, Ready,
draining, released) and the worker's own shedding poll of the engine's queue.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from grm_operator.simulator.engine import Replica
from grm_worker.contract.config import ScoringConfig
from grm_worker.contract.shedding import QueueReading, queue_blocked

#: The worker's shedding poll and full-batch threshold, as the operator deploys it (its defaults).
WORKER_SCORING = ScoringConfig()


@dataclass
class Pod:
    """One worker replica of a variant."""

    variant: str
    gpus: int
    engine: Replica
    requested: float
    cold_start_s: float
    scheduled: float | None = None
    ready_at: float | None = None
    draining_since: float | None = None
    released: float | None = None
    busy_marks: deque[tuple[float, float]] = field(default_factory=deque)
    #: The worker's shedding poll: its last read of the engine's queue, and whether that read
    #: found the batch full.
    queue_reading: QueueReading | None = None
    batch_full: bool = False
    #: Unique within a run (``<variant>-<n>``): the name its measured cold start is kept under.
    name: str = ""

    def read_queue(self, now: float) -> bool:
        """The worker's poll: read the engine's queue at ``now`` (its engine advanced to ``now``)
        and judge it against the previous read as the worker does; the verdict stands until the
        next read."""
        e = self.engine
        reading = QueueReading(float(e.waiting_seqs()), float(e.admitted_seqs), e.queued_s)
        self.batch_full = bool(queue_blocked(self.queue_reading, reading, WORKER_SCORING.shed_queue_s))
        self.queue_reading = reading
        return self.batch_full

    def ready(self, now: float) -> bool:
        """Whether the pod serves at ``now``: loaded and not yet released."""
        return self.ready_at is not None and self.ready_at <= now and self.released is None
