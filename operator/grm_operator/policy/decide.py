"""The scaling-and-precision policy: one pure function, ``decide(observation, state, spec, now)``.

One concept in one module (one tick of the policy, its steps below sharing their intermediate
numbers), kept whole until the policy is rewritten as an explicit optimisation (docs/policy.md).

Time is a parameter and memory is explicit (:class:`PolicyState`), so the operator, the fleet
simulator and the tests drive the very same code. One tick:

1. **Freshness.** No Ready worker, a failed source, samples older than max(3 periods, 60 s) or
   an unknown request rate: hold the replicas (never scale down blind).
2. **Demand** λ in engine sequences per second (vLLM requests: a GRM score with k samples is
   k of them), plus the samples workers shed under a queue (they served those requests at the
   shed floor; counting them keeps λ what the budget asks), plus the queue drained over 20 s,
   normalised per sample (λ₁ = λ / k) so that sample budgets compare. A least-squares trend
   over the last 3 minutes projects it over the cold-start horizon of the variant (one control
   period + its cold start by :mod:`.coldstart`: a declared ``profile.coldStart``, else the p90
   of its pods' measured cold starts (``Observation.cold_starts``, kept in
   ``PolicyState.cold_starts``) once two were measured, else the estimate from the checkpoint's
   size the startup probe is sized from — DeepSeek-GRM-27B bf16 276 s, its AWQ int4 125 s — else
   the precision's 45–90 s prior), at most the trend's own 3 minutes: at 0.05 seq/s² and a
   75 s horizon the policy provisions for 3.75 seq/s more than it sees (at most 3× what it sees).
3. **Online correction.** At the active variant's operating load, observed median ITL ÷ the
   model's mean step time is the replica's ``speed`` (1.4 = 40 % slower than its prior) and
   observed p95 ÷ modelled mean is each latency's ``tail``; both are smoothed (EWMA 0.3), learnt
   per variant, and decay toward their priors without fresh evidence (half-lives 15 / 2 min).
4. **Capacity per operating point** (variant × sample budget, best quality first) from the
   corrected model (:mod:`.capacity`); replicas needed = ⌈λ₁·k ÷ capacity⌉. GPU budget:
   maxGPUs, or only the GPUs already scheduled when pods of the active variant have been Pending
   for ``spec.scaling.pendingGrace`` (default 5 min: a node autoscaler's GPU node is still coming
   before that; docs/policy.md §3).
5. **The quality ladder.** Admissible points: quality ≥ minQuality, variants demoted by their
   live agreement (``obs.demoted``, :mod:`.quality_watch`) left off. The best admissible point
   whose need fits the budget wins. Stepping
   down happens at once (after a switch, not before min(cooldown, 2 min)); stepping up only when
   the better point fits the peak demand of the scale-down stabilisation window with 25 % margin
   (on the demand: ⌈1.25·λ/capacity⌉), continuously for that window, the surge fits and the
   switch cooldown has passed — hysteresis against flapping. With a sample lever (the variant
   admits several budgets) the peak looks back over the burst memory (3 windows) instead, at the
   shed floor when workers shed (a burst runs there whatever the budget). A
   current point that cannot hold the SLO moves up to a better one that can after 60 s (fewer
   samples first); an inadmissible budget moves to the nearest admissible one of its variant.
6. **Replicas.** Scale up at once; panic on an SLO breach (no scale-down for 60 s, at least
   ready × min(2, p95 ÷ SLO)); scale down only to the maximum recommendation of the
   scale-down stabilisation window (default 5 min). Bounds: [minReplicas, budget]. Until the
   replicas of a scale-up are Ready, the Ready ones serve at the largest admissible sample
   budget they hold (as during a switch): fewer samples act at once, replicas after a cold start.
   Burst floor (with a sample lever): scaling in keeps the replicas that serve the burst memory's
   peak at the lowest admissible budget. Burst sizing: a repeated burst shorter than the e2e
   target (an RL training step's batch within seconds) needs the replicas that serve its
   sequences together (:func:`.capacity.burst_capacity`), not its window's mean rate.

Manual and External modes keep spec.scaling.replicas (the policy still picks variant and
samples); Pinned precision considers only the pinned variant (samples may still change).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy.capacity import (
    OperatingPoint,
    burst_capacity,
    operating_points,
    replica_capacity,
    shed_floor,
)
from grm_operator.policy.coldstart import cold_start
from grm_operator.policy.corrections import (
    MIN_REQUESTS_FOR_CORRECTION,
    corrections_at,
    learn,
    saturated_throughput,
    slo_breach,
)
from grm_operator.policy.corrections import (
    workload as estimated_workload,
)
from grm_operator.policy.signals import Signals
from grm_operator.policy.stabilize import over_window, record
from grm_operator.policy.types import Action, Decision, Observation, PolicyState, Rule

TREND_WINDOW_S = 180.0
#: Demand points older than the trend window serve only the step-up peak: at most this many of
#: them are kept (the highest point of each slice of the look-back), so status.policyState stays
#: bounded whatever scaleDownStabilization is (1 h at 15 s periods would be 240 points).
PEAK_POINTS = 24
QUEUE_DRAIN_S = 20.0
UPGRADE_MARGIN = 1.25
#: The corrections learnt from what the workers report (EWMA, bounds, half-lives toward the priors)
#: are `policy.corrections`'s, shared with the optimiser.
#: How many scale-down windows back the burst floor remembers the demand's peak (see decide()).
BURST_MEMORY_WINDOWS = 3
#: How long the current point must fail (need > budget) before an urgent move up the ladder.
URGENT_MOVE_S = 60.0
#: A demand point at most this fraction of the trend window's peak is idle: the gap that makes
#: the load around it a burst (the RL trace's quiet phases read exactly 0).
IDLE_FRACTION = 0.05
#: An earlier burst repeats the latest when its peak is at least this fraction of the latest's.
REPEAT_FRACTION = 0.5
PANIC_HOLD_S = 60.0
MAX_SCALE_DOWN_RATE = 2.0


@dataclass(frozen=True)
class _Assessment:
    point: OperatingPoint
    capacity: float  # sequences/s per replica at this point
    need: int  # replicas needed for the forecast demand
    cap: int  # most replicas the budget allows
    horizon: float  # min(cold start (coldstart.cold_start) + one control period, TREND_WINDOW_S), s
    demand: float  # forecast sequences/s at this point's sample budget


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _slope(history: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope (per second) of (time, value) points; 0 with < 3 points."""
    if len(history) < 3 or history[-1][0] - history[0][0] <= 0:
        return 0.0
    n = len(history)
    mean_t = sum(t for t, _ in history) / n
    mean_v = sum(v for _, v in history) / n
    var = sum((t - mean_t) ** 2 for t, _ in history)
    if var <= 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in history) / var


def _forecast(per_sample: float, slope: float, horizon: float) -> float:
    """Demand per sample ``horizon`` seconds ahead: the trend, capped at 3× today (a trend fitted
    on a burst's first seconds must not provision for a tenfold load)."""
    if per_sample <= 0:
        return 0.0
    return min(per_sample + slope * horizon, 3 * per_sample + 0.1)


def _keep_demand(
    history: Sequence[tuple[float, float]], now: float, keep_s: float
) -> tuple[tuple[float, float], ...]:
    """The demand points still needed at ``now``: every point of the trend window (the slope),
    and of older ones up to ``keep_s`` back (only the step-up peak reads them) the highest of
    each of ``PEAK_POINTS`` slices. Slices are aligned to absolute time, so a thinned history
    is thinned again to itself and a steady state stays unchanged."""
    recent = [(t, v) for t, v in history if now - t <= TREND_WINDOW_S]
    older = [(t, v) for t, v in history if TREND_WINDOW_S < now - t <= keep_s]
    if len(older) > PEAK_POINTS:
        width = (keep_s - TREND_WINDOW_S) / PEAK_POINTS
        peaks: dict[int, tuple[float, float]] = {}
        for t, v in older:
            key = math.floor(t / width)
            if key not in peaks or v > peaks[key][1]:
                peaks[key] = (t, v)
        older = sorted(peaks.values())
    return (*older, *recent)


def _recent_burst(demand: Sequence[tuple[float, float]], now: float, window_s: float, span_s: float) -> float:
    """Score requests of the latest *repeated* burst in the trend window, else 0.

    The metrics window's rate is a mean: a burst of N requests shorter than the window reads
    N ÷ window, and each of its points is such a mean. A burst is the newest stretch of
    non-idle points (> ``IDLE_FRACTION`` of the trend window's peak) with an idle point before it
    in the trend window and lasting at most ``window_s + span_s``: a window slides over arrivals
    for one window beyond their span, so the stretch's arrivals came within ``span_s`` (the e2e
    target) and had to be served together. Its size is its peak × the window. Repeated: some older
    point, before the idle gap and within the burst memory, reached ``REPEAT_FRACTION`` of that
    peak, so the bursts come back (an RL training loop) and the next one is worth a fleet. A
    single burst stays for the burst floor and the trend; steady load never has the idle gap.
    """
    recent = [(t, v) for t, v in demand if now - t <= TREND_WINDOW_S]
    top = max((v for _, v in recent), default=0.0)
    if top <= 0:
        return 0.0
    idle = IDLE_FRACTION * top
    last = max(i for i, (_, v) in enumerate(recent) if v > idle)
    first = last
    while first > 0 and recent[first - 1][1] > idle:
        first -= 1
    if first == 0 or recent[last][0] - recent[first][0] > window_s + span_s:
        return 0.0
    peak = max(v for _, v in recent[first : last + 1])
    gap = recent[first - 1][0]
    repeated = any(t < gap and v > idle and v >= REPEAT_FRACTION * peak for t, v in demand)
    if not repeated:
        return 0.0
    return peak * window_s


def _switch_samples(
    assessments: Sequence[_Assessment], active: str, k_cur: int, k_target: int, ready: int
) -> int:
    """The sample budget while a variant switch is under way: the new variant's replicas need a
    cold start (45–90 s) and until then the running ones serve every request at this budget.

    Never above the current budget (the running replicas were sized for it; once the new variant
    serves, the ladder raises it). When the running variant cannot serve the target budget, the
    cold start is bridged with the largest admissible budget whose need its Ready replicas cover —
    e.g. 4 bf16 replicas that need 6 at k = 4 but 3 at k = 2 serve at k = 2 until fp8 is Ready
    (every admissible point is above minQuality, so the bridge never breaks the floor).
    """
    k = min(k_target, k_cur)
    bridges = [a for a in assessments if a.point.variant.name == active and a.point.samples <= k]
    if not bridges or any(a.point.samples == k and a.need <= ready for a in bridges):
        return k
    fitting = [a.point.samples for a in bridges if a.need <= ready]
    return max(fitting) if fitting else min(a.point.samples for a in bridges)


def _need_with_margin(a: _Assessment) -> int:
    """Replicas ``a`` needs for its demand with the step-up margin (``a.capacity`` > 0)."""
    return math.ceil(a.demand * UPGRADE_MARGIN / a.capacity)


def _surge_room(gpu_budget: int, current: int, active_gpus: int, new_gpus: int) -> int:
    """Replicas of ``new_gpus`` GPUs each that fit the budget beside ``current`` running ones."""
    return (gpu_budget - current * active_gpus) // new_gpus


def _samples_first_is_a_trap(
    fewer: _Assessment, better: _Assessment, current: int, active_gpus: int, gpu_budget: int
) -> bool:
    """Whether stepping down to ``fewer`` samples on the running variant, rather than switching to
    the ``better`` point of another variant, would cost a cold start anyway and leave no way up.

    All three hold: ``fewer`` needs more replicas than the ``current`` ones (with the step-up
    margin), so it waits for a cold start just as the switch would; it needs its whole budget, and
    from a full fleet no step up to the better variant ever finds GPUs for its surge (8 bf16
    replicas at k = 1 or 2 fill 16 GPUs and stay there, where fp8×k4 would hold the same load on
    fewer GPUs at higher quality); and half the better point's fleet fits beside the running
    replicas now (the switch's own no-room threshold below), so the switch surges rather than rolls.
    """
    if fewer.capacity <= 0:
        return False
    fewer_need = _need_with_margin(fewer)
    room = _surge_room(gpu_budget, current, active_gpus, better.point.variant.gpus_per_replica)
    return fewer_need > current and fewer_need >= fewer.cap and room >= math.ceil(better.need / 2)


def decide(
    obs: Observation, state: PolicyState, spec: GRMDeploymentSpec, now: float
) -> tuple[Decision, PolicyState]:
    """The next operating point and replica count, and the updated memory (see module doc)."""
    period = parse_duration(spec.scaling.control_period)
    window = parse_duration(spec.metrics.window)
    stale_after = max(3 * period, 60.0)
    pinned = spec.precision.pinned_variant if spec.precision.policy == "Pinned" else None
    active = pinned or obs.active_variant
    active_v = spec.variant(active)
    k_lo, k_hi = spec.scoring.samples.min, spec.scoring.samples.max
    k_cur = min(max(obs.samples, k_lo), k_hi)
    current = obs.desired.get(active, 0)
    ready = obs.ready.get(active, 0)
    pending = obs.pending.get(active, 0)
    manual = spec.scaling.mode != "Auto"
    fixed = spec.scaling.replicas if manual and spec.scaling.replicas is not None else current
    # The pods' first readiness is learnt on every tick, holds included: a scale-up's replicas
    # become Ready while the fleet holds for their metrics.
    state = state.learn_cold_starts(obs.cold_starts)

    def hold(rule: Rule, reason: str, metrics_ok: bool) -> tuple[Decision, PolicyState]:
        replicas = fixed if manual else max(current, spec.scaling.min_replicas)
        decision = Decision(
            "Hold", active, replicas, k_cur, rule, reason, slo_met=None, metrics_available=metrics_ok
        )
        return decision, state

    total = obs.total
    if total is None:
        why = f": {obs.metrics_error}" if obs.metrics_error else ""
        return hold(
            Rule.METRICS_UNAVAILABLE,
            f"metrics unavailable{why}; holding {active} at {current} replicas (never scaling down blind)",
            False,
        )
    if ready == 0:
        return hold(
            Rule.NO_READY_WORKER,
            f"no Ready {active} worker yet ({current} asked, {pending} unscheduled); holding at "
            f"{max(current, spec.scaling.min_replicas)} replicas",
            True,
        )
    age = total.sample_age_s
    if total.pods_reporting == 0 or (age is not None and age > stale_after):
        what = "no worker reported metrics" if total.pods_reporting == 0 else f"newest sample {age:.0f}s old"
        return hold(
            Rule.METRICS_STALE,
            f"metrics stale ({what}, limit {stale_after:.0f}s); holding {active} at {current} replicas "
            "(never scaling down blind)",
            False,
        )

    if total.rps is None:
        # Unknown, not zero: a rate needs two samples of the counters (a restarted Prometheus
        # or a first scrape has one), and reading it as demand 0 would scale down blind.
        return hold(
            Rule.NO_REQUEST_RATE,
            f"no request rate yet (the counters have one sample); holding {active} at {current} replicas",
            True,
        )

    # --- demand -----------------------------------------------------------------------------------
    workload = estimated_workload(total, spec, window)
    # Shed samples are demand the fleet did not serve at the budget: without them a burst the
    # workers absorb at k=1 reads as a quarter of itself (k=4) and the replicas it needs never come.
    seq_rate = (total.rps or 0.0) + (total.shed_sps or 0.0) + (total.waiting or 0.0) / QUEUE_DRAIN_S
    per_sample = seq_rate / k_cur
    # Stepping up the ladder lowers capacity per GPU, like a scale-down: it waits for, and sizes
    # for the peak of, the scale-down stabilisation window (at least 3 periods, so one window's
    # noise never decides it). The live demo's 30 s window at 2 s periods: 30 s; the default 5 min.
    step_up_window = max(parse_duration(spec.scaling.scale_down_stabilization), 3 * period)
    burst_memory = BURST_MEMORY_WINDOWS * step_up_window
    demand = (*_keep_demand(state.demand, now, max(TREND_WINDOW_S, burst_memory)), (now, per_sample))
    if all(v == 0 for _, v in demand):
        demand = ()  # an idle trend is flat: remembering its zeros would rewrite status every tick
    slope = max(0.0, _slope([(t, v) for t, v in demand if now - t <= TREND_WINDOW_S]))
    learnt = learn(spec, obs, state, workload, window, now)

    # --- the GPU budget and each operating point ---------------------------------------------------
    gpu_budget = spec.max_gpus()
    unschedulable = obs.unschedulable(active, now, parse_duration(spec.scaling.pending_grace))
    if unschedulable > 0 and not manual:
        # Pods unscheduled for longer than the grace mean the cluster has no GPU left: only what
        # runs (and what is still within its grace, a node on its way) counts.
        gpu_budget = min(gpu_budget, (current - unschedulable) * active_v.gpus_per_replica)
    saturated = saturated_throughput(obs, active, ready)
    assessments: list[_Assessment] = []
    for point in operating_points(spec, pinned, obs.demoted):
        # A 3-minute trend is extrapolated no further than 3 minutes: a 27B bf16's 291 s horizon
        # from its size provisioned for bursts that had passed (bench: docs/policy.md §2). The
        # cold start is the measured one once two of the variant's pods started (.coldstart).
        measured = state.cold_starts.get(point.variant.name, ())
        horizon = min(cold_start(spec, point.variant, measured).seconds + period, TREND_WINDOW_S)
        forecast = _forecast(per_sample, slope, horizon)
        speed, tail = corrections_at(learnt, point.variant.name, now)
        capacity = replica_capacity(spec, point.variant, workload, speed, tail)
        if saturated is not None and point.variant.name == active:
            # Not bounded below: a window that ended queued may have started idle and so
            # under-reports, but that low reading is what holds the fleet through the next burst
            # (docs/policy.md §9 has the bounds and corrections tried, each worse).
            capacity = min(capacity, saturated)
        need_rate = forecast * point.samples
        need = 0 if need_rate <= 0 else (math.ceil(need_rate / capacity) if capacity > 0 else 10**6)
        g = point.variant.gpus_per_replica
        cap = fixed if manual else min(spec.scaling.max_replicas, gpu_budget // g)
        assessments.append(_Assessment(point, capacity, need, max(cap, 0), horizon, need_rate))
    if not assessments:  # the CRD's rules make this unreachable: some variant meets minQuality
        return hold(Rule.NO_OPERATING_POINT, "no operating point meets precision.minQuality", True)

    # The instant lever: the running variant's admissible sample budgets. With more than one,
    # the burst memory (BURST_MEMORY_WINDOWS scale-down windows) sizes the burst floor and the
    # look-back of a step up the ladder; without, the user's window alone does (the live demo's
    # fixed k = 4 steps back up 60 s after its load falls, as its e2e test asserts).
    on_active = [a for a in assessments if a.point.variant.name == active]
    lever = len({a.point.samples for a in on_active}) > 1
    fewest = min(on_active, key=lambda a: a.point.samples) if lever else None
    look_back = burst_memory if fewest is not None else step_up_window

    current_point = next(
        (a for a in assessments if a.point.variant.name == active and a.point.samples == k_cur),
        None,
    )
    feasible = [a for a in assessments if a.need <= a.cap]
    if feasible:
        best = feasible[0]
    else:
        # Nothing holds the SLO: serve the most score requests per second the budget allows.
        best = max(assessments, key=lambda a: (a.cap * a.capacity / a.point.samples, a.point.quality))

    # --- hysteresis on the ladder -------------------------------------------------------------------
    breach_signals = obs.variants.get(active) or total
    breach, breach_text = slo_breach(spec, breach_signals)
    if breach > 1.0 and (breach_signals.rps or 0.0) * window < MIN_REQUESTS_FOR_CORRECTION:
        # The p95 of a few requests is their slowest one: a breach only if the median breaches
        # too (every request slow), not for one 68 s straggler among 12 quick ones.
        medians = Signals(
            ttft_p95=breach_signals.ttft_p50, itl_p95=breach_signals.itl_p50, e2e_p95=breach_signals.e2e_p50
        )
        if slo_breach(spec, medians)[0] <= 1.0:
            breach, breach_text = 0.0, ""
    cooldown = parse_duration(spec.precision.switch_cooldown)
    since_switch = math.inf if state.last_switch is None else now - state.last_switch
    better_since = state.better_since
    # Set only while the current point keeps failing (the urgent move below); None otherwise.
    failing_since: float | None = None
    defer_samples = False
    chosen = current_point or best
    note = ""
    # The ladder rule behind ``chosen`` and ``note`` (STEADY: the current point stays).
    ladder = Rule.STEADY
    # Points of the running variant with fewer samples that hold the demand with the step-up
    # margin: the move that acts at once, taken before a switch when the current point fails.
    # With margin: a point at the edge of its budget (bf16×k1 needing all 8 replicas) leaves the
    # next minute nothing, where the switch would not.
    same = [
        a
        for a in feasible
        if current_point is not None
        and a.point.variant.name == active
        and a.point.quality < current_point.point.quality
        and (a.capacity <= 0 or _need_with_margin(a) <= a.cap)
    ]
    if current_point is None:
        # The spec changed under us (floor raised, variant removed), or a switch bridged its cold
        # start with a budget the new variant does not admit (fp8×k1 below a 0.97 floor): move
        # at once, to the nearest budget above on the same variant that holds the SLO. Not to the
        # best point: its budget (k = 1 → 4) quadruples every request's sequences at once, and a
        # burst that arrives then meets them all; the nearest budget is one step.
        nearest = [a for a in feasible if a.point.variant.name == active and a.point.samples >= k_cur]
        chosen = min(nearest, key=lambda a: a.point.samples) if nearest else best
        why = " (demoted: live agreement below the floor)" if active in obs.demoted else ""
        note, ladder = f"{active}×k{k_cur} is not admissible{why}", Rule.INADMISSIBLE_BUDGET
    elif (
        best.point.quality > current_point.point.quality + 1e-9
        and current_point.need > current_point.cap
        and current_point.capacity > 0
    ):
        # The current point cannot hold the SLO within its budget, and the best one that can is
        # of higher quality: bf16×k2 (a scale-up's bridge that the budget then capped) needing
        # 16 of its 8 replicas, where fp8×k4 fits 16 one-GPU replicas. The step-up rules (a
        # window without a peak, a surge beside the full fleet) are for a fleet at rest and need
        # not ever hold for one that is failing. The move is due now: to a
        # fewer-samples point of the running variant if one holds the SLO with margin (at once),
        # else to the better point once the current one has failed for URGENT_MOVE_S (a capacity
        # that dipped for one window must not flap) and the full switch cooldown has passed. A
        # zero capacity (a learnt tail above the SLO even when idle, seen right after a switch)
        # is not believed enough to move on.
        changes_variant = best.point.variant.name != active
        wait = max(3 * period, URGENT_MOVE_S)
        failing = (
            f"{current_point.point.label} cannot hold the SLO within its budget "
            f"(needs {current_point.need}, {current_point.cap} fit)"
        )
        # Its own timer (``failing_since``), not the step-up's: a better point that has *fitted*
        # for a while says nothing about how long the current one has *failed*, and a shared
        # timer fires the move on the first failing window of a burst, replacing a fleet sized
        # for the burst by a smaller one of the other variant just as the burst arrives.
        if changes_variant and same:
            chosen, failing_since, note, ladder = same[0], None, failing, Rule.URGENT_SAMPLES_FIRST
        else:
            failing_since = state.failing_since if state.failing_since is not None else now
            if now - failing_since >= wait and (not changes_variant or since_switch >= cooldown):
                chosen, failing_since, note, ladder = best, None, failing, Rule.URGENT_MOVE
            else:
                note = f"{failing}; moving to {best.point.label} once that holds for {wait:.0f}s"
                ladder = Rule.URGENT_MOVE_PENDING
    elif best.point.quality > current_point.point.quality + 1e-9:
        # Sized for the busiest moment of the burst memory (per sample), not this possibly idle
        # one: a bursty trace idle for 5 minutes must not step up to a point that its next burst
        # finds with one replica. Samples are the lever that acts at once, but only after the
        # metrics show the burst (a scrape and a period: 15–30 s); requests that arrive before
        # keep their k, so a step up to k = 4 in a lull meets the next burst (the code trace's:
        # 12.8× its mean within seconds) with a fleet sized for the lull at k = 4.
        # Looking back over the burst memory (where samples can move) keeps it at the budget
        # the burst floor holds. The 25 % margin is on the demand, not on the replica
        # count: 2 seq/s on bf16 at 6 seq/s each needs ⌈2.5 / 6⌉ = 1 replica, where ⌈1 × 1.25⌉
        # would ask for 2 (4 GPUs) and, next to the running fp8 replica, never fit maxGPUs 4.
        peak = max((v for t, v in demand if now - t <= look_back), default=0.0)
        # With workers that shed (spec.scoring.shedSamples), a burst that finds the better point
        # runs at its variant's shed floor, so the burst memory's peak is provisioned at the floor
        # (as the burst floor is) and only the demand now at the budget. At the budget, an idle
        # moment asks for the fleet a 15-minute-old peak needs at k = 4 (8 bf16 replicas for the
        # code trace at ×0.5), and the step up waits until the burst leaves the burst memory.
        peak_samples = shed_floor(spec, best.point.variant.name) or best.point.samples
        margin_rate = max(best.demand, peak * peak_samples) * UPGRADE_MARGIN
        margin_need = (
            (math.ceil(margin_rate / best.capacity) if margin_rate > 0 else 0) if best.capacity > 0 else 10**6
        )
        margin_need = max(margin_need, best.need)
        changes_variant = best.point.variant.name != active
        # A switch surges the new variant next to the running one (docs/autoscaling.md,
        # "Variant switches"). A step up, which nothing forces, waits until both fit the GPU
        # budget rather than rolling over a full fleet (docs/policy.md §9).
        surge_gpus = margin_need * best.point.variant.gpus_per_replica + (
            current * active_v.gpus_per_replica if changes_variant else 0
        )
        if margin_need <= best.cap and (
            not changes_variant or (since_switch >= cooldown and surge_gpus <= gpu_budget)
        ):
            better_since = better_since if better_since is not None else now
            if now - better_since >= step_up_window:
                # Step up with the margin provisioned, so the better point is not born saturated.
                best = _Assessment(
                    best.point, best.capacity, margin_need, best.cap, best.horizon, best.demand
                )
                chosen, better_since, ladder = best, None, Rule.STEP_UP
                note = f"{best.point.label} fits with margin ({margin_need} ≤ {best.cap} replicas)"
                if not changes_variant and best.point.samples > k_cur and ready < margin_need:
                    # More samples take effect at once, the replicas they need only after a
                    # cold start: provision first, raise the budget once they are Ready.
                    defer_samples, better_since = True, state.better_since
                    ladder = Rule.STEP_UP_AWAITS_REPLICAS
                    note += f"; raising samples once {margin_need} replicas are Ready ({ready} now)"
            else:
                note = f"{best.point.label} fits; stepping up once it fits for {step_up_window:.0f}s"
                ladder = Rule.STEP_UP_PENDING
        else:
            better_since = None
    elif best.point.quality < current_point.point.quality - 1e-9:
        better_since = None
        changes_variant = best.point.variant.name != active
        # Fewer samples on the running variant take effect at once; another variant needs a
        # cold start (45–90 s) and GPUs for its surge. So step down along the samples first
        # when that holds the SLO with margin (``same``); the ladder moves to the better variant
        # later, with margin.
        if changes_variant and same:
            if _samples_first_is_a_trap(same[0], best, current, active_v.gpus_per_replica, gpu_budget):
                down = Rule.SAMPLES_FIRST_TRAP
            else:
                best, changes_variant, down = same[0], False, Rule.SAMPLES_FIRST
        else:
            down = Rule.SWITCH_DOWN if changes_variant else Rule.STEP_DOWN
        if not changes_variant or since_switch >= min(cooldown, 120.0):
            chosen, ladder = best, down
            note = (
                f"{current_point.point.label} cannot hold the SLO within its budget (needs "
                f"{current_point.need}, {current_point.cap} fit)"
            )
        else:
            note = f"a switch is due but the last one was {since_switch:.0f}s ago"
            ladder = Rule.SWITCH_COOLDOWN
    else:
        better_since = None

    # --- replicas ------------------------------------------------------------------------------------
    new_state = learnt.evolve(demand=demand, better_since=better_since, failing_since=failing_since)
    target = chosen.point.variant.name
    if target != active and not manual and current_point is not None:
        # A switch surges the new variant next to the running one and drains the old one once
        # the surge is Ready (docs/autoscaling.md, "Variant switches"). With the budget full
        # (8 bf16 replicas on 16 GPUs) it rolls instead: the new variant gets a quarter of the
        # budget per cold start, so its full fleet serves only after four cold starts. While a
        # lower sample budget on the running variant serves more, take that instead (at once,
        # no cold start); switch once nothing on it serves more.
        want = min(max(chosen.need, spec.scaling.min_replicas), max(chosen.cap, 1))
        g_new = chosen.point.variant.gpus_per_replica
        if _surge_room(gpu_budget, current, active_v.gpus_per_replica, g_new) < math.ceil(want / 2):

            def served(a: _Assessment) -> float:  # score requests/s within the budget
                return a.cap * a.capacity / a.point.samples

            faster = [
                a
                for a in assessments
                if a.point.variant.name == active and served(a) > served(current_point) * 1.01
            ]
            if faster:
                fits = [a for a in faster if a.need <= a.cap]
                chosen = max(fits, key=lambda a: a.point.quality) if fits else max(faster, key=served)
                target, ladder = active, Rule.NO_SURGE_ROOM
                note = (
                    f"{note}{'; ' if note else ''}no GPU room for {math.ceil(want / 2)} of {want} "
                    f"{best.point.variant.name} replicas next to {current} × {active}"
                )
    # Burst sizing: a repeated burst shorter than the e2e target (an RL training step's batch in
    # ~8 s) is served by the replicas that hold its sequences together inside the SLO, not by its
    # minute's mean. 768 sequences read 12.8 seq/s, 5 fp8 replicas at 3 seq/s each; they need 12
    # (66 in flight each, capacity.burst_capacity). Each tick that sees the burst in the trend
    # window recommends it, so the scale-down window carries it to the next step's burst; a
    # switch sizes the new variant's fleet for it too (else it lands in a lull with 1 replica).
    burst_need, burst_note = 0, ""
    span = spec.slo.e2e_p95_s if spec.slo.e2e_p95_s is not None else window
    burst = _recent_burst(demand, now, window, span)
    if burst > 0 and not manual:
        speed, _ = corrections_at(learnt, chosen.point.variant.name, now)
        per_replica = burst_capacity(spec, chosen.point.variant, workload, speed)
        # At the point's budget, not the shed floor: sized at the floor (bf16 k = 1, a quarter the
        # fleet), the tuning set's mean attainment gained 0.05 points less (docs/policy.md §9).
        burst_need = min(math.ceil(burst * chosen.point.samples / per_replica), max(chosen.cap, 1))
        if burst_need > chosen.need:
            burst_note = (
                f"; burst of {burst:.0f} requests needs {burst_need} × {chosen.point.label} "
                f"({_fmt(per_replica)} sequences each at once)"
            )
    samples = k_cur if defer_samples else chosen.point.samples
    if target != active:
        want = max(chosen.need, burst_need, spec.scaling.min_replicas)
        replicas = fixed if manual else min(want, max(chosen.cap, 1))
        samples = _switch_samples(assessments, active, k_cur, samples, ready)
        allowed = sorted(a.point.samples for a in assessments if a.point.variant.name == target)
        if samples not in allowed:  # the bridge must stay admissible on the new variant too
            samples = next((k for k in allowed if k >= samples), allowed[-1])
        new_state = new_state.evolve(
            recommendations=(), last_switch=now, panic_until=None, better_since=None, failing_since=None
        )
        action: Action = "SwitchVariant"
        reason = (
            f"{note}{'; ' if note else ''}{breach_text + '; ' if breach_text else ''}switching {active} → "
            f"{target} with {replicas} replicas (capacity {_fmt(chosen.capacity)} seq/s per replica, "
            f"demand {_fmt(per_sample * samples)} seq/s at k={samples}){burst_note}"
        )
        return Decision(
            action,
            target,
            replicas,
            samples,
            ladder,
            reason,
            slo_met=breach <= 1.0 if breach else None,
            metrics_available=True,
            needed=max(chosen.need, burst_need),
            demand_seq_rate=per_sample * samples,
        ), new_state

    need = max(chosen.need, burst_need)
    panic_until = state.panic_until
    if breach > 1.0 and not manual:
        panic_until = now + PANIC_HOLD_S
        need = max(need, min(math.ceil(ready * min(2.0, breach)), chosen.cap))
    up_window = parse_duration(spec.scaling.scale_up_stabilization)
    down_window = parse_duration(spec.scaling.scale_down_stabilization)
    recs = record(state.recommendations, now, need, max(up_window, down_window))
    floor_note = ""
    bridged = False
    if manual:
        replicas = fixed
    else:
        if need >= current:
            replicas = min(over_window(recs, now, up_window)) if up_window > 0 else need
            replicas = max(replicas, current)
        else:
            replicas = max(over_window(recs, now, down_window))
            if not recs or recs[0][0] > now - down_window:
                # The window reaches back before the first recommendation we remember (a fresh
                # start, a restart without state, a switch just completed): the replicas running
                # then stand for that past, so nothing scales down before a full window of need.
                replicas = max(replicas, current)
            if panic_until is not None and now < panic_until:
                replicas = max(replicas, current)
            # Burst floor: keep the replicas that, with the sample budget pulled to its lowest
            # admissible value (the instant lever, no cold start), serve the busiest moment of
            # the last BURST_MEMORY_WINDOWS scale-down windows. The code trace idles for 5 min
            # and then brings 17 score/s in 15 s: sized for the idle window, 1 bf16 replica
            # (5 score/s at k=1) meets it and 90 s of cold start lose 300+ requests; 4 replicas
            # at k=1 hold it while the scale-up starts. It costs a quarter of the peak's fleet
            # at k=4 and binds only after a burst. Without a lever (min = max samples) it would
            # only lengthen the window the user set, so it does not apply.
            if fewest is not None:
                burst_peak = max((v for t, v in demand if now - t <= burst_memory), default=0.0)
                floor = (
                    math.ceil(burst_peak * fewest.point.samples / fewest.capacity)
                    if fewest.capacity > 0 and burst_peak > 0
                    else 0
                )
                if min(floor, current) > replicas:
                    replicas = min(floor, current)
                    floor_note = (
                        f"; burst floor {replicas}: {fewest.point.label} holds the peak "
                        f"{_fmt(burst_peak * fewest.point.samples)} seq/s of the last {burst_memory:.0f}s"
                    )
            # Bounded step: at most halve per tick (Knative's max-scale-down-rate 2), so a
            # forecast error costs one period of half the fleet, not the whole of it.
            replicas = max(replicas, math.ceil(current / MAX_SCALE_DOWN_RATE))
        replicas = min(max(replicas, spec.scaling.min_replicas), max(chosen.cap, spec.scaling.min_replicas))
        if need > ready and replicas > ready:
            # Samples are the instant lever: the replicas asked for are Ready only after a cold
            # start (45–90 s), the code trace's bursts (12.8× its mean) arrive in seconds. Until
            # they are Ready the running ones serve at the largest admissible budget they hold
            # (the switch bridge); the ladder raises it again once the replicas are Ready.
            bridge = _switch_samples(assessments, active, k_cur, samples, ready)
            if bridge < samples:
                bridging = f"samples {bridge} until {replicas} replicas are Ready ({ready} now)"
                note = f"{note}; {bridging}" if note else bridging
                samples, bridged = bridge, True
    new_state = new_state.evolve(recommendations=recs, panic_until=panic_until)

    slo_text = breach_text or "no latency measured yet"
    capacity_text = (
        f"demand {_fmt(seq_rate)} seq/s (forecast {_fmt(chosen.demand)} at k={samples} over the "
        f"{chosen.horizon:.0f}s cold-start horizon) needs {chosen.need} × {chosen.point.label} "
        f"at {_fmt(chosen.capacity)} seq/s each"
        if chosen.capacity > 0
        else f"demand {_fmt(seq_rate)} seq/s: no replica of {chosen.point.label} meets the SLO at any load "
        "(the learnt latency is above the target even when idle)"
    )
    if replicas > current:
        action = "ScaleUp"
        panic = " (panic: SLO breached)" if breach > 1.0 and not manual else ""
        rule = Rule.MANUAL_REPLICAS if manual else Rule.PANIC if panic else Rule.SCALE_UP
        bridge_note = f"; {note}" if samples < k_cur else ""
        reason = (
            f"{capacity_text}{burst_note}; {slo_text}{panic}: scaling {active} {current} → {replicas}"
            f"{bridge_note}"
        )
    elif replicas < current:
        action = "ScaleDown"
        rule = Rule.MANUAL_REPLICAS if manual else Rule.BURST_FLOOR if floor_note else Rule.SCALE_DOWN
        reason = (
            f"{capacity_text}; {slo_text}: scaling {active} {current} → {replicas} (highest need over the "
            f"{spec.scaling.scale_down_stabilization} stabilisation window){floor_note}"
        )
    elif samples != k_cur:
        action = "SetSamples"
        # The bridge has the last word on the budget; otherwise the ladder moved it.
        rule = Rule.COLD_START_BRIDGE if bridged else ladder
        reason = f"{note}: sample budget {k_cur} → {samples}; {capacity_text}"
    else:
        action = "None"
        # What the decision waits on (the ladder's note leads the reason), else why it keeps.
        rule = ladder
        if rule is Rule.STEADY and floor_note:
            rule = Rule.BURST_FLOOR
        elif rule is Rule.STEADY and not feasible:
            rule = Rule.NO_FEASIBLE_POINT
        tail_note = f"; {note}" if note else ""
        tail_note += floor_note
        if not feasible:
            tail_note += f"; no admissible point holds the SLO within maxGPUs {spec.max_gpus()}"
        reason = f"{capacity_text}{burst_note}; {slo_text}: keeping {replicas} × {active}{tail_note}"
    decision = Decision(
        action,
        active,
        replicas,
        samples,
        rule,
        reason,
        slo_met=(breach <= 1.0) if breach else None,
        metrics_available=True,
        needed=max(chosen.need, burst_need),
        demand_seq_rate=per_sample * samples,
    )
    return decision, new_state
