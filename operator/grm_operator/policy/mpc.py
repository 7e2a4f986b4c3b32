"""The scaling-and-precision decision as an explicit optimisation: one pure function,
``decide_mpc(observation, state, spec, now)``, a short optimisation each tick (model-predictive
control; docs/policy.md §10), with the same signature as the rules of :mod:`.decide`.

Time is a parameter and memory is explicit (:class:`PolicyState`), so the operator, the fleet
simulator and the tests drive the very same code. One tick:

1. **Freshness.** No Ready worker, a failed source, samples older than max(3 periods, 60 s) or
   an unknown request rate: hold the replicas (never scale down blind).
2. **Demand.** λ in engine sequences per second (a GRM score with k samples is k of them), plus
   the samples workers shed under a queue, plus the queue drained over 20 s, per sample (λ / k,
   score requests per second, so that budgets compare), appended to the arrival series; from
   it the *demand distribution* of the look-ahead (:mod:`.forecast`: persistence with trend,
   the last hour's stretches, and the next burst of a periodic load). The look-ahead is one
   cold start and a period: declared, else measured on the pods (:mod:`.coldstart`), else the
   precision's prior.
3. **Latency model.** Per operating point, what one replica serves inside the SLO
   (:mod:`.capacity`) with the online corrections (:mod:`.corrections`); the GPU budget is
   maxGPUs, or only what is scheduled once pods have been Pending past ``pendingGrace``.
4. **Optimisation.** Every move — operating point, replica count, bridge budget — that respects
   the hard constraints (quality floor: admissible points only; GPU budget including the surge
   of a switch; the switch cooldown) is scored by one objective (:mod:`.moves`), the cheapest
   wins.
5. **Post-filter.** Stabilisation, panic and the scale-down rate (:mod:`.stabilize`).

Manual and External modes keep spec.scaling.replicas (the optimisation picks variant and samples
for that count); Pinned precision considers only the pinned variant.
"""

from __future__ import annotations

import math
from dataclasses import replace

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec, Variant
from grm_operator.policy import forecast as fc
from grm_operator.policy.capacity import operating_points, replica_capacity, variant_profile
from grm_operator.policy.coldstart import cold_start
from grm_operator.policy.corrections import (
    MIN_REQUESTS_FOR_CORRECTION,
    corrections_at,
    learn,
    missed_fraction,
    saturated_throughput,
    slo_breach,
    workload,
)
from grm_operator.policy.moves import (
    MISS_VALUE,
    Fleet,
    Point,
    candidates,
    choose,
    penalty_factor,
    score,
    terminal_cost,
)
from grm_operator.policy.signals import Signals
from grm_operator.policy.stabilize import stabilize
from grm_operator.policy.types import (
    ARRIVAL_BINS,
    Action,
    Decision,
    MoveScore,
    Observation,
    PolicyState,
    ReasonCode,
)

QUEUE_DRAIN_S = 20.0


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _hold(
    obs: Observation, state: PolicyState, spec: GRMDeploymentSpec, code: ReasonCode, why: str, ok: bool
) -> tuple[Decision, PolicyState]:
    manual = spec.scaling.mode != "Auto" and spec.scaling.replicas is not None
    current = obs.desired.get(obs.active_variant, 0)
    replicas = spec.scaling.replicas if manual and spec.scaling.replicas is not None else current
    replicas = max(replicas, spec.scaling.min_replicas)
    reason = f"{why}; holding {obs.active_variant} at {replicas} replicas (never scaling down blind)"
    k = min(max(obs.samples, spec.scoring.samples.min), spec.scoring.samples.max)
    return Decision("Hold", obs.active_variant, replicas, k, code, reason, metrics_available=ok), state


def _cold_start_s(spec: GRMDeploymentSpec, variant: Variant, state: PolicyState) -> float:
    """The variant's cold start for the look-ahead and its replicas' arrival: declared or measured
    as :func:`.coldstart.cold_start` orders them, else the precision's prior (45–90 s, a declared
    ``profile.coldStart`` included) this optimisation was measured with (docs/policy.md §10), not
    the rules' size estimate."""
    estimate = cold_start(spec, variant, state.cold_starts.get(variant.name, ()))
    return estimate.seconds if estimate.basis == "measured" else variant_profile(variant).cold_start_s


def _breach(spec: GRMDeploymentSpec, signals: Signals, window: float) -> tuple[float, str]:
    """Worst p95 ÷ SLO; with few requests, a breach only if their medians breach too (the p95 of
    12 requests is their slowest one)."""
    breach, text = slo_breach(spec, signals)
    if breach > 1.0 and (signals.rps or 0.0) * window < MIN_REQUESTS_FOR_CORRECTION:
        medians = Signals(ttft_p95=signals.ttft_p50, itl_p95=signals.itl_p50, e2e_p95=signals.e2e_p50)
        if slo_breach(spec, medians)[0] <= 1.0:
            return 0.0, ""
    return breach, text


def decide_mpc(
    obs: Observation, state: PolicyState, spec: GRMDeploymentSpec, now: float
) -> tuple[Decision, PolicyState]:
    """The next operating point and replica count, and the updated memory (see module doc)."""
    period = parse_duration(spec.scaling.control_period)
    window = parse_duration(spec.metrics.window)
    pinned = spec.precision.pinned_variant if spec.precision.policy == "Pinned" else None
    active = pinned or obs.active_variant
    obs = obs if active == obs.active_variant else replace(obs, active_variant=active)
    k_cur = min(max(obs.samples, spec.scoring.samples.min), spec.scoring.samples.max)
    current, ready = obs.desired.get(active, 0), obs.ready.get(active, 0)
    manual = spec.scaling.mode != "Auto"
    total = obs.total
    stale_after = max(3 * period, 60.0)
    # The pods' first readiness is learnt on every tick, holds included (as by the rules).
    state = state.learn_cold_starts(obs.cold_starts)
    if total is None:
        why = f"metrics unavailable{': ' + obs.metrics_error if obs.metrics_error else ''}"
        return _hold(obs, state, spec, ReasonCode.METRICS_UNAVAILABLE, why, False)
    if ready == 0:
        why = f"no Ready {active} worker yet ({current} asked, {obs.pending.get(active, 0)} unscheduled)"
        return _hold(obs, state, spec, ReasonCode.NO_READY_WORKER, why, True)
    if total.pods_reporting == 0 or (total.sample_age_s is not None and total.sample_age_s > stale_after):
        what = (
            "no worker reported"
            if total.pods_reporting == 0
            else f"newest sample {total.sample_age_s:.0f}s old"
        )
        return _hold(obs, state, spec, ReasonCode.METRICS_STALE, f"metrics stale ({what})", False)
    if total.rps is None:  # unknown, not zero: the counters have one sample
        return _hold(obs, state, spec, ReasonCode.NO_REQUEST_RATE, "no request rate yet", True)
    admissible = operating_points(spec, pinned, obs.demoted)
    if not admissible:  # the CRD's rules make this unreachable
        return _hold(obs, state, spec, ReasonCode.NO_OPERATING_POINT, "no point meets minQuality", True)

    # --- demand distribution -------------------------------------------------------------------
    seq_rate = total.rps + (total.shed_sps or 0.0) + (total.waiting or 0.0) / QUEUE_DRAIN_S
    arrivals = fc.record(state.arrivals, state.arrivals_at, now, seq_rate / k_cur, period, ARRIVAL_BINS)
    cold = max(_cold_start_s(spec, p.variant, state) for p in admissible)
    horizon = max(2, math.ceil((cold + period) / period))
    mix = workload(total, spec, window)
    idle = all(v == 0 for v in arrivals)  # an idle series is all zeros: storing it would rewrite status
    late = missed_fraction(spec, obs.variants.get(active) or total)
    missed = fc.record(
        state.missed[-len(state.arrivals) :] if state.arrivals else (),
        state.arrivals_at,
        now,
        late if late is not None and (total.rps or 0.0) * window >= MIN_REQUESTS_FOR_CORRECTION else 0.0,
        period,
        ARRIVAL_BINS,
    )[-len(arrivals) :]
    learnt = learn(spec, obs, state, mix, window, now).evolve(
        arrivals=() if idle else arrivals,
        arrivals_at=None if idle else now,
        missed=() if idle else missed,
    )
    speed, tail = corrections_at(learnt, active, now)
    running = replica_capacity(spec, spec.variant(active), mix, speed, tail)
    provisioned = current * running / k_cur
    demand = fc.forecast(arrivals, period, horizon, provisioned)
    if demand.burst is not None and demand.burst.confidence >= fc.TRUSTED_PERIOD_STRENGTH:
        # A trusted period foresees past one cold start: look two ahead, so that a burst in the
        # second (which replicas asked for now serve) is provisioned for before it comes.
        horizon *= 2
        demand = fc.forecast(arrivals, period, horizon, provisioned)

    # --- the latency model per point, the GPU budget, the hard constraints -------------------------
    budget = spec.max_gpus()
    unschedulable = obs.unschedulable(active, now, parse_duration(spec.scaling.pending_grace))
    active_gpus = spec.variant(active).gpus_per_replica
    if unschedulable > 0 and not manual:  # no GPU left in the cluster: only what is scheduled
        budget = min(budget, (current - unschedulable) * active_gpus)
    saturated = saturated_throughput(obs, active, ready)
    fixed = spec.scaling.replicas if manual and spec.scaling.replicas is not None else current
    points: list[Point] = []
    # Every variant is compared on at least the corrections measured now on the running one: the
    # tail (p95 ÷ modelled mean) is the arrival mix's, which every variant would meet, and a profile
    # the running variant is measured 1.4× slower than was written for the same workload as the
    # others'. With the priors (tail 2.0, speed 1.0) beside what the running variant learnt, every
    # other variant looks better than it is and the fleet flaps between them.
    active_speed, active_tail = corrections_at(learnt, active, now)
    # A queued window measured the running replicas at saturation. What it shows beyond the model
    # is the workload's (a burst of long prompts), which every variant would meet: the same ratio
    # applies to all. Applied to the running variant only, the measured one looked 3-30x worse than
    # the others' priors and the fleet switched inside bursts to a fleet sized by a prior (code x0.5:
    # 7 int4 replicas replaced by 2 fp8 a minute into a burst, 307 of 504 requests missed).
    saturation = 1.0
    if saturated is not None:
        modelled = replica_capacity(spec, spec.variant(active), mix, active_speed, active_tail)
        saturation = min(1.0, saturated / modelled) if modelled > 0 else 1.0
    for p in admissible:
        speed, tail = corrections_at(learnt, p.variant.name, now)
        speed = max(speed, active_speed)
        tail = {key: max(value, active_tail[key]) for key, value in tail.items()}
        capacity = replica_capacity(spec, p.variant, mix, speed, tail) * saturation
        cap = (
            fixed if manual else max(0, min(spec.scaling.max_replicas, budget // p.variant.gpus_per_replica))
        )
        k_min = min(q.samples for q in admissible if q.variant.name == p.variant.name)
        points.append(Point(p, capacity, _cold_start_s(spec, p.variant, learnt), cap, k_min))
    on_active = [p for p in points if p.point.variant.name == active]
    last_switch = math.inf if state.last_switch is None else now - state.last_switch
    cooldown = parse_duration(spec.precision.switch_cooldown)
    cheapest_request = min(
        (p.gpus * p.point.samples / p.capacity for p in points if p.capacity > 0), default=1.0
    )
    fleet = Fleet(
        active=next((p for p in on_active if p.point.samples == k_cur), None),
        active_variant=active,
        samples=k_cur,
        desired=current - unschedulable if not manual else current,  # pods with no GPU are not a fleet
        ready=ready,
        gpu_budget=budget,
        period_s=period,
        horizon=horizon,
        commit_s=max(parse_duration(spec.scaling.scale_down_stabilization), 4 * period),
        reaction_s=period if spec.scoring.shed_samples == "OnQueue" else math.inf,
        miss_penalty=MISS_VALUE * cheapest_request * penalty_factor(arrivals, missed),
        switch_allowed=last_switch >= cooldown and not pinned,
        noise=fc.noise(arrivals),
    )

    # --- enumerate and score the moves -----------------------------------------------------------
    lowest = fixed if manual else spec.scaling.min_replicas
    moves: list[MoveScore] = []
    blocked: list[MoveScore] = []  # switches the cooldown forbids (to say so when one would win)
    for target in points:
        switch = target.point.variant.name != active
        k = target.point.samples
        bridges = [b for b in on_active if b.point.samples <= max(k, k_cur)] or on_active
        if switch:
            shared = {q.point.samples for q in points if q.point.variant.name == target.point.variant.name}
            bridges = [b for b in bridges if b.point.samples in shared] or bridges
        for n in candidates(target, demand.scenarios, fleet, lowest):
            end = terminal_cost(fleet, target, n, points, demand.now)
            grows = switch or n > ready
            for bridge in bridges if grows else [target]:
                move = score(fleet, target, n, bridge, demand.scenarios, end)
                (blocked if switch and not fleet.switch_allowed else moves).append(move)
    if not moves:  # every move is a switch in its cooldown: keep the point, score the replicas
        moves = [m for m in blocked if m.variant == active] or blocked
    winner, runner_up = choose(moves, fleet)
    code = ReasonCode.MIN_COST
    if blocked and min(m.cost for m in blocked) < winner.cost * 0.98:
        code = ReasonCode.SWITCH_COOLDOWN

    # --- the decision, through the post-filter ---------------------------------------------------
    breach, breach_text = _breach(spec, obs.variants.get(active) or total, window)
    samples, replicas = winner.samples, winner.replicas
    new_state = learnt
    strength = demand.burst.confidence if demand.burst else 0.0
    period_of_load = demand.burst.period_s if demand.burst else None
    target = next(
        p for p in points if (p.point.variant.name, p.point.samples) == (winner.variant, winner.samples)
    )
    lever = next(p for p in on_active if p.point.samples == p.k_min)
    # The post-filter works on what the fleet serves at the instant lever, in replicas of the active
    # variant, so that a switch to a smaller fleet of another variant is a scale-down like any other.
    per_new, per_old = target.serves(1, target.k_min), lever.serves(1, lever.k_min)
    same_fleet = (
        winner.replicas
        if winner.variant == active or per_old <= 0
        else math.ceil(winner.replicas * per_new / per_old - 1e-9)
    )
    switching = any(n > 0 for v, n in obs.desired.items() if v != active)
    if switching:  # recommendations in another variant's replicas mean nothing after the switch
        new_state = new_state.evolve(recommendations=())
    filtered = stabilize(
        spec=spec, state=new_state, now=now, recommended=same_fleet, current=current, ready=ready,
        cap=lever.cap, breach=breach, period_s=period, periodic_strength=strength,
        period_of_load_s=period_of_load,
    )  # fmt: skip
    code = filtered.code or code
    if filtered.note:
        breach_text = f"{breach_text}; {filtered.note}" if breach_text else filtered.note
    if winner.variant != active:
        action: Action = "SwitchVariant"
        samples = winner.bridge_samples
        if filtered.replicas > same_fleet and per_new > 0:
            replicas = min(target.cap, math.ceil(filtered.replicas * per_old / per_new - 1e-9))
        new_state = new_state.evolve(recommendations=(), last_switch=now, panic_until=None)
        note = f"switching {active} → {winner.variant} with {replicas} replicas at k={samples}"
    else:
        replicas, new_state = (fixed, new_state) if manual else (filtered.replicas, filtered.state)
        if replicas > ready and winner.bridge_samples < samples:
            samples = winner.bridge_samples
        action = "ScaleUp" if replicas > current else "ScaleDown" if replicas < current else "None"
        if action == "None" and samples != k_cur:
            action = "SetSamples"
        note = f"{active} {current} → {replicas} replicas at k={samples}"
    if manual:
        code = ReasonCode.MANUAL_REPLICAS if code is ReasonCode.MIN_COST else code
    if winner.expected_misses > 1.0 and winner.replicas >= max(
        p.cap for p in points if p.point.variant.name == winner.variant
    ):
        code = ReasonCode.OVER_BUDGET if code is ReasonCode.MIN_COST else code
    burst = demand.burst
    burst_text = (
        f"; periodic load: next burst of {_fmt(burst.size)} score/s in {burst.in_s:.0f}s "
        f"(period {burst.period_s:.0f}s, confidence {burst.confidence:.2f})"
        if burst
        else ""
    )
    runner_text = (
        f"; runner-up {runner_up.label} at {runner_up.cost:.0f} GPU-s "
        f"({runner_up.expected_misses:.1f} expected misses)"
        if runner_up
        else ""
    )
    reason = (
        f"{code}: {note}; {winner.label} costs {winner.cost:.0f} GPU-s ({winner.gpu_seconds:.0f} GPU-s"
        f" + {winner.expected_misses:.1f} expected misses × {fleet.miss_penalty:.0f} + switch "
        f"{winner.switch_cost:.0f} + terminal {winner.terminal_cost:.0f}){runner_text}; demand "
        f"{_fmt(demand.now)} score/s, p90 of the next {horizon * period:.0f}s {_fmt(demand.quantile(0.9))}"
        f"{burst_text}{'; ' + breach_text if breach_text else ''}"
    )
    decision = Decision(
        action,
        winner.variant,
        replicas,
        samples,
        code,
        reason,
        slo_met=(breach <= 1.0) if breach else None,
        needed=winner.replicas,
        demand_seq_rate=demand.now * samples,
        winner=winner,
        runner_up=runner_up,
    )
    return decision, new_state
