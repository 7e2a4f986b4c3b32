"""Measured cold starts (``grm_operator.control.coldstarts``): a worker pod's binding to a node to
its first Ready transition, read from the pod's status; Pending time, restarted pods, readiness
flips and pods never Ready do not count."""

from __future__ import annotations

from typing import Any

from grm_operator.control.coldstarts import READY_SLACK_S, PodStart, first_readiness, pod_start
from grm_operator.policy.coldstart import StartSample

#: 2026-01-01T00:00:00Z in epoch seconds.
T0 = 1767225600.0
BUDGET = 414.0  # a 27B bf16's startup budget


def stamp(seconds: float) -> str:
    """T0 + ``seconds`` as the API server writes it."""
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"2026-01-01T{hours:02d}:{m:02d}:{s:02d}Z"


def worker_pod(
    *,
    created: float = 0.0,
    scheduled: float | None = 0.0,
    started: float | None = 100.0,
    ready: float | None = 280.0,
    restarts: int = 0,
    init_restarts: int = 0,
    unschedulable_since: float | None = None,
) -> dict[str, Any]:
    """A worker pod created at T0 + ``created``, bound at ``scheduled`` (None: no PodScheduled
    condition, or False since ``unschedulable_since``), its container started at ``started`` and
    Ready at ``ready`` (None: not Ready)."""
    conditions: list[dict[str, Any]] = []
    if scheduled is not None:
        conditions.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp(scheduled)})
    elif unschedulable_since is not None:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "lastTransitionTime": stamp(unschedulable_since)}
        )
    ready_at = stamp(ready) if ready is not None else stamp(created)
    conditions.append(
        {"type": "Ready", "status": "True" if ready is not None else "False", "lastTransitionTime": ready_at}
    )
    running = {"running": {"startedAt": stamp(started)}} if started is not None else {"waiting": {}}
    return {
        "metadata": {"name": "reward-bf16-7d9f-abcde", "creationTimestamp": stamp(created)},
        "status": {
            "phase": "Running" if started is not None else "Pending",
            "conditions": conditions,
            "initContainerStatuses": [{"name": "fetch-model", "restartCount": init_restarts}],
            "containerStatuses": [{"name": "worker", "restartCount": restarts, "state": running}],
        },
    }


def measured(body: dict[str, Any]) -> float | None:
    sample = first_readiness(pod_start(body), BUDGET)
    return None if sample is None else sample.seconds


def test_a_first_readiness_is_measured_from_the_binding_to_ready() -> None:
    sample = first_readiness(pod_start(worker_pod(scheduled=0.0, ready=280.0)), BUDGET)
    assert sample == StartSample("reward-bf16-7d9f-abcde", T0 + 280.0, 280.0)


def test_without_a_pod_scheduled_condition_the_creation_is_the_start() -> None:
    assert measured(worker_pod(created=10.0, scheduled=None, ready=280.0)) == 270.0


def test_time_pending_for_a_node_is_not_part_of_the_cold_start() -> None:
    # Created at 0, unschedulable for 10 minutes (a node autoscaler's GPU node), bound at 600,
    # Ready at 880: 280 s of cold start, not 880.
    body = worker_pod(created=0.0, scheduled=600.0, started=700.0, ready=880.0)
    assert pod_start(body).scheduled_at == T0 + 600.0
    assert measured(body) == 280.0
    # Still unschedulable: not bound, not Ready, nothing to measure.
    pending = worker_pod(scheduled=None, unschedulable_since=5.0, started=None, ready=None)
    assert pod_start(pending).scheduled_at is None
    assert measured(pending) is None


def test_a_pod_never_ready_is_not_measured() -> None:
    assert measured(worker_pod(ready=None)) is None
    assert measured(worker_pod(started=None, ready=None)) is None


def test_a_restarted_pod_is_not_measured_before_or_after_its_restart() -> None:
    # Ready once, then the engine restarted and got Ready again at 5000: its Ready transition is
    # the second one, never a cold start; nor is a load the startup probe cut short and retried.
    assert measured(worker_pod(started=4800.0, ready=5000.0, restarts=1)) is None
    assert measured(worker_pod(started=500.0, ready=700.0, restarts=1)) is None
    # A download retried by its init container took its crashes and back-off: not measured.
    assert measured(worker_pod(init_restarts=2)) is None


def test_a_readiness_flip_without_a_restart_is_not_a_cold_start() -> None:
    # The container started at 100 and loaded; /ready failed under load an hour later and
    # recovered: its Ready transition is far past the startup budget after the start.
    assert measured(worker_pod(started=100.0, ready=3700.0)) is None
    # At the budget and its slack, still a load the startup probe allowed.
    assert (
        measured(worker_pod(started=100.0, ready=100.0 + BUDGET + READY_SLACK_S))
        == 100.0 + BUDGET + READY_SLACK_S
    )


def test_unreadable_or_skewed_times_are_not_measured() -> None:
    body = worker_pod()
    body["status"]["conditions"][-1]["lastTransitionTime"] = "soon"
    assert measured(body) is None
    # The node's clock behind the scheduler's: Ready before the binding.
    assert measured(worker_pod(scheduled=300.0, started=200.0, ready=280.0)) is None
    # A container without a start time cannot be told from a readiness flip.
    assert first_readiness(PodStart("p", T0, None, T0 + 280.0, 0), BUDGET) is None
