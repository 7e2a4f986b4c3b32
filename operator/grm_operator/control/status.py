"""Pure status folding: child Deployments (and the spec's validity) in, GRMDeployment status out.

The operator owns these parts of ``status``: ``observedGeneration``, ``activeVariant`` (when unset
or no longer listed; the autoscaler moves it on a switch), ``replicas``/``readyReplicas``/
``desiredReplicas`` of the active variant, per-variant counts, ``selector`` (the scale
subresource's), ``slo`` (a short string for ``kubectl get``), ``gate`` (the quality gate in short
form) and five conditions:

=============  ==========================================================================
Ready          True ``ReplicasReady``: every desired pod of the active variant is Ready.
               False ``ReplicasNotReady``, ``ScaledToZero``, ``WaitingForDeployment``.
Progressing    True ``RollingOut`` (a variant Deployment is rolling) or ``SwitchingVariant``;
               False ``RolloutComplete``.
Degraded       True ``ReconcileError`` (the last apply failed), ``ProgressDeadlineExceeded``,
               ``ReplicaFailure`` (copied from a child); False ``AsExpected``.
SpecValid      True ``Valid``; False ``InvalidSpec`` (the operator's models reject the spec;
               nothing is applied or deleted until it is fixed).
QualityGate    True ``AllAdmitted``; Unknown ``GateInProgress`` (a build or evaluation runs);
               False ``VariantRejected`` with each rejected variant's numbers
               (:mod:`grm_operator.control.gate`).
=============  ==========================================================================

Each ``status.variants[]`` entry keeps the quality gate's fields (``gate``, ``gateMessage``,
``build``, ``quality``): the gate's step sets them, and a fold without one carries them over.

Conditions follow ``metav1.Condition``: ``lastTransitionTime`` moves only when ``status`` flips,
``observedGeneration`` is the generation they were computed from. Other conditions (``SLOMet``,
``MetricsAvailable``, …, owned by the autoscaler) are carried over untouched. :func:`fold_status`
also lists the transitions, for which the handler posts Events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from grm_operator.api.durations import format_duration, parse_duration
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.control.builders.metadata import selector_string
from grm_operator.control.builders.replicas import active_variant
from grm_operator.policy.gate import summary

Status = Literal["True", "False", "Unknown"]
OWNED_CONDITIONS = ("Ready", "Progressing", "Degraded", "SpecValid", "QualityGate")
#: The fields of a status.variants[] entry that the quality gate owns (carried over by folds).
GATE_FIELDS = ("gate", "gateMessage", "build", "quality")
# The condition values that are problems (Warning Events). Ready=False and Progressing=True are
# part of every scale-up and rollout, so their transitions are Normal Events.
_WARNINGS = {("Degraded", "True"), ("SpecValid", "False"), ("QualityGate", "False")}


@dataclass(frozen=True)
class ChildDeployment:
    """What status folding needs from one variant Deployment (spec and status)."""

    variant: str
    desired: int
    generation: int
    observed_generation: int
    replicas: int
    ready: int
    updated: int
    available: int
    conditions: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_body(cls, variant: str, body: Mapping[str, Any]) -> ChildDeployment:
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        meta = body.get("metadata") or {}
        return cls(
            variant=variant,
            desired=int(spec.get("replicas", 1)),
            generation=int(meta.get("generation", 0)),
            observed_generation=int(status.get("observedGeneration", 0)),
            replicas=int(status.get("replicas", 0)),
            ready=int(status.get("readyReplicas", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            available=int(status.get("availableReplicas", 0)),
            conditions=tuple(status.get("conditions") or ()),
        )

    def rolling(self) -> bool:
        """True while the Deployment has not caught up with its spec (new template or count)."""
        return (
            self.observed_generation < self.generation
            or self.updated < self.desired
            or self.replicas != self.desired
            or self.available < self.desired
        )

    def condition(self, type_: str) -> Mapping[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == type_), None)


@dataclass(frozen=True)
class Transition:
    """A condition that changed status or reason: the handler posts an Event for it."""

    type: str
    status: Status
    reason: str
    message: str

    @property
    def event_type(self) -> Literal["Normal", "Warning"]:
        return "Warning" if (self.type, self.status) in _WARNINGS else "Normal"


@dataclass(frozen=True)
class FoldResult:
    """The status fields the operator owns (a merge patch) and the condition transitions."""

    patch: dict[str, Any]
    transitions: list[Transition]

    def changes(self, current: Mapping[str, Any]) -> dict[str, Any]:
        """The part of :attr:`patch` that differs from ``current`` (empty: nothing to write)."""
        return {k: v for k, v in self.patch.items() if current.get(k) != v}


def slo_short(spec: GRMDeploymentSpec) -> str:
    """The SLO as ``kubectl get`` shows it: ``ttft<500ms,e2e<20s``."""
    parts = []
    for label, value in (("ttft", spec.slo.ttft_p95), ("itl", spec.slo.itl_p95), ("e2e", spec.slo.e2e_p95)):
        if value:
            parts.append(f"{label}<{format_duration(parse_duration(value))}")
    return ",".join(parts)


def condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """A metav1.Condition dict; ``lastTransitionTime`` is kept from ``previous`` unless the status
    changed (Kubernetes' convention: the time of the last *transition*, not of the last write)."""
    unchanged = previous is not None and previous.get("status") == status
    return {
        "type": type_,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": str(previous.get("lastTransitionTime", now)) if unchanged and previous else now,
        "reason": reason,
        "message": message,
    }


def _ready(
    spec: GRMDeploymentSpec, active: str, children: Mapping[str, ChildDeployment]
) -> tuple[Status, str, str]:
    child = children.get(active)
    if child is None:
        return "False", "WaitingForDeployment", f"the Deployment of variant {active} is not there yet"
    if child.desired == 0:
        return "False", "ScaledToZero", f"variant {active} is scaled to 0 replicas"
    text = f"{child.ready}/{child.desired} replicas of variant {active} ready"
    if child.ready >= child.desired and child.updated >= child.desired:
        return "True", "ReplicasReady", text
    return "False", "ReplicasNotReady", text


def _progressing(
    children: Mapping[str, ChildDeployment], switch: Mapping[str, Any] | None
) -> tuple[Status, str, str]:
    if switch:
        return (
            "True",
            "SwitchingVariant",
            f"switching from {switch.get('from')} to {switch.get('to')} ({switch.get('phase')})",
        )
    rolling = [c for c in sorted(children.values(), key=lambda c: c.variant) if c.rolling()]
    if rolling:
        text = "; ".join(
            f"variant {c.variant}: {c.updated}/{c.desired} updated, {c.ready} ready" for c in rolling
        )
        return "True", "RollingOut", text
    return "False", "RolloutComplete", "every variant Deployment matches its spec"


def _degraded(children: Mapping[str, ChildDeployment], error: str | None) -> tuple[Status, str, str]:
    if error:
        return "True", "ReconcileError", error
    for child in sorted(children.values(), key=lambda c: c.variant):
        progressing = child.condition("Progressing")
        if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
            return (
                "True",
                "ProgressDeadlineExceeded",
                f"variant {child.variant}: {progressing.get('message', '')}",
            )
        failure = child.condition("ReplicaFailure")
        if failure and failure.get("status") == "True":
            return "True", "ReplicaFailure", f"variant {child.variant}: {failure.get('message', '')}"
    return "False", "AsExpected", "no failures"


def _merge_conditions(
    current: Sequence[Mapping[str, Any]],
    computed: Mapping[str, tuple[Status, str, str]],
    generation: int,
    now: str,
) -> tuple[list[dict[str, Any]], list[Transition]]:
    """Replace the owned conditions, keep the others (in their order), list the transitions."""
    previous = {str(c.get("type")): c for c in current}
    transitions: list[Transition] = []
    merged: list[dict[str, Any]] = []
    for cond in current:
        if cond.get("type") not in computed:
            merged.append(dict(cond))
    for type_, (status, reason, message) in computed.items():
        prev = previous.get(type_)
        merged.append(condition(type_, status, reason, message, generation, prev, now))
        if prev is None or prev.get("status") != status or prev.get("reason") != reason:
            transitions.append(Transition(type_, status, reason, message))
    order = {t: i for i, t in enumerate(OWNED_CONDITIONS)}
    merged.sort(key=lambda c: (order.get(str(c["type"]), len(order)), str(c["type"])))
    return merged, transitions


def fold_status(
    *,
    name: str,
    generation: int,
    spec: GRMDeploymentSpec,
    current: Mapping[str, Any],
    children: Mapping[str, ChildDeployment],
    now: str,
    reconcile_error: str | None = None,
    gate: Mapping[str, Mapping[str, Any]] | None = None,
    gate_condition: tuple[Status, str, str] | None = None,
) -> FoldResult:
    """The operator's status fields for a valid spec, from the variant Deployments it sees, and
    the quality gate's step (``gate``: per variant, its fields; a None value removes one)."""
    active = active_variant(spec, current.get("activeVariant"))
    previous_variants = {str(v.get("name")): v for v in current.get("variants") or []}
    variants = []
    for v in spec.variants:
        child = children.get(v.name)
        entry: dict[str, Any] = {
            "name": v.name,
            "replicas": child.replicas if child else 0,
            "readyReplicas": child.ready if child else 0,
            "desiredReplicas": child.desired if child else 0,
        }
        previous = previous_variants.get(v.name, {})
        unhealthy = previous.get("unhealthyUntil")
        if unhealthy:
            entry["unhealthyUntil"] = unhealthy
        for key in GATE_FIELDS:
            value = (gate or {}).get(v.name, {}).get(key, previous.get(key)) if gate else previous.get(key)
            if value is not None:
                entry[key] = value
        # The autoscaler's (policy.quality_watch): kept as it is, like unhealthyUntil.
        for field in ("demoted", "reinstated"):
            if previous.get(field):
                entry[field] = previous[field]
        variants.append(entry)
    child = children.get(active)
    computed = {
        "Ready": _ready(spec, active, children),
        "Progressing": _progressing(children, current.get("switch")),
        "Degraded": _degraded(children, reconcile_error),
        "SpecValid": ("True", "Valid", "the spec is valid"),
    }
    if gate_condition is not None:
        computed["QualityGate"] = gate_condition
    conditions, transitions = _merge_conditions(current.get("conditions") or [], computed, generation, now)
    patch: dict[str, Any] = {
        "observedGeneration": generation,
        "activeVariant": active,
        "replicas": child.replicas if child else 0,
        "readyReplicas": child.ready if child else 0,
        "desiredReplicas": child.desired if child else 0,
        "selector": selector_string(name),
        "slo": slo_short(spec),
        "variants": variants,
        "conditions": conditions,
        "gate": summary(spec, variants) if gate is not None else current.get("gate"),
    }
    return FoldResult(patch=patch, transitions=transitions)


def fold_invalid(*, generation: int, current: Mapping[str, Any], message: str, now: str) -> FoldResult:
    """Status for a spec the models reject: SpecValid=False/InvalidSpec; everything else as it was
    (children keep running as last applied)."""
    conditions, transitions = _merge_conditions(
        current.get("conditions") or [],
        {"SpecValid": ("False", "InvalidSpec", message)},
        generation,
        now,
    )
    return FoldResult(
        patch={"observedGeneration": generation, "conditions": conditions}, transitions=transitions
    )
