"""What the simulated controllers share: the best admissible operating point, how many replicas
the budget allows, the trace's mean workload, and the warm start every adaptive one begins with.
"""

from __future__ import annotations

import math

import numpy as np

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy.capacity import (
    DEFAULT_TAIL,
    OperatingPoint,
    Workload,
    operating_points,
    replica_capacity,
)
from grm_operator.simulator.fleet import Fleet


def best_point(spec: GRMDeploymentSpec) -> OperatingPoint:
    """The best admissible operating point (what the single-variant baselines run)."""
    return operating_points(spec)[0]


def budget_replicas(spec: GRMDeploymentSpec, variant: str) -> int:
    """Most replicas of ``variant`` maxReplicas and maxGPUs allow."""
    return max(1, min(spec.scaling.max_replicas, spec.max_gpus() // spec.variant(variant).gpus_per_replica))


def trace_workload(fleet: Fleet, start: float = 0.0, stop: float = math.inf) -> Workload:
    """Mean prompt and output tokens of the requests arriving in ``[start, stop)``."""
    trace = fleet.config.trace
    mask = (trace.times >= start) & (trace.times < stop)
    if not mask.any():
        mask = np.ones_like(trace.times, dtype=bool)
    return Workload(float(trace.prompt[mask].mean()), float(trace.output[mask].mean()))


#: The traces are cuts of running services: the fleet starts warm, sized by the prior for the mean
#: load of the first minutes (conv ramps from 0.4 to 2.5 requests/s in its first 3 minutes at
#: rate ×0.5, faster than a 90 s cold start could follow).
WARM_START_S = 300.0


def initial_replicas(fleet: Fleet, point: OperatingPoint) -> int:
    """Replicas the first minutes need by the prior (every adaptive policy starts warm with them)."""
    spec = fleet.spec
    trace = fleet.config.trace
    span = min(WARM_START_S, max(trace.duration_s, 1.0))
    rate = float((trace.times < span).sum()) / span * point.samples
    cap = replica_capacity(spec, point.variant, trace_workload(fleet, 0.0, span), 1.0, DEFAULT_TAIL)
    need = math.ceil(rate / cap) if cap > 0 else 1
    return min(max(need, spec.scaling.min_replicas, 1), budget_replicas(spec, point.variant.name))
