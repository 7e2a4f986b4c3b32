"""Hindsight bounds: the best plans any controller could follow, found by optimisation over the whole
trace with the simulator in the loop.

A *plan* gives each minute of the trace an operating point (variant × sample budget) and a replica
count, under the policy's own constraints: every point admissible (quality ≥ minQuality), at most
maxReplicas and maxGPUs, and a variant switch only when the new replicas fit the GPU budget beside
the old ones (the surge every switch needs). On a cluster with fewer GPUs (``SimConfig.cluster``,
:mod:`.cluster`) the GPU budget is the most the cluster ever has (``SimConfig.gpu_ceiling``), and
every plan is replayed on that cluster: with a node autoscaler the cold bound's replicas beyond
the cluster's GPUs wait for their node as any policy's do (it asks for them a node delay earlier),
the instant bounds get nodes at once. Three bounds come out of it:

* ``oracle-max`` — the highest SLO attainment any plan reaches under the caps;
* ``oracle`` — the fewest GPU-hours of a plan reaching ``target = min(99 %, oracle-max − 0.5 pt)``,
  replicas starting instantly;
* ``oracle-cold`` — the same paying cold starts: a replica needed from minute ``m`` is requested a
  cold start earlier (rounded up to the 15-s tick) and its GPUs count from the request.

Method (docs/benchmark.md §Bounds):

1. **Miss table.** For each variant at its fewest admissible samples (fewer samples are less work
   at the same GPUs, so a variant's other points never serve a request this one misses) and each
   replica count ``n``, ``n`` fresh replicas of the simulated truth (model error and jitter
   included) serve the whole trace round-robin; ``miss[m, p, n]`` counts the requests arriving in
   minute ``m`` outside the SLO (so a minute's count includes the backlog its past left at the
   same ``n``), and the run records whether the fleet *settled* at each minute's end (nothing
   waiting, nothing in flight older than half the e2e target). Only counts inside a window from
   the policy's capacity model are simulated (:meth:`MissTable._window`).
2. **Dynamic programme.** State = (point, replicas) per minute and misses spent so far (in buckets
   of ``q`` requests, rounded up); a step costs ``n · gpus · 60 s`` plus, with cold starts, the
   lead time of every replica added (all of them on a switch); a fleet that did not settle keeps
   its state into the next minute. The DP returns the cheapest plan whose table misses stay within
   the budget — optimal for the table.
3. **Refinement by simulation.** The plan is replayed by the real fleet simulator
   (:class:`PlanController`), where queues carry over minute boundaries and replicas drain. If the
   simulated attainment falls short of the target the budget shrinks by the shortfall (and grows
   by half a surplus when it overshoots), bisecting between the budgets found feasible and not;
   the cheapest simulated plan reaching the target is the bound (at most :data:`REFINE_SIMS` runs).
   ``oracle`` also tries the ``oracle-cold`` plan with instant starts, so ``oracle ≤ oracle-cold``
   holds by construction.

Requests that no admissible point serves inside the SLO even alone on an idle replica (no jitter)
are counted (:attr:`Bounds.unservable`): they are misses for every policy and the bound alike.

The optimality gap — the plan's GPU-hours over the cheapest per-minute plan an exhaustive search
with the simulator finds — is measured on small cases by ``tests/unit/grm_operator/simulator/
test_hindsight.py`` (and reported in docs/benchmark.md).
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from grm_operator.api.models import SLO, GRMDeploymentSpec
from grm_operator.policy.capacity import (
    OperatingPoint,
    Workload,
    operating_points,
    replica_capacity,
    variant_profile,
)
from grm_operator.simulator.controller import Command, FleetView
from grm_operator.simulator.engine import Group, Replica, StepSample
from grm_operator.simulator.fleet import Fleet, SimConfig, replica_cold_start_s
from grm_operator.simulator.results import RunResult

#: The plan's step: one operating point and replica count per minute.
PLAN_PERIOD_S = 60.0
#: The plan controller's tick: cold-start requests are placed on this grid.
TICK_S = 15.0
#: Largest number of miss buckets the DP tracks (the bucket size grows with the budget).
MAX_BUCKETS = 300
#: Most simulations of the whole trace spent refining one bound.
REFINE_SIMS = 5
#: ``target = min(TARGET_CAP, oracle-max − TARGET_MARGIN)``.
TARGET_CAP = 0.99
TARGET_MARGIN = 0.005

BOUND_NAMES = ("oracle-max", "oracle", "oracle-cold")
#: A fleet has settled at a minute's end when nothing in flight is older than this share of the e2e
#: target (of DEFAULT_AGE_S without one): 0.5 × 60 s = 30 s, beyond a 1000-token critique's 22 s.
SETTLED_AGE = 0.5
DEFAULT_AGE_S = 60.0
#: "Run to completion": a clock no request outlives (finite, as the engine's step arithmetic needs).
FOREVER = 1e12


@dataclass(frozen=True)
class Step:
    """One minute of a plan."""

    variant: str
    samples: int
    replicas: int


@dataclass
class Bound:
    """A bound's plan and its simulated run."""

    name: str
    plan: list[Step]
    result: RunResult
    #: Runs of the whole trace the refinement spent on it.
    simulations: int = 0


@dataclass
class Bounds:
    """The three bounds of one setting, with what they share."""

    target: float
    unservable: int
    total: int
    bounds: dict[str, Bound] = field(default_factory=dict)

    def info(self) -> dict[str, float | int]:
        """What ``--json`` reports beside the policies."""
        out: dict[str, float | int] = {
            "target": round(self.target, 6),
            "unservable": self.unservable,
            "total": self.total,
        }
        for name, bound in self.bounds.items():
            out[f"{name}_simulations"] = bound.simulations
        return out


# --- the plan's controller ---------------------------------------------------------------------------


class PlanController:
    """Replays a plan in the fleet simulator. With ``cold`` every replica a minute needs is
    requested one cold start (rounded up to the tick) before the minute, as the DP charged it."""

    period_s = TICK_S

    def __init__(
        self,
        name: str,
        spec: GRMDeploymentSpec,
        plan: Sequence[Step],
        *,
        cold: bool,
        node_delay_s: float = 0.0,
        cold_start_s: float | None = None,
    ) -> None:
        if not plan:
            raise ValueError("empty plan")
        self.name = name
        self.spec = spec
        self.plan = list(plan)
        self.cold = cold
        # The replicas' cold start as the fleet times it (the run's, else the estimate).
        self.lead = {
            v.name: lead_s(replica_cold_start_s(spec, v, cold_start_s)) if cold else 0.0
            for v in spec.variants
        }
        #: With a node autoscaler: replicas the cluster has no GPU for are asked for this much
        #: earlier again, so that their node is there when their cold start begins.
        self.node_lead = math.ceil(node_delay_s / TICK_S - 1e-9) * TICK_S if cold else 0.0
        self.floor = {v.name: min_samples(spec, v.name) for v in spec.variants}
        self.fleet: Fleet | None = None

    def _cluster_short(self, scale: dict[str, int], step: Step) -> bool:
        """Whether ``step``'s replicas beside ``scale``'s other variants need GPUs the cluster has
        neither now nor on the way (a node to wait for)."""
        cluster = self.fleet.cluster if self.fleet is not None else None
        if cluster is None:
            return False
        gpus = {v.name: v.gpus_per_replica for v in self.spec.variants}
        wanted = step.replicas * gpus[step.variant] + sum(
            n * gpus[v] for v, n in scale.items() if v != step.variant
        )
        return wanted > cluster.gpus + sum(g for _, g in cluster.coming)

    def _minute(self, now: float) -> int:
        return min(int(now // PLAN_PERIOD_S), len(self.plan) - 1)

    def command(self, now: float) -> Command:
        m = self._minute(now)
        cur = self.plan[m]
        scale = {v.name: 0 for v in self.spec.variants}
        scale[cur.variant] = cur.replicas
        if self.cold:
            for later in range(m + 1, len(self.plan)):
                start = later * PLAN_PERIOD_S
                step = self.plan[later]
                if start - now > max(self.lead.values()) + self.node_lead:
                    break
                ahead = start - now
                lead = self.lead[step.variant]
                if ahead <= lead + 1e-9 or (
                    ahead <= lead + self.node_lead + 1e-9 and self._cluster_short(scale, step)
                ):
                    scale[step.variant] = max(scale[step.variant], step.replicas)
        # While two variants serve, a request gets samples admissible on both.
        samples = max(self.floor[v] for v, n in scale.items() if n > 0)
        return Command(cur.variant, cur.replicas, max(samples, cur.samples), scale)

    def start(self, fleet: Fleet) -> Command:
        self.fleet = fleet
        first = self.plan[0]
        return Command(first.variant, first.replicas, first.samples)

    def tick(self, view: FleetView) -> Command:
        return self.command(view.now)


def lead_s(cold_start_s: float) -> float:
    """How long before its minute a replica is requested: the cold start on the tick grid."""
    return math.ceil(cold_start_s / TICK_S - 1e-9) * TICK_S


def min_samples(spec: GRMDeploymentSpec, variant: str) -> int:
    """The fewest samples admissible on ``variant`` (its cheapest point)."""
    points = operating_points(spec, variant)
    if not points:
        return spec.scoring.samples.max
    return min(p.samples for p in points)


def cheapest_points(spec: GRMDeploymentSpec) -> list[OperatingPoint]:
    """Per admissible variant its fewest-samples point (the only ones a bound needs)."""
    out: list[OperatingPoint] = []
    for v in spec.variants:
        points = operating_points(spec, v.name)
        if points:
            out.append(min(points, key=lambda p: p.samples))
    if not out:
        raise ValueError("no admissible operating point: minQuality excludes every variant")
    return out


def budget(spec: GRMDeploymentSpec, point: OperatingPoint, gpus: int | None = None) -> int:
    """Most replicas of the point's variant maxReplicas and ``gpus`` (default maxGPUs) allow."""
    ceiling = spec.max_gpus() if gpus is None else gpus
    return max(1, min(spec.scaling.max_replicas, ceiling // point.variant.gpus_per_replica))


# --- the miss table ----------------------------------------------------------------------------------


Targets = tuple[float | None, float | None, float | None]


def slo_targets(slo: SLO) -> Targets:
    """(TTFT, e2e, ITL) targets in seconds, parsed once."""
    return slo.ttft_p95_s, slo.e2e_p95_s, slo.itl_p95_s


def meets(targets: Targets, g: Group) -> bool:
    """Whether a finished group met every SLO target (as :mod:`.results` judges it)."""
    ttft, e2e, itl = targets
    if g.first_token is None or g.finished is None:
        return False
    if ttft is not None and g.first_token - g.arrival > ttft:
        return False
    if e2e is not None and g.finished - g.arrival > e2e:
        return False
    return not (itl is not None and g.output > 1 and g.decode_s / (g.output - 1) > itl)


class MissTable:
    """``miss[m, p, n]`` (module doc, step 1), one whole-trace run per (point, replicas) computed on
    demand and memoised."""

    def __init__(self, config: SimConfig, points: Sequence[OperatingPoint]) -> None:
        self.config = config
        self.spec = config.spec
        self.points = list(points)
        trace = config.trace
        self.minutes = max(1, math.ceil((trace.duration_s + 1e-9) / PLAN_PERIOD_S))
        self.minute_of = np.minimum((trace.times // PLAN_PERIOD_S).astype(np.int64), self.minutes - 1)
        self.truth = [
            variant_profile(p.variant).scaled(config.model_error)
            if config.model_error != 1.0
            else variant_profile(p.variant)
            for p in self.points
        ]
        #: The GPUs a plan may hold: maxGPUs, or fewer when the cluster never has them.
        self.gpus = config.gpu_ceiling()
        self.caps = [budget(self.spec, p, self.gpus) for p in self.points]
        #: Per point: how long before its minute a replica is asked for (its cold start, on the tick).
        self.lead = [
            lead_s(replica_cold_start_s(self.spec, p.variant, config.cold_start_s)) for p in self.points
        ]
        self.shared = self.spec.scoring.sampling == "SharedPrefill"
        self.settle_horizon = SETTLED_AGE * (self.spec.slo.e2e_p95_s or DEFAULT_AGE_S)
        self._memo: dict[tuple[int, int], npt.NDArray[np.int64]] = {}
        self._clean: dict[tuple[int, int], npt.NDArray[np.bool_]] = {}
        self.evaluations = 0
        self.window = [self._window(p) for p in range(len(self.points))]

    def _window(self, p: int) -> tuple[int, int]:
        """Replica counts worth simulating for point ``p``: from half the fewest the quietest minute
        needs to twice the most the busiest 15 s need (+1), by the policy's capacity model on the
        trace's mean request (no tail margin). Below, every request counts as missed (a fleet
        that small is overloaded all along); above, a count misses what the window's top does."""
        trace = self.config.trace
        point = self.points[p]
        cap = self.caps[p]
        if len(trace) == 0:
            return 1, 1
        workload = Workload(float(trace.prompt.mean()), float(trace.output.mean()))
        tail = {"ttft": 1.0, "itl": 1.0, "e2e": 1.0}
        seq_capacity = replica_capacity(self.spec, point.variant, workload, self.config.model_error, tail)
        if seq_capacity <= 0:
            return 1, cap
        per_minute = self.requests() / PLAN_PERIOD_S * point.samples
        quietest = float(per_minute.min()) / seq_capacity
        edges = np.arange(0.0, trace.duration_s + 15.0, 15.0)
        counts, _ = np.histogram(trace.times, bins=edges)
        busiest = float(counts.max()) / 15.0 * point.samples / seq_capacity
        low = max(1, self.spec.scaling.min_replicas, math.floor(0.5 * quietest))
        high = max(low, min(cap, math.ceil(2.0 * busiest) + 1))
        return min(low, cap), high

    def requests(self) -> npt.NDArray[np.int64]:
        """Requests arriving in each minute."""
        return np.bincount(self.minute_of, minlength=self.minutes).astype(np.int64)

    def chain(self, p: int, n: int) -> npt.NDArray[np.int64]:
        """Misses per arrival minute when ``n`` replicas of point ``p`` serve the whole trace
        (round-robin): a minute's count includes the backlog its past left at the same ``n``."""
        key = (p, n)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        low, high = self.window[p]
        if n < low:
            out = self.requests()
            self._memo[key] = out
            self._clean[key] = np.zeros(self.minutes, dtype=bool)
            return out
        if high < n < self.caps[p]:
            out = self.chain(p, high)
            self._memo[key] = out
            self._clean[key] = self._clean[(p, high)]
            return out
        self.evaluations += 1
        trace = self.config.trace
        point = self.points[p]
        seed = zlib.crc32(f"{self.config.seed}/{p}/{n}".encode())
        reps = [
            Replica(self.truth[p], random.Random(seed + j), jitter=self.config.jitter, clock=0.0)
            for j in range(n)
        ]
        done: list[Group] = []
        steps: list[StepSample] = []
        samples = point.samples
        shared = self.shared
        clean = np.ones(self.minutes, dtype=bool)
        boundary = PLAN_PERIOD_S
        for i, (t, prompt, output) in enumerate(
            zip(trace.times.tolist(), trace.prompt.tolist(), trace.output.tolist(), strict=True)
        ):
            while t >= boundary:
                clean[int(boundary // PLAN_PERIOD_S) - 1] = self._settled(reps, boundary, done, steps)
                boundary += PLAN_PERIOD_S
            rep = reps[i % n]
            rep.advance(t, done, steps)
            rep.submit(Group(i, t, prompt, output, samples, shared, 0.0), t)
            if len(steps) > 256:
                steps.clear()
        for rep in reps:
            rep.advance(FOREVER, done, steps)
        slo = slo_targets(self.spec.slo)
        met = np.zeros(self.minutes, dtype=np.int64)
        minute_of = self.minute_of
        for g in done:
            if meets(slo, g):
                met[minute_of[g.index]] += 1
        out = self.requests() - met
        self._memo[key] = out
        self._clean[key] = clean
        return out

    def _settled(
        self, reps: list[Replica], boundary: float, done: list[Group], steps: list[StepSample]
    ) -> bool:
        """Whether the replicas leave a minute without a backlog: nothing waits for admission and
        nothing in flight is older than :data:`SETTLED_AGE` of the e2e target. Only then may the next
        minute run another fleet: its table counts assume the past ran the same one."""
        horizon = self.settle_horizon
        for rep in reps:
            rep.advance(boundary, done, steps)
            if rep.waiting:
                return False
            if any(boundary - g.arrival > horizon for g in rep.running):
                return False
        return True

    def settled(self, p: int, n: int) -> npt.NDArray[np.bool_]:
        """Per minute: whether ``n`` replicas of point ``p`` end it without a backlog."""
        self.chain(p, n)
        return self._clean[(p, n)]

    def miss(self, m: int, p: int, n: int) -> int:
        return int(self.chain(p, n)[m])


def unservable(config: SimConfig, points: Sequence[OperatingPoint]) -> int:
    """Requests that no admissible point serves inside the SLO alone on an idle replica (no jitter)."""
    trace = config.trace
    slo = slo_targets(config.spec.slo)
    shared = config.spec.scoring.sampling == "SharedPrefill"
    truths = [
        variant_profile(p.variant).scaled(config.model_error)
        if config.model_error != 1.0
        else variant_profile(p.variant)
        for p in points
    ]
    memo: dict[tuple[int, int], bool] = {}
    count = 0
    for prompt, output in zip(trace.prompt.tolist(), trace.output.tolist(), strict=True):
        key = (prompt, output)
        ok = memo.get(key)
        if ok is None:
            ok = False
            for point, truth in zip(points, truths, strict=True):
                rep = Replica(truth, random.Random(0), jitter=0.0)
                g = Group(0, 0.0, prompt, output, point.samples, shared, 0.0)
                rep.submit(g, 0.0)
                done: list[Group] = []
                rep.advance(FOREVER, done, [])
                if done and meets(slo, done[0]):
                    ok = True
                    break
            memo[key] = ok
        count += not ok
    return count


# --- the dynamic programme ---------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """A (point, replicas) choice of one minute."""

    point: int
    replicas: int


def solve(
    table: MissTable,
    miss_budget: int,
    *,
    cold: bool,
) -> list[State] | None:
    """The cheapest plan whose table misses stay within ``miss_budget`` (module doc, step 2), or
    None when no plan does."""
    spec = table.spec
    points = table.points
    states = [State(p, n) for p in range(len(points)) for n in range(1, table.caps[p] + 1)]
    states = [s for s in states if s.replicas >= spec.scaling.min_replicas]
    size = len(states)
    gpus = np.array([points[s.point].variant.gpus_per_replica for s in states], dtype=np.float64)
    reps = np.array([s.replicas for s in states], dtype=np.float64)
    step_cost = reps * gpus * PLAN_PERIOD_S
    lead = np.array(
        [table.lead[s.point] if cold else 0.0 for s in states],
        dtype=np.float64,
    )
    var = np.array([s.point for s in states])
    same = var[:, None] == var[None, :]
    # Transition s → s': a switch needs both fleets inside maxGPUs (the surge); added replicas pay
    # their lead time (cold starts) in GPU-seconds.
    surge_ok = (reps * gpus)[:, None] + (reps * gpus)[None, :] <= table.gpus
    added = np.where(same, np.maximum(0.0, reps[None, :] - reps[:, None]), reps[None, :])
    trans = np.where(same | surge_ok, added * gpus[None, :] * lead[None, :], np.inf)
    grows = added > 0

    q = max(1, math.ceil(max(miss_budget, 1) / MAX_BUCKETS))
    nb = miss_budget // q + 1

    # miss[m, s] for every minute and state (one whole-trace run per state, memoised).
    table_miss = np.stack([table.chain(s.point, s.replicas) for s in states], axis=1)
    miss_buckets = -(-table_miss // q)  # rounded up
    settled = np.stack([table.settled(s.point, s.replicas) for s in states], axis=1)

    def misses(m: int) -> npt.NDArray[np.int64]:
        return np.asarray(miss_buckets[m])

    b_idx = np.arange(nb)
    mb = misses(0)
    dp = np.where(b_idx[None, :] >= mb[:, None], step_cost[:, None], np.inf)
    back: list[npt.NDArray[np.int32]] = []
    for m in range(1, table.minutes):
        t = trans
        if cold:
            # A replica needed at minute m is asked for lead seconds earlier; before the trace
            # began nothing could be asked for (the warm start is minute 0's fleet).
            early = (m * PLAN_PERIOD_S < lead)[None, :] & grows
            t = np.where(early, np.inf, trans)
        # A fleet that left a backlog at the end of minute m − 1 keeps its shape for minute m.
        unsettled = ~settled[m - 1]
        t = np.where(unsettled[:, None] & ~np.eye(size, dtype=bool), np.inf, t)
        # best[s', b] = min_s dp[s, b] + t[s, s']
        total = dp[:, None, :] + t[:, :, None]
        arg = np.argmin(total, axis=0).astype(np.int32)
        best = np.take_along_axis(total, arg[None, :, :], axis=0)[0]
        mb = misses(m)
        shifted = np.full((size, nb), np.inf)
        argshift = np.zeros((size, nb), dtype=np.int32)
        for i in range(size):
            k = int(mb[i])
            if k < nb:
                shifted[i, k:] = best[i, : nb - k]
                argshift[i, k:] = arg[i, : nb - k]
        dp = shifted + step_cost[:, None]
        back.append(argshift)
        if not np.isfinite(dp[:, -1]).any():
            return None
    last = int(np.argmin(dp[:, -1]))
    if not math.isfinite(float(dp[last, -1])):
        return None
    # Backtrack: state s at minute m came from back[m-1][s, b] at budget b − misses(m, s).
    plan = [states[last]]
    b = nb - 1
    s = last
    for m in range(table.minutes - 1, 0, -1):
        prev = int(back[m - 1][s, b])
        b -= int(miss_buckets[m, s])
        s = prev
        plan.append(states[s])
    plan.reverse()
    return plan


def to_steps(table: MissTable, plan: Sequence[State]) -> list[Step]:
    return [Step(table.points[s.point].variant.name, table.points[s.point].samples, s.replicas) for s in plan]


def simulate(config: SimConfig, name: str, steps: Sequence[Step], *, cold: bool) -> RunResult:
    """The plan replayed by the fleet simulator (instant starts unless ``cold``)."""
    delay = config.cluster.node_delay_s if config.cluster is not None and config.cluster.autoscaled else None
    controller = PlanController(
        name, config.spec, steps, cold=cold, node_delay_s=delay or 0.0, cold_start_s=config.cold_start_s
    )
    return Fleet(config, controller, cold_start=cold).run()


# --- the bounds --------------------------------------------------------------------------------------


def _max_plan(table: MissTable) -> list[State]:
    """Per minute the point that misses fewest at its full budget (ties: fewer GPUs)."""
    plan: list[State] = []
    for m in range(table.minutes):
        best = min(
            range(len(table.points)),
            key=lambda p: (
                table.miss(m, p, table.caps[p]),
                table.caps[p] * table.points[p].variant.gpus_per_replica,
            ),
        )
        plan.append(State(best, table.caps[best]))
    return plan


def _fewest(
    config: SimConfig,
    table: MissTable,
    name: str,
    target: float,
    *,
    cold: bool,
    fallback: Bound,
) -> Bound:
    """The cheapest simulated plan reaching ``target`` (module doc, step 3)."""
    total = len(config.trace)
    allowed = math.floor(total * (1.0 - target) + 1e-9)
    feasible_budget = -1  # largest budget whose simulated plan reached the target
    infeasible_budget = None  # smallest budget whose plan did not
    best: Bound | None = None
    tried: dict[int, RunResult] = {}
    budget_now = allowed
    sims = 0
    limit = 2 * allowed + 10
    rounds = 0
    while sims < REFINE_SIMS and rounds < 4 * REFINE_SIMS:
        rounds += 1
        states = solve(table, max(0, budget_now), cold=cold)
        if states is None:  # the table allows no plan this tight: loosen
            infeasible_budget = (
                budget_now if infeasible_budget is None else min(infeasible_budget, budget_now)
            )
            if budget_now > limit:
                break
            budget_now = budget_now * 2 + 1
            continue
        steps = to_steps(table, states)
        result = simulate(config, name, steps, cold=cold)
        sims += 1
        tried[budget_now] = result
        missed = total - round(result.slo_attainment * total)
        if result.slo_attainment >= target - 1e-12:
            if best is None or result.gpu_hours < best.result.gpu_hours:
                best = Bound(name, steps, result)
            feasible_budget = max(feasible_budget, budget_now)
            surplus = allowed - missed
            nxt = budget_now + max(1, surplus // 2)
        else:
            infeasible_budget = (
                budget_now if infeasible_budget is None else min(infeasible_budget, budget_now)
            )
            shortfall = missed - allowed
            nxt = budget_now - max(1, shortfall)
        if infeasible_budget is not None and nxt >= infeasible_budget:
            nxt = (max(feasible_budget, 0) + infeasible_budget) // 2
        if feasible_budget >= 0 and nxt <= feasible_budget:
            nxt = (feasible_budget + (infeasible_budget if infeasible_budget is not None else nxt)) // 2
        if nxt < 0 or nxt in tried:
            break
        budget_now = nxt
    if best is None:
        best = Bound(name, fallback.plan, simulate(config, name, fallback.plan, cold=cold))
        sims += 1
    best.simulations = sims
    return best


def hindsight_bounds(config: SimConfig, names: Sequence[str] = BOUND_NAMES) -> Bounds:
    """``oracle-max``, ``oracle`` and ``oracle-cold`` of one setting (module doc)."""
    points = cheapest_points(config.spec)
    table = MissTable(config, points)
    max_states = _max_plan(table)
    max_steps = to_steps(table, max_states)
    max_bound = Bound("oracle-max", max_steps, simulate(config, "oracle-max", max_steps, cold=False), 1)
    # The best single point at its budget all along, in case switching between minutes cost more
    # than it saved.
    static_best = min(
        range(len(points)),
        key=lambda p: (sum(table.miss(m, p, table.caps[p]) for m in range(table.minutes)), p),
    )
    static_steps = [
        Step(points[static_best].variant.name, points[static_best].samples, table.caps[static_best])
    ]
    static_steps *= table.minutes
    if static_steps != max_steps:
        static = simulate(config, "oracle-max", static_steps, cold=False)
        max_bound.simulations += 1
        if static.slo_attainment > max_bound.result.slo_attainment:
            max_bound = Bound("oracle-max", static_steps, static, max_bound.simulations)
    target = min(TARGET_CAP, max_bound.result.slo_attainment - TARGET_MARGIN)
    out = Bounds(target=target, unservable=unservable(config, points), total=len(config.trace))
    if "oracle-max" in names:
        out.bounds["oracle-max"] = max_bound
    need_cold = "oracle-cold" in names
    cold = _fewest(config, table, "oracle-cold", target, cold=True, fallback=max_bound) if need_cold else None
    if "oracle" in names or need_cold:
        instant = _fewest(config, table, "oracle", target, cold=False, fallback=max_bound)
        if cold is not None and cold.result.gpu_hours < instant.result.gpu_hours:
            # The cold plan with instant starts is a candidate for the instant bound too.
            again = simulate(config, "oracle", cold.plan, cold=False)
            instant.simulations += 1
            if again.slo_attainment >= target - 1e-12 and again.gpu_hours < instant.result.gpu_hours:
                instant = Bound("oracle", cold.plan, again, instant.simulations)
        if "oracle" in names:
            out.bounds["oracle"] = instant
    if cold is not None:
        out.bounds["oracle-cold"] = cold
    return out
