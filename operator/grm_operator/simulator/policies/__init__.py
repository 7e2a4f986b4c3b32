"""The controllers compared by the benchmark: our policy and the industry's, from their algorithms.

* :mod:`.grm` — ``grm``, our policy through the operator's own adapter and actuation, and
  ``grm-mpc``, the explicit optimisation (:mod:`grm_operator.policy.mpc`) through the same;
* :mod:`.baselines` — ``static-peak``, ``hpa-gpu`` (Kubernetes HPA), ``kpa`` (Knative / AIBrix)
  and ``saturation`` (llm-d's workload-variant autoscaler), each on the best admissible point;
* :mod:`.oracle` — ``oracle-max``, ``oracle`` and ``oracle-cold``: bounds computed with hindsight
  by :mod:`grm_operator.simulator.hindsight` (not controllers: :func:`make_controller` refuses them);
* :mod:`.sizing` — what they share: the best admissible point, the budget's replicas, the
  trace's workload and the warm start.

Each module's docstring gives its controllers' parameters. :func:`make_controller` builds one by
its name in :data:`POLICIES`.
"""

from __future__ import annotations

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.simulator.policies.baselines import HpaGpu, Kpa, Saturation, StaticPeak
from grm_operator.simulator.policies.grm import Grm
from grm_operator.simulator.policies.oracle import BOUNDS

__all__ = ["BOUNDS", "POLICIES", "Policy", "make_controller"]

POLICIES = ("grm", "grm-mpc", "static-peak", "hpa-gpu", "kpa", "saturation", *BOUNDS)

Policy = Grm | StaticPeak | HpaGpu | Kpa | Saturation


def make_controller(name: str, spec: GRMDeploymentSpec) -> Policy:
    """The controller called ``name`` (one of :data:`POLICIES` but the :data:`BOUNDS`)."""
    if name == "grm":
        return Grm(spec)
    if name == "grm-mpc":
        return Grm(spec, mpc=True)
    if name == "static-peak":
        return StaticPeak(spec)
    if name == "hpa-gpu":
        return HpaGpu(spec)
    if name == "kpa":
        return Kpa(spec)
    if name == "saturation":
        return Saturation(spec)
    if name in BOUNDS:
        raise ValueError(f"{name} is a bound computed with hindsight (simulator.hindsight), not a controller")
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
