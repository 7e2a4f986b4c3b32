"""Pod health: why a worker pod cannot start, read from its container statuses, in one sentence.

A worker that never gets Ready shows only as "0/2 ready" in the Deployment's status; the reason is
in the pod's ``initContainerStatuses`` and ``containerStatuses``: the ``fetch-model`` init
container exited 1 because the bucket denied access, the image cannot be pulled, a Secret the
pod references is missing, the engine was OOM-killed loading the weights. :func:`pod_failure`
turns those into a reason code and a message the operator puts in the ``WorkersHealthy``
condition and a Warning Event, so ``kubectl describe grmd`` says what to fix without a
``kubectl logs`` on the right pod and container.

Both containers set ``terminationMessagePolicy: FallbackToLogsOnError``, so a failed container's
``terminated.message`` holds the last lines of its log (the kubelet keeps at most 2048 bytes or
80 lines of it) when it wrote no termination message itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grm_operator.control.builders.modelload import FETCH_CONTAINER

__all__ = ["MESSAGE_TAIL", "PodFailure", "pod_failure"]

#: Characters of a container's termination message kept in a condition (its message is capped
#: at 1024 with the variant and pod count around it).
MESSAGE_TAIL = 600

#: Waiting reasons that do not clear by themselves (a retry loop with backoff, not a start-up).
_STUCK_WAITING = {
    "ErrImagePull": "ImagePullFailed",
    "ImagePullBackOff": "ImagePullFailed",
    "InvalidImageName": "ImagePullFailed",
    "CreateContainerConfigError": "ContainerConfigError",
    "CreateContainerError": "ContainerConfigError",
    "RunContainerError": "ContainerConfigError",
}


@dataclass(frozen=True)
class PodFailure:
    """Why a pod cannot serve: a CamelCase ``reason`` (condition reason, Event reason) and a
    ``message`` naming the container and what it said."""

    reason: str
    message: str


def pod_failure(status: Mapping[str, Any]) -> PodFailure | None:
    """The first failure among the pod's init containers, then its containers; None when none
    failed (a pod still starting or pulling normally is not a failure)."""
    for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
        for container in status.get(key) or []:
            failure = _container_failure(container, init=init)
            if failure is not None:
                return failure
    return None


def _container_failure(container: Mapping[str, Any], *, init: bool) -> PodFailure | None:
    name = str(container.get("name") or "?")
    what = f"init container {name}" if init else f"container {name}"
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    waiting_reason = str(waiting.get("reason") or "")
    if waiting_reason in _STUCK_WAITING:
        return PodFailure(
            _STUCK_WAITING[waiting_reason],
            f"{what}: {waiting_reason}: {_tail(str(waiting.get('message') or ''))}".rstrip(": "),
        )
    # A container that exited non-zero: now (an init container before its restart) or last time
    # (the kubelet is backing off: CrashLoopBackOff, the last exit is in lastState).
    terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    if code is None or int(code) == 0:
        return None
    why = str(terminated.get("reason") or "Error")
    if init and name == FETCH_CONTAINER:
        reason = "ModelFetchFailed"
    elif why == "OOMKilled":
        reason = "OOMKilled"
    else:
        reason = "ContainerFailed"
    restarts = int(container.get("restartCount") or 0)
    again = f", restarted {restarts} time(s)" if restarts else ""
    said = _tail(str(terminated.get("message") or ""))
    return PodFailure(reason, f"{what} exited {code} ({why}{again})" + (f": {said}" if said else ""))


def _tail(text: str) -> str:
    """The end of a log tail, where the error is, on one line."""
    flat = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= MESSAGE_TAIL else "…" + flat[-MESSAGE_TAIL:]
