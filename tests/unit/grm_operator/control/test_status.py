"""Pure status folding: conditions in metav1.Condition shape, transitions for Events, and no
change (so no write) when nothing changed."""

from __future__ import annotations

from typing import Any

import yaml

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.control.status import ChildDeployment, fold_invalid, fold_status, slo_short
from support.paths import EXAMPLES

EXAMPLE = EXAMPLES / "grmd-ladder.yaml"
SPEC = GRMDeploymentSpec.model_validate(yaml.safe_load(EXAMPLE.read_text())["spec"])
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def child(variant: str, desired: int, ready: int, **kw: Any) -> ChildDeployment:
    values: dict[str, Any] = {
        "variant": variant,
        "desired": desired,
        "generation": 1,
        "observed_generation": 1,
        "replicas": desired,
        "ready": ready,
        "updated": desired,
        "available": ready,
    }
    values.update(kw)
    return ChildDeployment(**values)


def conditions(patch: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}


def fold(current: dict[str, Any], kids: dict[str, ChildDeployment], now: str = T0, **kw: Any) -> Any:
    return fold_status(name="reward", generation=1, spec=SPEC, current=current, children=kids, now=now, **kw)


def test_ready_when_the_active_variant_is_ready() -> None:
    kids = {"bf16": child("bf16", 2, 2), "fp8": child("fp8", 0, 0), "int4": child("int4", 0, 0)}
    result = fold({}, kids)
    assert conditions(result.patch) == {
        "Ready": ("True", "ReplicasReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
        "SpecValid": ("True", "Valid"),
    }
    patch = result.patch
    assert (patch["activeVariant"], patch["replicas"], patch["readyReplicas"], patch["desiredReplicas"]) == (
        "bf16",
        2,
        2,
        2,
    )
    assert patch["selector"] == "app.kubernetes.io/name=grm-worker,grm.dev/deployment=reward"
    assert patch["slo"] == "ttft<500ms,e2e<20s"
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] == T0 for c in patch["conditions"])
    assert [t.type for t in result.transitions] == ["Ready", "Progressing", "Degraded", "SpecValid"]


def test_folding_again_changes_nothing() -> None:
    kids = {"bf16": child("bf16", 2, 1)}
    first = fold({}, kids, now=T0)
    second = fold(first.patch, kids, now=T1)
    assert second.changes(first.patch) == {}
    assert second.transitions == []


def test_transition_time_moves_only_when_status_flips() -> None:
    first = fold({}, {"bf16": child("bf16", 2, 1)}, now=T0)
    assert conditions(first.patch)["Ready"] == ("False", "ReplicasNotReady")
    ready = fold(first.patch, {"bf16": child("bf16", 2, 2)}, now=T1)
    by_type = {c["type"]: c for c in ready.patch["conditions"]}
    assert by_type["Ready"]["lastTransitionTime"] == T1
    assert by_type["Degraded"]["lastTransitionTime"] == T0
    # 1 of 2 available was a rollout in progress; 2 of 2 completes it.
    assert [(t.type, t.reason, t.event_type) for t in ready.transitions] == [
        ("Ready", "ReplicasReady", "Normal"),
        ("Progressing", "RolloutComplete", "Normal"),
    ]
    assert set(ready.changes(first.patch)) == {"readyReplicas", "variants", "conditions"}


def test_rollouts_waiting_and_scale_to_zero() -> None:
    assert conditions(fold({}, {}).patch)["Ready"] == ("False", "WaitingForDeployment")
    assert conditions(fold({}, {"bf16": child("bf16", 0, 0)}).patch)["Ready"] == ("False", "ScaledToZero")
    rolling = fold({}, {"bf16": child("bf16", 2, 2, observed_generation=0)})
    assert conditions(rolling.patch)["Progressing"] == ("True", "RollingOut")
    switching = fold(
        {"switch": {"from": "bf16", "to": "fp8", "phase": "Surging"}}, {"bf16": child("bf16", 2, 2)}
    )
    assert conditions(switching.patch)["Progressing"] == ("True", "SwitchingVariant")


def test_degraded_from_children_and_reconcile_errors() -> None:
    stuck = child(
        "fp8",
        1,
        0,
        conditions=(
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "x"},
        ),
    )
    result = fold({}, {"bf16": child("bf16", 1, 1), "fp8": stuck})
    assert conditions(result.patch)["Degraded"] == ("True", "ProgressDeadlineExceeded")
    warning = next(t for t in result.transitions if t.type == "Degraded")
    assert warning.event_type == "Warning"
    failure = child(
        "bf16", 1, 0, conditions=({"type": "ReplicaFailure", "status": "True", "message": "quota"},)
    )
    assert conditions(fold({}, {"bf16": failure}).patch)["Degraded"] == ("True", "ReplicaFailure")
    error = fold({}, {"bf16": child("bf16", 1, 1)}, reconcile_error="403 Forbidden: no")
    assert conditions(error.patch)["Degraded"] == ("True", "ReconcileError")


def test_conditions_of_other_owners_and_unhealthy_marks_are_kept() -> None:
    slo_met = {
        "type": "SLOMet",
        "status": "True",
        "reason": "WithinSLO",
        "lastTransitionTime": T0,
        "message": "",
    }
    current = {
        "conditions": [slo_met],
        "variants": [{"name": "fp8", "unhealthyUntil": T1}, {"name": "int4", "demoted": {"since": T0}}],
        "activeVariant": "fp8",
    }
    result = fold(current, {"fp8": child("fp8", 1, 1)})
    # The autoscaler's demotion mark (live agreement below the floor) is kept, like unhealthyUntil.
    assert result.patch["variants"][2]["demoted"] == {"since": T0}
    assert slo_met in result.patch["conditions"]
    assert result.patch["activeVariant"] == "fp8"
    assert result.patch["variants"][1] == {
        "name": "fp8",
        "replicas": 1,
        "readyReplicas": 1,
        "desiredReplicas": 1,
        "unhealthyUntil": T1,
    }


def test_invalid_spec_touches_only_spec_valid() -> None:
    valid = fold({}, {"bf16": child("bf16", 1, 1)}).patch
    invalid = fold_invalid(generation=2, current=valid, message="variant names must be unique", now=T1)
    assert set(invalid.patch) == {"observedGeneration", "conditions"}
    assert conditions(invalid.patch)["SpecValid"] == ("False", "InvalidSpec")
    assert conditions(invalid.patch)["Ready"] == ("True", "ReplicasReady")
    assert [(t.reason, t.event_type) for t in invalid.transitions] == [("InvalidSpec", "Warning")]


def test_slo_short() -> None:
    spec = SPEC.model_copy(update={"slo": SPEC.slo.model_copy(update={"itl_p95": "50ms", "e2e_p95": "90s"})})
    assert slo_short(spec) == "ttft<500ms,itl<50ms,e2e<1m30s"
