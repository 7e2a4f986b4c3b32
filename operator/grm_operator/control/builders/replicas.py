"""Replica counts of each variant's Deployment before the policy speaks, and the serving variant.

The policy decides replica counts (:mod:`grm_operator.handlers.autoscale`); these are the rules
for a new GRMDeployment (:func:`initial_replicas`), for each reconcile (:func:`plan_replicas`,
which keeps the policy's last word within the bounds; :func:`replicas_from_status` reads its
inputs from the GRMDeployment's status) and for which variant serves (:func:`active_variant`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grm_operator.api.models import GRMDeploymentSpec, Variant


def starting_variant(spec: GRMDeploymentSpec) -> Variant:
    """The pinned variant, else the best-quality variant at or above the quality floor."""
    if spec.precision.policy == "Pinned" and spec.precision.pinned_variant:
        return spec.variant(spec.precision.pinned_variant)
    admissible = spec.admissible_variants()
    # The models guarantee one admissible variant; the fallback only guards hand-built specs.
    return admissible[0] if admissible else spec.variants[0]


def _target_replicas(spec: GRMDeploymentSpec) -> int:
    """Replicas of the serving variant when nothing else is known: spec.scaling.replicas in Manual
    and External modes (clamped by the CRD's rule to the bounds), minReplicas in Auto mode."""
    scaling = spec.scaling
    if scaling.mode != "Auto" and scaling.replicas is not None:
        return scaling.replicas
    return scaling.min_replicas


def initial_replicas(spec: GRMDeploymentSpec) -> dict[str, int]:
    """Replicas of each variant for a new GRMDeployment: the starting variant gets
    minReplicas (spec.scaling.replicas in Manual/External mode), every other variant 0."""
    start = starting_variant(spec).name
    return {v.name: (_target_replicas(spec) if v.name == start else 0) for v in spec.variants}


def active_variant(spec: GRMDeploymentSpec, status_active: str | None) -> str:
    """The variant serving traffic: status.activeVariant while it is still listed, else
    :func:`starting_variant` (the pinned one with a Pinned policy).

    A pin on another variant than the serving one is reached through a switch, like the policy's
    own switches: the autoscaler surges the pinned variant next to the serving one and drains that
    one once the new pods are Ready (:func:`grm_operator.control.actuation.plan`), which then becomes
    status.activeVariant. Returning the pin at once would scale the serving variant to 0 while the
    pinned one still loads (30–120 s), and every request in between would fail."""
    names = {v.name for v in spec.variants}
    if status_active in names:
        return str(status_active)
    return starting_variant(spec).name


def plan_replicas(
    spec: GRMDeploymentSpec,
    active: str,
    live: Mapping[str, int],
    *,
    switching: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """Replicas to apply to each variant's Deployment.

    ``live`` holds spec.replicas of the variant Deployments that exist (the policy's last word);
    ``switching`` names the variants a switch in progress holds (the autoscaler owns those).

    * The variants of a switch in progress keep their live count, the active one included: a
      rolling switch hands the old (still active) variant's GPUs over down to 0 replicas, and
      clamping it back to minReplicas (or to Manual's spec.scaling.replicas) would take GPUs
      the new variant was just given.
    * Manual/External mode: the active variant runs spec.scaling.replicas; the others are scaled
      to 0.
    * Auto mode: the active variant keeps its live count clamped to [minReplicas, maxReplicas]
      (minReplicas when new); the others 0.
    """
    scaling = spec.scaling
    plan: dict[str, int] = {}
    for v in spec.variants:
        current = live.get(v.name)
        if v.name in switching and current is not None:
            plan[v.name] = current
        elif v.name == active:
            if scaling.mode != "Auto" and scaling.replicas is not None:
                plan[v.name] = scaling.replicas
            elif current is None:
                plan[v.name] = _target_replicas(spec)
            else:
                plan[v.name] = min(max(current, scaling.min_replicas), scaling.max_replicas)
        else:
            plan[v.name] = 0
    return plan


def replicas_from_status(
    spec: GRMDeploymentSpec, status: Mapping[str, Any], live: Mapping[str, int]
) -> dict[str, int]:
    """What the reconciler applies: :func:`plan_replicas` with the serving variant and the
    variants of a switch in progress read from ``status`` (its wire form, camelCase), and
    ``live`` the spec.replicas of the variant Deployments that exist."""
    switch = status.get("switch") or {}
    switching = frozenset(str(v) for v in (switch.get("from"), switch.get("to")) if v)
    active = active_variant(spec, status.get("activeVariant"))
    return plan_replicas(spec, active, live, switching=switching)
