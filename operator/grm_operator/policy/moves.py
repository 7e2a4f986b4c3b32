"""The moves of one tick and their cost: the objective the policy minimises (docs/policy.md §5).

A move is an operating point (variant × sample budget), a replica count, and the bridge: the
sample budget the Ready replicas serve at while the move's new replicas start. Its cost, in
GPU-seconds, is

    cost = GPU-seconds over the commitment L                       (n × gpus per replica × L)
         + miss penalty × expected score requests missed            (over the demand scenarios)
         + switch cost                                              (the old fleet during the surge)
         + terminal cost                                            (a full fleet with no way back)

* L is what a decision commits to: the scale-down stabilisation window (default 5 min).
* The miss penalty is 1 ÷ (1 − 0.99) = 100 times the GPU-seconds one request costs at the
  cheapest admissible point: at that exchange rate a 99 % attainment target is where buying
  more GPUs stops paying.
* Expected misses: each scenario's demand, period by period over the look-ahead H (the slowest
  cold start plus a period), beyond what the fleet serves then — the Ready replicas at the bridge
  budget until the new ones are Ready, the move's replicas at its budget after; with
  ``shedSamples: OnQueue``, from one period on the workers serve an overload at the fewest
  admissible samples (they shed under a queue), a lever that acts without the policy. Beyond H the
  fleet is at rest: the steady scenarios (not a foreseen periodic burst, which a later tick
  provisions for) landing on the move's replicas, counted (L − H) ÷ H times.
* A switch keeps the old fleet until the new one is Ready; without GPU room for the whole new
  fleet beside it, it rolls, a cold start per room-full (at most four), the old fleet handing
  over the GPUs the new one lacks.
* Terminal cost: a move that leaves no GPU room for half of the fleet another variant would need
  to serve today's demand more cheaply is a fleet that can never surge into it (8 bf16 replicas
  filling 16 GPUs where 10 fp8 would do): the extra GPUs it keeps are charged for another L.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from grm_operator.policy.capacity import OperatingPoint
from grm_operator.policy.forecast import Scenario
from grm_operator.policy.types import MoveScore

#: A miss costs as much as serving this many requests: 1 ÷ (1 − 0.99 attainment target).
MISS_VALUE = 100.0
#: The attainment the miss penalty is the multiplier of (1 − TARGET_MISSED = 99 %), and the most
#: it is raised: the penalty is MISS_VALUE × max(1, missed share of the last hour ÷ TARGET_MISSED),
#: at most × MAX_PENALTY_FACTOR.
TARGET_MISSED = 0.01
MAX_PENALTY_FACTOR = 16.0
#: A rolling switch hands the budget over in at most this many cold starts (a quarter each).
ROLL_ROUNDS = 4
#: Moves within this fraction of the cheapest one's GPU-seconds are ties, decided by quality (then
#: by the smaller change): 2 % of 8 replicas over 5 min is 48 GPU-s, about one request missed.
TIE = 0.02


@dataclass(frozen=True)
class Point:
    """An operating point with what one replica serves (sequences/s) and its cold start."""

    point: OperatingPoint
    capacity: float
    cold_start_s: float
    cap: int
    #: The fewest admissible samples on this point's variant (the instant lever).
    k_min: int

    @property
    def gpus(self) -> int:
        return self.point.variant.gpus_per_replica

    def serves(self, replicas: float, samples: int) -> float:
        """Score requests per second ``replicas`` serve at ``samples`` each."""
        return replicas * self.capacity / samples


@dataclass(frozen=True)
class Fleet:
    """What runs now: active point (None when its budget is not admissible), replicas, budget."""

    active: Point | None
    active_variant: str
    samples: int
    desired: int
    ready: int
    gpu_budget: int
    period_s: float
    horizon: int
    commit_s: float
    reaction_s: float
    miss_penalty: float
    switch_allowed: bool
    #: Relative standard deviation of a period's demand around a scenario's value (measured from
    #: the arrival series: :func:`grm_operator.policy.forecast.noise`).
    noise: float = 0.0


def excess(demand: float, served: float, noise: float) -> float:
    """Expected demand beyond ``served`` when the demand of a period is ``demand`` on average with
    a relative standard deviation ``noise`` (normal): E[(X − c)⁺] = (x − c)·Φ(d) + σ·φ(d),
    d = (x − c) / σ. With noise 0 it is max(0, x − c); with noise, a fleet at 100 % of its modelled
    capacity expects to miss σ·0.4 score/s, so the objective buys headroom where the load is noisy."""
    sigma = noise * demand
    if sigma <= 1e-12:
        return max(0.0, demand - served)
    d = (demand - served) / sigma
    cdf = 0.5 * (1.0 + math.erf(d / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * d * d) / math.sqrt(2.0 * math.pi)
    return (demand - served) * cdf + sigma * pdf


def missed(
    scenarios: Sequence[Scenario],
    period_s: float,
    served: Sequence[float],
    steady_only: bool = False,
    noise: float = 0.0,
) -> float:
    """Expected score requests beyond ``served`` (per period of the look-ahead), each scenario's
    value of a period being its mean with a relative standard deviation ``noise``."""
    total = 0.0
    for s in scenarios:
        if steady_only and not s.steady:
            continue
        total += s.weight * math.fsum(excess(x, c, noise) for x, c in zip(s.values, served, strict=False))
    return total * period_s


def score(
    fleet: Fleet, target: Point, replicas: int, bridge: Point, scenarios: Sequence[Scenario], terminal: float
) -> MoveScore:
    """The cost of moving to ``replicas`` × ``target``, bridged by the Ready replicas at ``bridge``."""
    switch = target.point.variant.name != fleet.active_variant
    k, kb = target.point.samples, bridge.point.samples
    p = fleet.period_s
    times = [p * i for i in range(fleet.horizon)]
    if switch:
        # The surge starts what fits beside the running fleet (at least one replica) and rolls
        # from there, the old replicas handing over their GPUs: at most ROLL_ROUNDS cold starts.
        room = max(1, (fleet.gpu_budget - fleet.desired * bridge.gpus) // target.gpus)
        ready_at = (target.cold_start_s + p) * min(math.ceil(replicas / room), ROLL_ROUNDS)
        # Rolling, the old fleet hands the new one the GPUs it lacks before it is Ready.
        handed = math.ceil(max(0, replicas - room) * target.gpus / bridge.gpus)
        old = max(0, fleet.ready - handed)
    else:
        new = replicas > fleet.desired
        ready_at = (
            target.cold_start_s + p if new else target.cold_start_s / 2 if replicas > fleet.ready else 0
        )
        old = min(replicas, fleet.ready)

    def served(t: float, up: float) -> float:
        if t >= up:
            now = target.serves(replicas, k)
            return now if t < fleet.reaction_s else max(now, target.serves(replicas, target.k_min))
        before = bridge.serves(old, kb)
        return before if t < fleet.reaction_s else max(before, bridge.serves(old, bridge.k_min))

    look_ahead = missed(scenarios, p, [served(t, ready_at) for t in times], noise=fleet.noise)
    rest = missed(scenarios, p, [served(t, 0.0) for t in times], steady_only=True, noise=fleet.noise)
    expected = look_ahead + rest * max(0.0, fleet.commit_s - p * fleet.horizon) / (p * fleet.horizon)
    gpu_s = replicas * target.gpus * fleet.commit_s
    # A switch pays the old fleet through the overlap (the new one's GPUs are in gpu_s from now).
    switch_cost = fleet.desired * bridge.gpus * min(ready_at, fleet.commit_s) if switch else 0.0
    miss_cost = fleet.miss_penalty * expected
    return MoveScore(
        variant=target.point.variant.name,
        samples=k,
        replicas=replicas,
        bridge_samples=kb,
        cost=gpu_s + miss_cost + switch_cost + terminal,
        gpu_seconds=gpu_s,
        expected_misses=expected,
        miss_cost=miss_cost,
        switch_cost=switch_cost,
        terminal_cost=terminal,
        quality=target.point.quality,
    )


def terminal_cost(
    fleet: Fleet, target: Point, replicas: int, points: Sequence[Point], demand: float
) -> float:
    """GPUs over L of a fleet that leaves no room to surge into a cheaper variant (module doc)."""
    gpus = replicas * target.gpus
    worst = 0.0
    for other in points:
        if other.point.variant.name == target.point.variant.name or other.capacity <= 0:
            continue
        need = max(1, math.ceil(demand * other.point.samples / other.capacity))
        room = (fleet.gpu_budget - gpus) // other.gpus
        if need <= other.cap and room < math.ceil(need / 2):
            worst = max(worst, (gpus - need * other.gpus) * fleet.commit_s)
    return worst


def penalty_factor(arrivals: Sequence[float], missed: Sequence[float]) -> float:
    """How much dearer a miss is than MISS_VALUE: the last hour's missed share (``missed`` per
    period weighted by ``arrivals``, aligned newest last) over the 1 % target, within
    [1, MAX_PENALTY_FACTOR]. A fixed 100 requests per miss prices steady load, where a spare
    replica is used; a bursty load needs spare replicas that serve one minute in twelve, and the
    price at which the attainment constraint binds is found from the attainment measured."""
    n = min(len(arrivals), len(missed))
    if n == 0:
        return 1.0
    load = math.fsum(arrivals[-n:])
    if load <= 0:
        return 1.0
    share = math.fsum(a * m for a, m in zip(arrivals[-n:], missed[-n:], strict=True)) / load
    return min(MAX_PENALTY_FACTOR, max(1.0, share / TARGET_MISSED))


def candidates(target: Point, scenarios: Sequence[Scenario], fleet: Fleet, lowest: int) -> list[int]:
    """Replica counts worth scoring for ``target``: what each scenario's peak needs at its budget
    and at the lever's, what runs and what is asked, within [lowest, cap]."""
    out = {fleet.desired, fleet.ready, lowest, target.cap}
    if target.capacity > 0:
        for s in scenarios:
            peak = max(s.values, default=0.0)
            for k in (target.point.samples, target.k_min):
                out.add(math.ceil(peak * k / target.capacity))
    return sorted(n for n in out if lowest <= n <= target.cap)


def choose(moves: Sequence[MoveScore], fleet: Fleet) -> tuple[MoveScore, MoveScore | None]:
    """The winner and the runner-up: the cheapest, ties (within ``TIE``) to the running variant
    (no switch for nothing), then the higher quality, the higher bridge, the smaller change; the
    runner-up is the cheapest move that
    differs from the winner in variant, samples or replicas."""
    best = min(moves, key=lambda m: m.cost)
    ties = [m for m in moves if m.cost <= best.cost + TIE * best.gpu_seconds + fleet.period_s]
    winner = max(
        ties,
        key=lambda m: (
            m.variant == fleet.active_variant,
            round(m.quality, 6),
            m.bridge_samples,
            -abs(m.replicas - fleet.desired),
            -m.cost,
        ),
    )
    others = [
        m
        for m in moves
        if (m.variant, m.samples, m.replicas) != (winner.variant, winner.samples, winner.replicas)
    ]
    return winner, min(others, key=lambda m: m.cost, default=None)
