"""The industry's autoscalers, from their algorithms, on the best admissible operating point
(variant × samples.max); they scale replicas only.

* ``static-peak`` — the most replicas of the best admissible variant the budget allows, always.
* ``hpa-gpu`` — Kubernetes HPA (autoscaling/v2) on GPU utilisation: every 15 s
  ``desired = ⌈current × util / 70 %⌉``, no change inside the 10 % tolerance, scale-down to the
  highest recommendation of the last 300 s (default stabilisation), scale-up at most
  max(4 pods, 100 %) per period (the default behaviour's policies).
* ``kpa`` — Knative's KPA (as AIBrix ships it) on concurrency: every 2 s, stable average over
  60 s and panic average over 6 s of in-flight sequences; ``desired = ⌈avg ÷ (70 % × target)⌉``;
  panic mode when the panic desire ≥ 2× the Ready pods (no scale-down for 60 s); scale-down at
  most halves. Target concurrency per replica = in-flight sequences at the replica's modelled
  SLO capacity (Little's law: capacity rate × modelled e2e).
* ``saturation`` — llm-d's workload-variant autoscaler in saturation mode: every 30 s, +1 replica
  when the mean KV-cache usage ≥ 0.8 or waiting sequences per replica ≥ 5; −1 when KV < 0.4 and
  nothing waits.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy.capacity import DEFAULT_TAIL, replica_capacity, variant_profile
from grm_operator.simulator.controller import Command, FleetView
from grm_operator.simulator.fleet import Fleet
from grm_operator.simulator.policies.sizing import (
    best_point,
    budget_replicas,
    initial_replicas,
    trace_workload,
)
from grm_worker.contract.perfmodel import steady_state


class StaticPeak:
    """The budget's worth of the best variant, all the time."""

    name = "static-peak"
    period_s = 60.0

    def __init__(self, spec: GRMDeploymentSpec) -> None:
        p = best_point(spec)
        self.command = Command(p.variant.name, budget_replicas(spec, p.variant.name), p.samples)

    def start(self, fleet: Fleet) -> Command:
        return self.command

    def tick(self, view: FleetView) -> Command:
        return self.command


class _SingleVariant:
    """Shared by the replica-only baselines: the best point, bounds, the current count."""

    name = ""
    period_s = 15.0

    def __init__(self, spec: GRMDeploymentSpec) -> None:
        self.spec = spec
        self.point = best_point(spec)
        self.variant = self.point.variant.name
        self.cap = budget_replicas(spec, self.variant)

    def start(self, fleet: Fleet) -> Command:
        return Command(self.variant, initial_replicas(fleet, self.point), self.point.samples)

    def command(self, replicas: int) -> Command:
        bounded = min(max(replicas, self.spec.scaling.min_replicas, 1), self.cap)
        return Command(self.variant, bounded, self.point.samples)


class HpaGpu(_SingleVariant):
    """Kubernetes HPA on GPU utilisation (see module doc)."""

    name = "hpa-gpu"
    period_s = 15.0
    TARGET = 0.70
    TOLERANCE = 0.10
    DOWN_WINDOW_S = 300.0

    def __init__(self, spec: GRMDeploymentSpec) -> None:
        super().__init__(spec)
        self.recs: deque[tuple[float, int]] = deque()

    def tick(self, view: FleetView) -> Command:
        obs = view.observation
        current = obs.desired.get(self.variant, 0)
        util = obs.total.gpu_util if obs.total is not None else None
        if util is None or obs.ready.get(self.variant, 0) == 0:
            return self.command(current)
        ratio = util / self.TARGET
        rec = current if abs(ratio - 1.0) <= self.TOLERANCE else math.ceil(current * ratio)
        self.recs.append((view.now, rec))
        while self.recs and self.recs[0][0] < view.now - self.DOWN_WINDOW_S:
            self.recs.popleft()
        if rec > current:
            desired = min(rec, max(current + 4, 2 * current))
        else:
            desired = min(current, max(r for _, r in self.recs))
        return self.command(desired)


class Kpa(_SingleVariant):
    """Knative / AIBrix KPA on concurrency (see module doc)."""

    name = "kpa"
    period_s = 2.0
    STABLE_S = 60.0
    PANIC_S = 6.0
    PANIC_THRESHOLD = 2.0
    UTILISATION = 0.70

    def __init__(self, spec: GRMDeploymentSpec) -> None:
        super().__init__(spec)
        self.samples: deque[tuple[float, float]] = deque()
        self.panic_until: float | None = None
        self.target = 1.0

    def start(self, fleet: Fleet) -> Command:
        work = trace_workload(fleet)
        rate = replica_capacity(self.spec, self.point.variant, work, 1.0, DEFAULT_TAIL)
        state = steady_state(
            variant_profile(self.point.variant), rate, work.prompt_tokens, work.output_tokens
        )
        # In-flight sequences of a replica at its SLO capacity (Little's law).
        self.target = max(1.0, rate * state.e2e_s) if state.feasible else max(1.0, rate)
        return super().start(fleet)

    def tick(self, view: FleetView) -> Command:
        now = view.now
        obs = view.observation
        current = obs.desired.get(self.variant, 0)
        ready = max(1, obs.ready.get(self.variant, 0))
        self.samples.append((now, view.concurrency))
        while self.samples and self.samples[0][0] <= now - self.STABLE_S:
            self.samples.popleft()
        stable = float(np.mean([c for _, c in self.samples]))
        panic_vals = [c for t, c in self.samples if t > now - self.PANIC_S]
        panic = float(np.mean(panic_vals)) if panic_vals else stable
        per_pod = self.UTILISATION * self.target
        want_stable = math.ceil(stable / per_pod)
        want_panic = math.ceil(panic / per_pod)
        if want_panic / ready >= self.PANIC_THRESHOLD:
            self.panic_until = now + self.STABLE_S
        if self.panic_until is not None and now < self.panic_until:
            desired = max(current, want_panic)
        else:
            self.panic_until = None
            desired = max(want_stable, math.ceil(current / 2))
        return self.command(desired)


class Saturation(_SingleVariant):
    """llm-d WVA saturation scaling: ±1 replica per 30 s cycle (see module doc)."""

    name = "saturation"
    period_s = 30.0
    KV_HIGH = 0.8
    QUEUE_HIGH = 5.0
    KV_LOW = 0.4

    def tick(self, view: FleetView) -> Command:
        obs = view.observation
        current = obs.desired.get(self.variant, 0)
        ready = obs.ready.get(self.variant, 0)
        total = obs.total
        if total is None or ready == 0 or ready < current:
            return self.command(current)  # wait for the last step to land
        kv = total.kv_cache_usage or 0.0
        queue = (total.waiting or 0.0) / ready
        if kv >= self.KV_HIGH or queue >= self.QUEUE_HIGH:
            return self.command(current + 1)
        if kv < self.KV_LOW and (total.waiting or 0.0) == 0:
            return self.command(current - 1)
        return self.command(current)
