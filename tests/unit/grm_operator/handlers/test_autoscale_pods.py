"""The autoscaler's view of worker pods: readiness, Pending-without-a-node, deletion, the cache
fed by watch events."""

from __future__ import annotations

from typing import Any

from grm_operator.control.coldstarts import PodStart
from grm_operator.handlers.autoscale import PodView, pod_view


def pod(name: str, variant: str | None = "bf16", **status: Any) -> dict[str, Any]:
    labels = {"grm.dev/deployment": "reward", **({"grm.dev/variant": variant} if variant else {})}
    return {"metadata": {"name": name, "namespace": "rl", "labels": labels}, "status": status}


def test_a_running_ready_pod_is_ready_with_its_ip() -> None:
    body = pod("a", phase="Running", podIP="10.0.0.5", conditions=[{"type": "Ready", "status": "True"}])
    # No PodScheduled condition nor creation time, no Ready transition time: nothing to measure.
    start = PodStart("a", scheduled_at=None, started_at=None, ready_at=None, restarts=0)
    expected = PodView("rl", "a", "bf16", ready=True, pending=False, ip="10.0.0.5", start=start)
    assert pod_view(body) == expected


def test_running_but_not_ready_is_neither_ready_nor_pending() -> None:
    body = pod("a", phase="Running", conditions=[{"type": "Ready", "status": "False"}])
    view = pod_view(body)
    assert view is not None and not view.ready and not view.pending


def test_an_unschedulable_pod_is_pending_and_a_scheduled_one_pulling_its_image_is_not() -> None:
    unschedulable = pod("a", phase="Pending", conditions=[{"type": "PodScheduled", "status": "False"}])
    assert pod_view(unschedulable) == PodView("rl", "a", "bf16", ready=False, pending=True, ip=None)
    starting = pod("b", phase="Pending", conditions=[{"type": "PodScheduled", "status": "True"}])
    view = pod_view(starting)
    assert view is not None and not view.pending


def test_pods_without_a_variant_or_being_deleted_are_ignored() -> None:
    assert pod_view(pod("a", variant=None, phase="Running")) is None
    deleting = pod("a", phase="Running")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert pod_view(deleting) is None


def test_a_pending_pod_is_unscheduled_since_the_schedulers_verdict_else_its_creation() -> None:
    # 2026-01-01T00:00:00Z is 1767225600 s after the epoch.
    tried = pod(
        "a",
        phase="Pending",
        conditions=[
            {"type": "PodScheduled", "status": "False", "lastTransitionTime": "2026-01-01T00:01:00Z"}
        ],
    )
    tried["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    view = pod_view(tried)
    assert view is not None and view.pending_since == 1767225600.0 + 60
    untried = pod("b", phase="Pending")
    untried["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    view = pod_view(untried)
    assert view is not None and view.pending_since == 1767225600.0
    # A scheduled pod has no pending time, and an unreadable stamp none either (long pending).
    running = pod("c", phase="Running", conditions=[{"type": "PodScheduled", "status": "True"}])
    assert (view := pod_view(running)) is not None and view.pending_since is None
    odd = pod("d", phase="Pending")
    odd["metadata"]["creationTimestamp"] = "yesterday"
    assert (view := pod_view(odd)) is not None and view.pending and view.pending_since is None


def test_a_pod_whose_container_restarted_twice_without_getting_ready_crash_loops() -> None:
    def with_restarts(restarts: int, *, ready: bool = False, init: bool = False) -> dict[str, Any]:
        statuses = [{"name": "worker", "restartCount": restarts}]
        key = "initContainerStatuses" if init else "containerStatuses"
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        return pod("a", phase="Running" if not init else "Pending", conditions=conditions, **{key: statuses})

    assert (view := pod_view(with_restarts(1))) is not None and not view.crashing  # one hiccup
    assert (view := pod_view(with_restarts(2))) is not None and view.crashing
    # Restarts long ago do not matter once the pod is Ready; a failing download init step does.
    assert (view := pod_view(with_restarts(5, ready=True))) is not None and not view.crashing
    assert (view := pod_view(with_restarts(3, init=True))) is not None and view.crashing


def test_a_pod_whose_model_download_failed_carries_the_reason_until_it_gets_ready() -> None:
    fetch = {
        "name": "fetch-model",
        "restartCount": 1,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {
            "terminated": {"exitCode": 1, "reason": "Error", "message": "NoSuchKey: grm/config.json"}
        },
    }
    view = pod_view(pod("a", phase="Pending", initContainerStatuses=[fetch]))
    assert view is not None and view.failure is not None
    assert view.failure.reason == "ModelFetchFailed"
    assert view.failure.message.endswith("NoSuchKey: grm/config.json")
    # Once Ready, an old failure in lastState says nothing about the pod now.
    ready = pod(
        "a",
        phase="Running",
        conditions=[{"type": "Ready", "status": "True"}],
        containerStatuses=[{**fetch, "name": "worker", "state": {"running": {}}}],
    )
    assert (view := pod_view(ready)) is not None and view.failure is None
