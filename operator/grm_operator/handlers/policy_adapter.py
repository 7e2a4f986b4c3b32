"""The operator's entry to the policy: status, metrics reading and pod counts in, an Intent out.

The autoscaler (:mod:`grm_operator.handlers.autoscale`) speaks in Kubernetes terms (status dicts,
Deployments, pods); the policy in :class:`Observation` / :class:`Decision`. This module is the
only translation between them, so both sides stay small.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.control.actuation import Event, Intent, VariantDeployment
from grm_operator.control.builders.replicas import active_variant, starting_variant
from grm_operator.control.rollout import from_rfc3339, to_rfc3339
from grm_operator.metrics import Reading
from grm_operator.policy.coldstart import StartSample
from grm_operator.policy.decide import decide
from grm_operator.policy.gate import ADMITTED, ladder_spec
from grm_operator.policy.quality_watch import (
    Demotion,
    LiveAgreement,
    Measurement,
    QualityWatch,
    Reinstatement,
    watch_quality,
)
from grm_operator.policy.types import Decision, Observation, PolicyState

#: A policy: ``decide`` (the operator's), or the optimiser ``grm-mpc`` the simulator compares.
PolicyFn = Callable[[Observation, PolicyState, GRMDeploymentSpec, float], tuple[Decision, PolicyState]]


@dataclass(frozen=True)
class PodCounts:
    """Worker pods of one variant: Ready, and Pending because no node took them yet, with when
    each of those became unscheduled (epoch seconds; fewer times than ``pending``: since unknown),
    and the cold starts of the Ready ones whose readiness is their first
    (:mod:`grm_operator.control.coldstarts`)."""

    ready: int
    pending: int
    pending_since: tuple[float, ...] = ()
    cold_starts: tuple[StartSample, ...] = ()


def decide_intent(
    *,
    spec: GRMDeploymentSpec,
    status: Mapping[str, Any],
    reading: Reading | None,
    pods: Mapping[str, PodCounts],
    deployments: Mapping[str, VariantDeployment],
    now: float,
    metrics_error: str | None = None,
    policy: PolicyFn = decide,
    re_evaluate: str | None = None,
) -> Intent:
    """One policy step for a GRMDeployment, with its memory read from and returned for status.

    First the live-agreement watch, on every variant of the spec (a demoted variant leaves the
    ladder). Then the policy decides on the ladder the quality gate admits (:func:`ladder_spec`),
    never on the spec as written: a variant still building, evaluating or rejected is not a rung.
    A variant that serves while off the ladder (its build changed, the floor rose, the policy
    became Measured) is switched away from at once, to the best admitted variant,
    surge-then-drain. ``re_evaluate``: the GRMDeployment's ``grm.dev/re-evaluate`` annotation.
    """
    evidence = {
        name: LiveAgreement(s.shadow_verdicts, s.shadow_agreements)
        for name, s in (reading.variants if reading is not None else {}).items()
        if s.shadow_verdicts is not None and s.shadow_agreements is not None
    }
    watch = watch_quality(
        spec,
        evidence,
        demotions_from_status(status),
        now,
        measured=measurements_from_status(status),
        reinstated=reinstatements_from_status(status),
        request=re_evaluate,
    )
    demoted = {name: demotion_to_status(d) for name, d in watch.demoted.items()}
    reinstated = {name: reinstatement_to_status(r) for name, r in watch.reinstated.items()}
    events = _watch_events(watch)
    ladder = ladder_spec(spec, status.get("variants"))
    status_active = status.get("activeVariant")
    on_ladder = {v.name for v in ladder.variants}
    if status_active in {v.name for v in spec.variants} and status_active not in on_ladder:
        target = starting_variant(ladder).name
        replicas = max(
            deployments.get(str(status_active), VariantDeployment()).desired, spec.scaling.min_replicas
        )
        return Intent(
            action="SwitchVariant",
            reason=f"{status_active} is not admitted by the quality gate (precision.qualityPolicy "
            f"{spec.precision.quality_policy}, minQuality {spec.precision.min_quality:g}): "
            f"switching to {target}",
            replicas=replicas,
            variant=target,
            samples=None,
            state=dict(status.get("policyState") or {}),
            demoted=demoted,
            reinstated=reinstated,
            events=events,
        )
    spec = ladder
    active = active_variant(spec, status.get("activeVariant"))
    samples = status.get("samples")
    observation = Observation(
        time=now,
        total=reading.total if reading is not None else None,
        variants=dict(reading.variants) if reading is not None else {},
        active_variant=active,
        samples=int(samples) if isinstance(samples, int) else spec.scoring.samples.max,
        ready={name: c.ready for name, c in pods.items()},
        pending={name: c.pending for name, c in pods.items()},
        desired={name: d.desired for name, d in deployments.items()},
        metrics_error=metrics_error,
        pending_since={name: c.pending_since for name, c in pods.items() if c.pending_since},
        demoted=frozenset(watch.demoted),
        cold_starts={name: c.cold_starts for name, c in pods.items() if c.cold_starts},
    )
    state = PolicyState.from_dict(status.get("policyState"))
    decision, new_state = policy(observation, state, spec, now)
    return Intent(
        action=decision.action,
        reason=decision.reason,
        replicas=decision.replicas,
        variant=decision.variant,
        samples=decision.samples,
        state=new_state.to_dict(),
        demoted=demoted,
        reinstated=reinstated,
        events=events,
    )


def demotion_to_status(d: Demotion) -> dict[str, Any]:
    """status.variants[].demoted of one demotion (rounded: status is for people, and unchanged
    numbers mean no write)."""
    return {
        "since": to_rfc3339(d.since),
        "reason": "LiveAgreementBelowFloor",
        "message": d.message,
        "agreement": round(d.agreement, 4),
        "agreementLow": round(d.low, 4),
        "agreementHigh": round(d.high, 4),
        "compared": d.compared,
        "agreed": d.agreed,
        "floor": d.floor,
        "variantDigest": d.digest,
        **({"reEvaluate": d.request} if d.request else {}),
    }


def reinstatement_to_status(r: Reinstatement) -> dict[str, Any]:
    """status.variants[].reinstated of one lifted demotion."""
    return {"since": to_rfc3339(r.since), "reason": r.reason, "message": r.message}


def demotions_from_status(status: Mapping[str, Any]) -> dict[str, Demotion]:
    """The demotions recorded in status.variants[].demoted (an unreadable entry is dropped)."""
    out: dict[str, Demotion] = {}
    for entry in status.get("variants") or []:
        mark = entry.get("demoted") if isinstance(entry, Mapping) else None
        if not isinstance(mark, Mapping):
            continue
        try:
            out[str(entry["name"])] = Demotion(
                since=from_rfc3339(str(mark["since"])),
                compared=int(mark["compared"]),
                agreed=int(mark["agreed"]),
                low=float(mark["agreementLow"]),
                high=float(mark["agreementHigh"]),
                floor=float(mark["floor"]),
                digest=str(mark["variantDigest"]),
                request=str(mark["reEvaluate"]) if mark.get("reEvaluate") else None,
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def reinstatements_from_status(status: Mapping[str, Any]) -> dict[str, Reinstatement]:
    """The lifted demotions recorded in status.variants[].reinstated (unreadable ones dropped)."""
    out: dict[str, Reinstatement] = {}
    for entry in status.get("variants") or []:
        mark = entry.get("reinstated") if isinstance(entry, Mapping) else None
        if not isinstance(mark, Mapping):
            continue
        try:
            out[str(entry["name"])] = Reinstatement(
                since=from_rfc3339(str(mark["since"])),
                reason=str(mark["reason"]),
                message=str(mark["message"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def measurements_from_status(status: Mapping[str, Any]) -> dict[str, Measurement]:
    """Each variant's current evaluation in status.variants[].quality with the gate's verdict
    (the gate controller writes both; an entry without a readable measurement is left out)."""
    out: dict[str, Measurement] = {}
    for entry in status.get("variants") or []:
        quality = entry.get("quality") if isinstance(entry, Mapping) else None
        if not isinstance(quality, Mapping):
            continue
        try:
            out[str(entry["name"])] = Measurement(
                at=from_rfc3339(str(quality["measured"])),
                value=float(quality["value"]),
                low=float(quality["low"]),
                high=float(quality["high"]),
                items=int(quality["items"]),
                admitted=entry.get("gate") == ADMITTED,
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _watch_events(watch: QualityWatch) -> tuple[Event, ...]:
    demoted = tuple(
        Event("Warning", "VariantDemoted", f"{name} leaves the quality ladder: {watch.demoted[name].message}")
        for name in watch.new
    )
    lifted = tuple(
        Event("Normal", "VariantReinstated", watch.reinstated[name].message)
        for name in watch.lifted
        if name not in watch.demoted and name in watch.reinstated
    )
    return demoted + lifted
