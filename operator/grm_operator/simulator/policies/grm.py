"""``grm`` — our policy as the operator runs it: :func:`grm_operator.policy.decide` through the
operator's own adapter and actuation (:mod:`grm_operator.handlers.policy_adapter`,
:func:`grm_operator.control.actuation.plan`): switches surge within maxGPUs, drain, roll back on
timeout, exactly as the autoscaler applies them.

``grm-mpc``: the same adapter and actuation around the explicit optimisation of
:mod:`grm_operator.policy.mpc` (docs/policy.md §10), measured beside the rules, not the default.
"""

from __future__ import annotations

from typing import Any

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.control.actuation import VariantDeployment, plan
from grm_operator.handlers.policy_adapter import PodCounts, PolicyFn, decide_intent
from grm_operator.metrics.source import Reading
from grm_operator.policy import gate
from grm_operator.policy.decide import decide
from grm_operator.policy.mpc import decide_mpc
from grm_operator.simulator.controller import Command, FleetView
from grm_operator.simulator.fleet import Fleet
from grm_operator.simulator.policies.sizing import best_point, initial_replicas


class Grm:
    """Our policy as the operator runs it: the autoscaler's adapter (``decide_intent``, i.e.
    ``policy.decide``) and actuation (``plan``: switch surge within maxGPUs, drain, rollback,
    unhealthy backoff), with the GRMDeployment status carried between ticks."""

    name = "grm"

    def __init__(
        self, spec: GRMDeploymentSpec, measured: list[dict[str, Any]] | None = None, *, mpc: bool = False
    ) -> None:
        self.spec = spec
        self.name = "grm-mpc" if mpc else "grm"
        self.policy: PolicyFn = decide_mpc if mpc else decide
        self.period_s = parse_duration(spec.scaling.control_period)
        # The quality gate's verdicts (status.variants[]), which the adapter builds the ladder
        # from; none given: each variant measured at its declared quality.
        self.measured = measured if measured is not None else gate.declared_as_measured(spec)
        self.status: dict[str, Any] = {}

    def start(self, fleet: Fleet) -> Command:
        p = best_point(gate.ladder_spec(self.spec, self.measured))
        self.status = {"activeVariant": p.variant.name, "samples": p.samples, "variants": list(self.measured)}
        return Command(p.variant.name, initial_replicas(fleet, p), p.samples)

    def tick(self, view: FleetView) -> Command:
        obs = view.observation
        names = [v.name for v in self.spec.variants]
        # Pending pods with their ages (spec.scaling.pendingGrace) and Ready pods' cold starts, as
        # the autoscaler reads them.
        pods = {
            v: PodCounts(
                obs.ready.get(v, 0),
                obs.pending.get(v, 0),
                tuple(obs.pending_since.get(v, ())),
                tuple(obs.cold_starts.get(v, ())),
            )
            for v in names
        }
        deployments = {
            v: VariantDeployment(
                obs.desired.get(v, 0), obs.desired.get(v, 0), obs.ready.get(v, 0), obs.pending.get(v, 0)
            )
            for v in names
        }
        reading = Reading(obs.total, obs.variants) if obs.total is not None else None
        # As the operator's autoscaler (handlers.autoscale): while a switch is in progress only the
        # switch acts, and the policy is not consulted (its memory and the sample budget wait).
        intent = (
            None
            if self.status.get("switch")
            else decide_intent(
                spec=self.spec,
                status=self.status,
                reading=reading,
                pods=pods,
                deployments=deployments,
                now=view.now,
                policy=self.policy,
            )
        )
        step = plan(
            spec=self.spec,
            generation=1,
            status=self.status,
            deployments=deployments,
            observed=obs.total,
            metrics_error=None,
            intent=intent,
            now=view.now,
        )
        for key, value in step.status.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        scale = {v: step.scale.get(v, obs.desired.get(v, 0)) for v in names}
        samples = step.samples if step.samples is not None else int(self.status.get("samples", obs.samples))
        return Command(step.active, scale[step.active], samples, scale)
