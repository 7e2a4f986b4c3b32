"""What the autoscaler applies, decided purely: the policy's intent, the switch in progress and
what Kubernetes shows in; replica changes, a switch step, the sample budget, the status patch
and the Events out.

The kopf timer (:mod:`grm_operator.handlers.autoscale`) does the I/O around :func:`plan`:
read → observe → ``policy.decide`` → :func:`plan` → apply. Rules, by mode:

* ``scaling.mode`` **Auto**: the policy's replica count is applied to the active variant.
  **Manual** and **External**: replicas are ``spec.scaling.replicas`` (``kubectl scale``, or an
  HPA/KEDA through the scale subresource), applied by the reconciler; the autoscaler leaves
  them alone but still chooses the variant and the sample budget.
* ``precision.policy`` **Pinned** switches only to the pinned variant, when the pin names
  another one than the serving variant (``kubectl patch`` of ``pinnedVariant``): the same
  surge-then-drain switch as the policy's, so the change drops no request;
  **Auto** starts a switch when the policy names another variant. Either waits while that variant
  is marked unhealthy (a failed switch, ``rollout.unhealthyBackoff``).
* A switch surges the new variant within maxGPUs (old and new together; at least one replica),
  so "enough Ready" means the surge; after the drain the usual scaling takes the new variant to
  its target. When both do not fit maxGPUs at full size the switch rolls: the old variant hands
  its GPUs over in batches as the new one gets Ready (:mod:`grm_operator.control.rollout`).
* While a switch is in progress only the switch acts (:mod:`grm_operator.control.rollout`); the policy's
  replica and variant wishes wait until it completed or rolled back — scaling either side of a
  half-done switch would make "enough Ready" a moving target.

Status written here: ``observed``, ``lastDecision``, ``decisions`` (the newest
:data:`HISTORY` that did something), ``policyState``, ``samples``, ``activeVariant``,
``switch``, the variants' ``unhealthyUntil`` and ``demoted`` (live agreement below the floor,
:mod:`grm_operator.policy.quality_watch`), and the conditions ``SLOMet``, ``MetricsAvailable``,
``QualityFloorMet``, ``WorkersHealthy`` (a worker pod that cannot start, and why:
:mod:`grm_operator.control.podhealth`) and ``LiveQualityMet`` (other conditions are the
reconciler's and are kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec, SwitchProgress
from grm_operator.control.builders.replicas import active_variant
from grm_operator.control.podhealth import PodFailure
from grm_operator.control.rollout import (
    GPUBudget,
    Observed,
    Step,
    Switch,
    advance,
    from_rfc3339,
    start,
    to_rfc3339,
)
from grm_operator.control.status import OWNED_CONDITIONS, condition
from grm_operator.policy.gate import admitted_qualities, ladder_spec
from grm_operator.policy.signals import Signals

__all__ = [
    "AUTOSCALER_CONDITIONS",
    "HISTORY",
    "Event",
    "Intent",
    "Plan",
    "VariantDeployment",
    "plan",
]

Action = Literal["None", "ScaleUp", "ScaleDown", "SwitchVariant", "SetSamples", "Hold"]
HISTORY = 20  # the CRD bounds status.decisions at 20 entries
AUTOSCALER_CONDITIONS = ("SLOMet", "MetricsAvailable", "QualityFloorMet", "LiveQualityMet", "WorkersHealthy")


@dataclass(frozen=True)
class Intent:
    """What the policy wants (the operator's view of a ``policy.Decision``)."""

    action: Action
    reason: str
    replicas: int | None = None
    variant: str | None = None
    samples: int | None = None
    #: The policy's memory to persist in status.policyState.
    state: Mapping[str, Any] = field(default_factory=dict)
    #: Variants demoted by their live agreement, as status.variants[].demoted (None: not
    #: computed, status kept as it is), and the Events of this tick's demotions and lifts.
    demoted: Mapping[str, Mapping[str, Any]] | None = None
    #: Lifted demotions, as status.variants[].reinstated (None: status kept as it is).
    reinstated: Mapping[str, Mapping[str, Any]] | None = None
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class VariantDeployment:
    """One variant Deployment as read: desired (spec.replicas), existing, Ready, unscheduled
    (Pending: no GPU free) and crash-looping pods, and the pods that report a failure (the
    first of them, by pod name, says which)."""

    desired: int = 0
    replicas: int = 0
    ready: int = 0
    pending: int = 0
    crashing: int = 0
    failed: int = 0
    failure: PodFailure | None = None


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the GRMDeployment."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """Everything to apply after one tick."""

    scale: Mapping[str, int]
    samples: int | None
    status: dict[str, Any]
    events: Sequence[Event]
    active: str
    #: Variants not to try, until when (epoch seconds).
    unhealthy: Mapping[str, float] = field(default_factory=dict)


def _slo_met(spec: GRMDeploymentSpec, observed: Signals | None) -> tuple[str, str, str]:
    if observed is None:
        return "Unknown", "NoMetrics", "no metrics to compare with the SLO"
    checks = [
        ("TTFT", spec.slo.ttft_p95_s, observed.ttft_p95),
        ("inter-token latency", spec.slo.itl_p95_s, observed.itl_p95),
        ("e2e latency", spec.slo.e2e_p95_s, observed.e2e_p95),
    ]
    known = [
        (name, target, value) for name, target, value in checks if target is not None and value is not None
    ]
    if not known:
        return "Unknown", "NoTraffic", "no requests in the metrics window to measure the SLO on"
    broken = [f"p95 {n} {value:.3g}s > {target:.3g}s" for n, target, value in known if value > target]
    if broken:
        return "False", "SLOViolated", "; ".join(broken)
    met = ", ".join(f"p95 {n} {value:.3g}s ≤ {target:.3g}s" for n, target, value in known)
    return "True", "WithinSLO", met


def _observed(signals: Signals) -> dict[str, Any]:
    values = {
        "rps": signals.rps,
        "ttftP95": signals.ttft_p95,
        "itlP95": signals.itl_p95,
        "e2eP95": signals.e2e_p95,
        "gpuUtil": signals.gpu_util,
        "kvCacheUsage": signals.kv_cache_usage,
        "queue": signals.waiting,
        "running": signals.running,
        "sampleAgeSeconds": signals.sample_age_s,
    }
    # Three significant digits: status is for people, and unchanged numbers mean no write.
    return {k: float(f"{v:.3g}") for k, v in values.items() if v is not None}


def _unhealthy(status: Mapping[str, Any], now: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for entry in status.get("variants") or []:
        until = entry.get("unhealthyUntil")
        if until and from_rfc3339(str(until)) > now:
            out[str(entry.get("name"))] = from_rfc3339(str(until))
    return out


def _workers_healthy(deployments: Mapping[str, VariantDeployment]) -> tuple[str, str, str]:
    for variant, d in sorted(deployments.items()):
        if d.failure is not None:
            message = f"variant {variant}: {d.failed} pod(s) failing: {d.failure.message}"
            return "False", d.failure.reason, message
    return "True", "AsExpected", "no worker pod reports a failed container"


def plan(
    *,
    spec: GRMDeploymentSpec,
    generation: int,
    status: Mapping[str, Any],
    deployments: Mapping[str, VariantDeployment],
    observed: Signals | None,
    metrics_error: str | None,
    intent: Intent | None,
    now: float,
    known_unhealthy: Mapping[str, float] | None = None,
) -> Plan:
    """One tick's actions. ``observed`` is the total over the window (None: the source failed
    with ``metrics_error``); ``intent`` is the policy's (None when it was not consulted).
    ``known_unhealthy`` are marks this process set earlier (a concurrent status write of the
    reconciler may have dropped them from ``status``; they are written again)."""
    stamp = to_rfc3339(now)
    events: list[Event] = []
    scale: dict[str, int] = {}
    unhealthy = _unhealthy(status, now)
    for variant, until in (known_unhealthy or {}).items():
        if until > now:
            unhealthy[variant] = max(until, unhealthy.get(variant, 0.0))
    active = active_variant(spec, status.get("activeVariant"))
    switch_status = status.get("switch")
    switch: Switch | None = None
    step: Step | None = None
    names = frozenset(v.name for v in spec.variants)
    observed_pods = {
        v: Observed(d.replicas, d.ready, d.pending, d.desired, d.crashing) for v, d in deployments.items()
    }

    if switch_status:
        switch = Switch.from_status(SwitchProgress.model_validate(switch_status))
        step = advance(
            switch,
            observed_pods,
            now,
            timeout_s=parse_duration(spec.rollout.switch_timeout),
            drain_s=float(spec.rollout.drain_seconds),
            backoff_s=parse_duration(spec.rollout.unhealthy_backoff),
            variants=names,
            budget=_budget(spec, switch),
        )
    elif intent is not None:
        # Pinned: the pin is the only variant wanted; a new pin is switched to like any switch.
        # Both only within the ladder the quality gate admits: a pin on a variant still being
        # evaluated (or rejected) stays on the reference, and no switch ever starts towards a
        # variant off the ladder, whatever asked for it.
        ladder = ladder_spec(spec, status.get("variants"))
        on_ladder = frozenset(v.name for v in ladder.variants)
        pinned = ladder.precision.pinned_variant if ladder.precision.policy == "Pinned" else None
        wanted = pinned or intent.variant
        if (
            wanted is not None
            and wanted != active
            and wanted in names
            and wanted in on_ladder
            and wanted not in unhealthy
        ):
            if pinned is not None:
                intent = replace(
                    intent,
                    action="SwitchVariant",
                    reason=f"precision.pinnedVariant is {pinned}: {active} serves until {pinned} is Ready",
                )
            if spec.scaling.mode == "Auto" and intent.replicas is not None:
                target = intent.replicas
            elif spec.scaling.replicas is not None:
                target = spec.scaling.replicas
            else:
                target = deployments.get(active, VariantDeployment()).desired
            target = min(target, max(1, spec.max_gpus() // spec.variant(wanted).gpus_per_replica))
            surge = _surge(spec, wanted, target, deployments)
            step = start(active, wanted, target, now, intent.reason, surge=surge)
        elif spec.scaling.mode == "Auto" and intent.replicas is not None:
            current = deployments.get(active, VariantDeployment()).desired
            target = min(max(intent.replicas, spec.scaling.min_replicas), spec.scaling.max_replicas)
            if target != current:
                scale[active] = target
                verb = "ScaledUp" if target > current else "ScaledDown"
                events.append(
                    Event("Normal", verb, f"{active}: {current} → {target} replicas: {intent.reason}")
                )

    if step is not None:
        for variant, replicas in step.replicas.items():
            if deployments.get(variant, VariantDeployment()).desired != replicas:
                scale[variant] = replicas
        active = step.active
        switch = step.switch
        unhealthy.update(step.unhealthy)
        if step.message:
            kind: Literal["Normal", "Warning"] = (
                "Warning" if step.reason.startswith("SwitchRoll") else "Normal"
            )
            events.append(Event(kind, step.reason, step.message))

    # --- status ---------------------------------------------------------------------------------
    patch: dict[str, Any] = {
        "activeVariant": active,
        "switch": switch.to_status().to_wire() if switch else None,
    }
    if observed is not None:
        patch["observed"] = _observed(observed)
    samples: int | None = None
    if intent is not None:
        if intent.samples is not None and intent.samples != status.get("samples"):
            samples = intent.samples
            patch["samples"] = intent.samples
        decision = _decision(intent, step, stamp)
        previous = status.get("lastDecision") or {}
        if {k: v for k, v in previous.items() if k != "time"} == {
            k: v for k, v in decision.items() if k != "time"
        }:
            # The policy says the same as last tick: keep its time, so idle objects cost no writes.
            decision["time"] = previous.get("time", stamp)
        patch["lastDecision"] = decision
        history = list(status.get("decisions") or [])
        if decision["action"] not in ("None", "Hold") and decision != previous:
            history = [*history, decision][-HISTORY:]
        patch["decisions"] = history
        patch["policyState"] = dict(intent.state)
    variants = _variants_with_unhealthy(status, names, unhealthy)
    computed = {
        "SLOMet": _slo_met(spec, observed),
        "MetricsAvailable": _metrics_available(observed, metrics_error),
        "QualityFloorMet": _quality_floor_met(spec, active, status.get("variants")),
        "WorkersHealthy": _workers_healthy(deployments),
    }
    if intent is not None and intent.demoted is not None:
        marked, changed = _with_field(
            variants or status.get("variants") or [], names, "demoted", intent.demoted
        )
        if intent.reinstated is not None:
            marked, lifted = _with_field(marked, names, "reinstated", intent.reinstated)
            changed = changed or lifted
        variants = marked if changed or variants is not None else None
        computed["LiveQualityMet"] = _live_quality_met(spec, intent.demoted)
        events.extend(intent.events)
    if variants is not None:
        patch["variants"] = variants
    previous = {str(c.get("type")): c for c in status.get("conditions") or []}
    conditions = [dict(c) for c in status.get("conditions") or [] if c.get("type") not in computed]
    for type_, (cstatus, reason, message) in computed.items():
        prev = previous.get(type_)
        conditions.append(condition(type_, cstatus, reason, message[:1024], generation, prev, stamp))
        if prev is not None and (prev.get("status") != cstatus or prev.get("reason") != reason):
            good = cstatus == "True"
            events.append(Event("Normal" if good else "Warning", reason, f"{type_}={cstatus}: {message}"))
    # The reconciler's order (its own conditions first, then the rest by type): two writers with
    # different orders would rewrite the list back and forth.
    rank = {t: i for i, t in enumerate(OWNED_CONDITIONS)}
    conditions.sort(key=lambda c: (rank.get(str(c["type"]), len(rank)), str(c["type"])))
    patch["conditions"] = conditions
    # Deployments that shrink are written first: in a rolling hand-over (bf16 2 → 1, fp8 1 → 2
    # within maxGPUs 4) the desired replicas then never ask for more GPUs than the budget, not
    # even between the two writes (scale-up first read fp8 2 + bf16 2 = 6 GPUs for a moment).
    scale = dict(
        sorted(scale.items(), key=lambda kv: kv[1] > deployments.get(kv[0], VariantDeployment()).desired)
    )
    return Plan(scale=scale, samples=samples, status=patch, events=events, active=active, unhealthy=unhealthy)


def _surge(
    spec: GRMDeploymentSpec, new: str, target: int, deployments: Mapping[str, VariantDeployment]
) -> int:
    """Replicas of ``new`` to start at once while the old variant still runs: the target, capped so
    that all stay within maxGPUs (which counts switch surges), but at least one. Example: maxGPUs
    4, bf16 at 2 replicas × 2 GPUs, fp8 wanted at 4 × 1 GPU: 0 GPUs are free, so 1 fp8 replica
    surges and the switch rolls from there (bf16 hands over its GPUs as fp8 gets Ready)."""
    in_use = sum(
        d.desired * spec.variant(v).gpus_per_replica
        for v, d in deployments.items()
        if v != new and v in {x.name for x in spec.variants}
    )
    free = spec.max_gpus() - in_use
    return max(1, min(target, free // spec.variant(new).gpus_per_replica))


def _budget(spec: GRMDeploymentSpec, switch: Switch) -> GPUBudget | None:
    """maxGPUs and both variants' GPUs per replica, for the rolling switch; None when either
    variant left the spec (the switch then ends or rolls back without rolling)."""
    names = {v.name for v in spec.variants}
    if switch.from_variant not in names or switch.to_variant not in names:
        return None
    return GPUBudget(
        spec.max_gpus(),
        spec.variant(switch.from_variant).gpus_per_replica,
        spec.variant(switch.to_variant).gpus_per_replica,
    )


def _without_time(decision: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in decision.items() if k != "time"}


def _decision(intent: Intent, step: Step | None, stamp: str) -> dict[str, Any]:
    """status.lastDecision: what was done and why (a started switch is the action taken)."""
    decision: dict[str, Any] = {"time": stamp, "action": intent.action, "reason": intent.reason[:4096]}
    if step is not None and step.reason == "SwitchStarted" and step.switch is not None:
        decision.update(
            action="SwitchVariant", **{"from": step.switch.from_variant, "to": step.switch.to_variant}
        )
    if intent.replicas is not None:
        decision["replicas"] = intent.replicas
    if intent.samples is not None:
        decision["samples"] = intent.samples
    return decision


def _variants_with_unhealthy(
    status: Mapping[str, Any], names: frozenset[str], unhealthy: Mapping[str, float]
) -> list[dict[str, Any]] | None:
    """status.variants with unhealthyUntil set for ``unhealthy`` and cleared for the others;
    None when no entry needs a change."""
    entries = [dict(e) for e in status.get("variants") or []] or [{"name": n} for n in sorted(names)]
    changed = False
    for entry in entries:
        until = unhealthy.get(str(entry.get("name")))
        want = to_rfc3339(until) if until is not None else None
        if entry.get("unhealthyUntil") != want:
            changed = True
            if want is None:
                entry.pop("unhealthyUntil", None)
            else:
                entry["unhealthyUntil"] = want
    return entries if changed else None


def _with_field(
    entries: Sequence[Mapping[str, Any]],
    names: frozenset[str],
    key: str,
    values: Mapping[str, Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], bool]:
    """status.variants with ``key`` (``demoted``, ``reinstated``) set for the variants in
    ``values`` and cleared for the others, and whether any entry changed."""
    out = [dict(e) for e in entries] or [{"name": n} for n in sorted(names)]
    changed = False
    for entry in out:
        want = values.get(str(entry.get("name")))
        if entry.get(key) != want:
            changed = True
            if want is None:
                entry.pop(key, None)
            else:
                entry[key] = dict(want)
    return out, changed


def _live_quality_met(
    spec: GRMDeploymentSpec, demoted: Mapping[str, Mapping[str, Any]]
) -> tuple[str, str, str]:
    if demoted:
        parts = [f"{name}: {entry.get('message', 'demoted')}" for name, entry in sorted(demoted.items())]
        pinned = spec.precision.pinned_variant if spec.precision.policy == "Pinned" else None
        tail = f"; {pinned} is pinned and serves all the same" if pinned in demoted else ""
        return "False", "AgreementBelowFloor", "; ".join(parts) + tail
    if spec.precision.shadow.fraction <= 0.0:
        return "True", "NotWatched", "precision.shadow.fraction is 0: live agreement is not watched"
    return (
        "True",
        "AgreementAboveFloor",
        (f"no variant's live agreement with {spec.variants[0].name} is below precision.minQuality"),
    )


def _metrics_available(observed: Signals | None, error: str | None) -> tuple[str, str, str]:
    if error:
        return "False", "MetricsSourceFailed", error
    if observed is None or observed.known() == 0:
        return "False", "NoSamples", "no worker has reported metrics in the window"
    return "True", "MetricsFresh", f"{observed.pods_reporting} pod(s) reporting"


def _quality_floor_met(
    spec: GRMDeploymentSpec, active: str, status_variants: Sequence[Mapping[str, Any]] | None
) -> tuple[str, str, str]:
    floor = spec.precision.min_quality
    try:
        quality = spec.variant(active).quality
    except KeyError:
        return "Unknown", "UnknownVariant", f"active variant {active} is not in the spec"
    admitted = admitted_qualities(spec, status_variants)
    if active not in admitted:
        return (
            "False",
            "NotAdmitted",
            f"{active} is not admitted by the quality gate (measured quality pending or below "
            f"minQuality {floor:g})",
        )
    quality = admitted[active]
    if quality >= floor:
        return "True", "AboveFloor", f"{active} quality {quality:g} ≥ minQuality {floor:g}"
    return "False", "BelowFloor", f"{active} quality {quality:g} < minQuality {floor:g}"
