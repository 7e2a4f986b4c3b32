"""Why a worker pod cannot start, from container statuses as a kubelet writes them."""

from __future__ import annotations

from typing import Any

from grm_operator.control.podhealth import MESSAGE_TAIL, pod_failure


def fetch_failed(restarts: int) -> dict[str, Any]:
    """An init container that exited 1 and is backing off (Init:CrashLoopBackOff)."""
    log = "INFO fetching s3://models/grm-27b\nERROR botocore: AccessDenied: GetObject on models/grm-27b\n"
    return {
        "initContainerStatuses": [
            {
                "name": "fetch-model",
                "restartCount": restarts,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": log}},
            }
        ],
        "containerStatuses": [
            {"name": "worker", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}
        ],
    }


def test_a_failed_model_download_names_the_container_and_the_error() -> None:
    failure = pod_failure(fetch_failed(2))
    assert failure is not None
    assert failure.reason == "ModelFetchFailed"
    assert failure.message == (
        "init container fetch-model exited 1 (Error, restarted 2 time(s)): INFO fetching "
        "s3://models/grm-27b | ERROR botocore: AccessDenied: GetObject on models/grm-27b"
    )


def test_an_image_that_cannot_be_pulled_and_a_missing_secret_are_failures() -> None:
    pull = {
        "containerStatuses": [
            {
                "name": "worker",
                "state": {
                    "waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "grm:x"'}
                },
            }
        ]
    }
    assert pod_failure(pull) is not None
    assert pod_failure(pull).reason == "ImagePullFailed"  # type: ignore[union-attr]
    secret = {
        "containerStatuses": [
            {
                "name": "worker",
                "state": {
                    "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s3" not found'}
                },
            }
        ]
    }
    failure = pod_failure(secret)
    assert failure is not None
    assert (failure.reason, failure.message) == (
        "ContainerConfigError",
        'container worker: CreateContainerConfigError: secret "s3" not found',
    )


def test_an_engine_killed_for_memory_is_oomkilled() -> None:
    status = {
        "containerStatuses": [
            {
                "name": "worker",
                "restartCount": 1,
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            }
        ]
    }
    failure = pod_failure(status)
    assert failure is not None and failure.reason == "OOMKilled"
    assert failure.message == "container worker exited 137 (OOMKilled, restarted 1 time(s))"


def test_a_pod_starting_normally_or_restarted_cleanly_is_not_a_failure() -> None:
    assert pod_failure({}) is None
    starting = {
        "initContainerStatuses": [
            {"name": "fetch-model", "state": {"running": {}}},
        ],
        "containerStatuses": [{"name": "worker", "state": {"waiting": {"reason": "PodInitializing"}}}],
    }
    assert pod_failure(starting) is None
    done = {
        "initContainerStatuses": [{"name": "fetch-model", "state": {"terminated": {"exitCode": 0}}}],
        "containerStatuses": [{"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}],
    }
    assert pod_failure(done) is None


def test_a_long_log_keeps_its_end_where_the_error_is() -> None:
    status = fetch_failed(0)
    lines = "\n".join(f"progress {i}%" for i in range(500)) + "\nERROR disk full"
    status["initContainerStatuses"][0]["lastState"]["terminated"]["message"] = lines
    failure = pod_failure(status)
    assert failure is not None
    assert failure.message.endswith("progress 499% | ERROR disk full")
    assert len(failure.message) < MESSAGE_TAIL + 80
