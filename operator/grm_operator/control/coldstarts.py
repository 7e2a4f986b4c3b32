"""Measured cold starts: how long a worker pod took from its binding to a node to its first
readiness, read from the pod's status (the policy keeps them: :mod:`grm_operator.policy.coldstart`).

A pod's cold start runs from its ``PodScheduled=True`` transition to its ``Ready=True``
transition: the image pull, the ``fetch-model`` download, the weights' load and the engine's
start, which is what a replica asked for on a cluster with a free GPU takes. Not from its
creation: a pod Pending for lack of a GPU waits for a node (a node autoscaler's 3-10 minutes),
which the policy meets otherwise (``spec.scaling.pendingGrace``), and counting it would stretch
every later forecast horizon by a wait that free GPUs do not have. Without a PodScheduled
condition (it is written by the scheduler when it binds), the creation is the start.

Only a first readiness counts. Kubernetes keeps one transition time per condition, so a later
readiness overwrites it, and two cases would read as a start of hours:

* a container restarted (a crash, the startup probe killing a slow start, an OOM): its Ready
  transition is after the restart and includes the crash and the back-off, which is no cold
  start — a pod with any restart (init containers included) is not measured, before or after;
* the readiness probe failed and recovered without a restart (15 s of failed ``/ready`` under
  load): the load it covers ends at the startup probe, so a Ready transition later than the
  startup budget (:func:`grm_operator.control.builders.modelload.startup_budget_s`, 414 s for a
  27B bf16) plus :data:`READY_SLACK_S` after the containers started cannot be the first one.

Each pod is then offered on every tick while it is Ready; the policy keeps a pod once
(:func:`grm_operator.policy.coldstart.remember`). I/O stays with the autoscaler: this module reads
pod bodies the watch delivered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grm_operator.policy.coldstart import StartSample

__all__ = ["READY_SLACK_S", "PodStart", "first_readiness", "pod_start"]

#: Seconds a Ready transition may follow the startup budget: the readiness probe (every 5 s)
#: succeeds once after the startup probe did, and the kubelet reports it with its next status
#: update; 30 s is several of each.
READY_SLACK_S = 30.0


@dataclass(frozen=True)
class PodStart:
    """A worker pod's start as its status tells it (epoch seconds; None: not (yet) known)."""

    name: str
    #: The PodScheduled=True transition (its binding to a node), else the pod's creation.
    scheduled_at: float | None
    #: The latest ``state.running.startedAt`` of its (main) containers.
    started_at: float | None
    #: The Ready=True transition; None while the pod is not Ready.
    ready_at: float | None
    #: The most restarts of any of its containers, init containers included.
    restarts: int


def pod_start(body: Mapping[str, Any]) -> PodStart:
    """The start of the pod ``body`` (a Pod as the API server returns it)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    by_type = {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, Mapping)}
    scheduled = by_type.get("PodScheduled") or {}
    bound = scheduled.get("status") == "True"
    scheduled_at = epoch_seconds(scheduled.get("lastTransitionTime")) if bound else None
    if scheduled_at is None and not scheduled:
        scheduled_at = epoch_seconds(meta.get("creationTimestamp"))
    ready = by_type.get("Ready") or {}
    running = status.get("phase") == "Running" and ready.get("status") == "True"
    containers = status.get("containerStatuses") or []
    running_states = [(c.get("state") or {}).get("running") or {} for c in containers]
    starts = [epoch_seconds(state.get("startedAt")) for state in running_states]
    every = [*(status.get("initContainerStatuses") or []), *containers]
    return PodStart(
        name=str(meta.get("name")),
        scheduled_at=scheduled_at,
        started_at=None if not starts or None in starts else max(s for s in starts if s is not None),
        ready_at=epoch_seconds(ready.get("lastTransitionTime")) if running else None,
        restarts=max((int(c.get("restartCount") or 0) for c in every), default=0),
    )


def first_readiness(start: PodStart, budget_s: float) -> StartSample | None:
    """The pod's cold start when its readiness is its first (module doc), else None: not Ready,
    restarted, a Ready transition past ``budget_s`` (the startup budget) + :data:`READY_SLACK_S`
    after its containers started, or times that are missing or out of order (clock skew between
    the scheduler and the node)."""
    if start.ready_at is None or start.scheduled_at is None or start.started_at is None:
        return None
    if start.restarts > 0 or start.ready_at - start.started_at > budget_s + READY_SLACK_S:
        return None
    seconds = start.ready_at - start.scheduled_at
    if seconds < 0:
        return None
    return StartSample(start.name, start.ready_at, seconds)


def epoch_seconds(stamp: Any) -> float | None:
    """An RFC 3339 timestamp as the API server writes it (``2026-01-02T03:04:05Z``) in epoch
    seconds; None when absent or unreadable."""
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
