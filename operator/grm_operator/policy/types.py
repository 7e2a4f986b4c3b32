"""What the policy sees, remembers and decides.

* :class:`Observation` — one control tick's view: a metrics window (:class:`Signals` in total and
  per variant, as both metrics sources produce them), the pods per variant (ready, pending = not
  scheduled, and since when: past ``spec.scaling.pendingGrace`` that means no GPU left), the
  Deployments' desired replicas, the active variant and the sample budget in force.
* :class:`PolicyState` — everything the policy must remember between ticks (recommendation
  windows, demand history, online correction factors, switch times, measured cold starts). It
  round-trips through the JSON dict stored in ``status.policyState``, so a restarted operator
  continues where it left off.
* :class:`Decision` — replicas, variant and sample budget, the action taken, the :class:`Rule` that
  took it (or, for the optimiser of :mod:`.mpc`, its :class:`ReasonCode` and the numbers of the
  winning move and the runner-up, :class:`MoveScore`), a sentence with the numbers that caused
  it, and the condition hints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from grm_operator.policy.coldstart import MEASURED_SAMPLES, StartSample, remember
from grm_operator.policy.signals import Signals

#: Most values kept in PolicyState.arrivals: 240 periods = 1 h at the default 15 s period, enough
#: to see two repetitions of an RL training step of up to 30 min, and ~2 kB of status.
ARRIVAL_BINS = 240

Action = Literal["None", "ScaleUp", "ScaleDown", "SwitchVariant", "SetSamples", "Hold"]


class ReasonCode(StrEnum):
    """Why the optimiser (:func:`grm_operator.policy.mpc.decide_mpc`, ``--policy grm-mpc``) decided
    what it did (docs/policy.md §10).

    ``MinCost``: the optimisation's cheapest move, applied as it is. The post-filter's codes name
    what changed it; the hold codes say why there was nothing to optimise.
    """

    #: The move of least cost (GPU-seconds + miss penalty + switch + terminal), applied as is.
    MIN_COST = "MinCost"
    #: The cheapest move still misses requests in the expected demand at every replica count the
    #: GPU budget allows: the move that misses fewest within the budget.
    OVER_BUDGET = "OverBudget"
    #: Scale-down held to the highest recommendation of the scale-down stabilisation window.
    STABILIZATION = "StabilizationWindow"
    #: Scale-up held to the lowest recommendation of the scale-up stabilisation window.
    SCALE_UP_STABILIZATION = "ScaleUpStabilizationWindow"
    #: The SLO is breached: at least ready × min(2, p95 ÷ SLO) replicas, no scale-down for 60 s.
    PANIC = "Panic"
    #: Scale-down limited to halving per tick (Knative's max-scale-down-rate 2).
    SCALE_DOWN_RATE = "ScaleDownRate"
    #: A variant switch wanted before precision.switchCooldown has passed since the last one.
    SWITCH_COOLDOWN = "SwitchCooldown"
    #: Manual or External mode: the replicas are spec.scaling.replicas.
    MANUAL_REPLICAS = "ManualReplicas"
    #: The metrics source failed.
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    #: No Ready worker of the active variant yet.
    NO_READY_WORKER = "NoReadyWorker"
    #: No worker reported metrics, or the newest sample is older than max(3 periods, 60 s).
    METRICS_STALE = "MetricsStale"
    #: The request rate is unknown (the counters have one sample), which is not demand 0.
    NO_REQUEST_RATE = "NoRequestRate"
    #: No operating point meets precision.minQuality (the CRD's rules make this unreachable).
    NO_OPERATING_POINT = "NoOperatingPoint"


@dataclass(frozen=True)
class MoveScore:
    """One move the optimisation weighed, with its terms (docs/policy.md §5)."""

    variant: str
    samples: int
    replicas: int
    #: The sample budget while replicas of the move start (its bridge); ``samples`` once Ready.
    bridge_samples: int
    #: Objective = gpu_seconds + miss_cost + switch_cost + terminal_cost (GPU-seconds).
    cost: float
    gpu_seconds: float
    #: Expected score requests missed over the look-ahead, and their cost (× the miss penalty).
    expected_misses: float
    miss_cost: float
    switch_cost: float
    terminal_cost: float
    quality: float

    @property
    def label(self) -> str:
        """``3 × fp8×k4 (bridge k2)``."""
        bridge = f" (bridge k{self.bridge_samples})" if self.bridge_samples != self.samples else ""
        return f"{self.replicas} × {self.variant}×k{self.samples}{bridge}"

    def to_dict(self) -> dict[str, Any]:
        """The numbers for status.lastDecision and the simulator's output (rounded)."""
        return {
            "variant": self.variant,
            "samples": self.samples,
            "replicas": self.replicas,
            "bridgeSamples": self.bridge_samples,
            "cost": round(self.cost, 1),
            "gpuSeconds": round(self.gpu_seconds, 1),
            "expectedMisses": round(self.expected_misses, 2),
            "missCost": round(self.miss_cost, 1),
            "switchCost": round(self.switch_cost, 1),
            "terminalCost": round(self.terminal_cost, 1),
        }


class Rule(StrEnum):
    """Which rule of :func:`grm_operator.policy.decide.decide` took a decision (docs/policy.md §8).

    One per decision, naming the rule behind its action: for ``Hold`` why it holds; for
    ``SwitchVariant`` the ladder rule that chose the variant; for ``ScaleUp`` / ``ScaleDown`` the
    replica rule; for ``SetSamples`` the ladder rule that moved the sample budget (else the
    cold-start bridge); for ``None`` the rule the decision waits on, else why nothing changes.
    """

    # --- Hold: not enough to go on, the replicas stay (never scaling down blind) ---------------------
    #: The metrics source failed.
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    #: No Ready worker of the active variant yet.
    NO_READY_WORKER = "NoReadyWorker"
    #: No worker reported metrics, or the newest sample is older than max(3 periods, 60 s).
    METRICS_STALE = "MetricsStale"
    #: The request rate is unknown (the counters have one sample), which is not demand 0.
    NO_REQUEST_RATE = "NoRequestRate"
    #: No operating point meets precision.minQuality (the CRD's rules make this unreachable).
    NO_OPERATING_POINT = "NoOperatingPoint"

    # --- the quality ladder: which operating point (variant × sample budget) -----------------------
    #: The running sample budget is not admissible: the nearest admissible one above, at once.
    INADMISSIBLE_BUDGET = "InadmissibleBudget"
    #: The current point cannot hold the SLO and a better one can: fewer samples on the running
    #: variant that hold the demand with margin, at once, instead of the switch.
    URGENT_SAMPLES_FIRST = "UrgentSamplesFirst"
    #: The current point has failed to hold the SLO for URGENT_MOVE_S: up to the better point.
    URGENT_MOVE = "UrgentMove"
    #: The current point fails and a better one holds the SLO: waiting for the urgent move.
    URGENT_MOVE_PENDING = "UrgentMovePending"
    #: A better point has fitted the look-back's peak with the 25 % margin for a window: step up.
    STEP_UP = "StepUp"
    #: A better point fits with margin: stepping up once it has fitted for the step-up window.
    STEP_UP_PENDING = "StepUpPending"
    #: A step up to more samples: the replicas come first, the budget once they are Ready.
    STEP_UP_AWAITS_REPLICAS = "StepUpAwaitsReplicas"
    #: The current point cannot hold the SLO: fewer samples on the running variant (the best
    #: point that fits is there).
    STEP_DOWN = "StepDown"
    #: A switch down is due, but fewer samples on the running variant hold the demand with
    #: margin: those first (at once, no cold start).
    SAMPLES_FIRST = "SamplesFirst"
    #: A switch down rather than samples first, which would fill the GPU budget and leave no
    #: room for the better variant's surge later (the trap rule).
    SAMPLES_FIRST_TRAP = "SamplesFirstTrap"
    #: The current point cannot hold the SLO: switch down to the best variant that can.
    SWITCH_DOWN = "SwitchDown"
    #: A switch down is due, but the last switch was less than min(switchCooldown, 2 min) ago.
    SWITCH_COOLDOWN = "SwitchCooldown"
    #: No GPU room for half the new variant's fleet beside the running one: fewer samples on
    #: the running variant, which serve more, instead of the switch.
    NO_SURGE_ROOM = "NoSurgeRoom"

    # --- replicas ------------------------------------------------------------------------------------
    #: The demand at the chosen point needs more replicas: scale up at once.
    SCALE_UP = "ScaleUp"
    #: The SLO is breached: scale up to at least ready × min(2, p95 ÷ SLO), no scale-down for 60 s.
    PANIC = "Panic"
    #: The highest need over the scale-down stabilisation window is lower: scale down (at most
    #: halving per tick).
    SCALE_DOWN = "ScaleDown"
    #: Scaling in stops at the replicas that serve the burst memory's peak at the lowest
    #: admissible sample budget.
    BURST_FLOOR = "BurstFloor"
    #: Replicas asked for are not Ready yet: the Ready ones serve at the largest admissible
    #: sample budget they hold until then.
    COLD_START_BRIDGE = "ColdStartBridge"
    #: Manual or External mode: the replicas are spec.scaling.replicas.
    MANUAL_REPLICAS = "ManualReplicas"
    #: No admissible point holds the SLO within maxGPUs: the most the budget serves, kept.
    NO_FEASIBLE_POINT = "NoFeasiblePoint"
    #: Nothing to change: the current point and replicas hold the demand.
    STEADY = "Steady"


@dataclass(frozen=True)
class Observation:
    """One tick's inputs. ``total`` is None when the metrics source failed."""

    time: float
    total: Signals | None
    variants: Mapping[str, Signals]
    active_variant: str
    samples: int
    ready: Mapping[str, int] = field(default_factory=dict)
    pending: Mapping[str, int] = field(default_factory=dict)
    desired: Mapping[str, int] = field(default_factory=dict)
    metrics_error: str | None = None
    #: Per variant: when each of its Pending pods became unscheduled (epoch seconds: the
    #: PodScheduled=False condition's lastTransitionTime, else the pod's creation). A pending pod
    #: without a time here counts as unscheduled for longer than any grace.
    pending_since: Mapping[str, Sequence[float]] = field(default_factory=dict)
    #: Variants demoted by their live agreement with the reference
    #: (:mod:`grm_operator.policy.quality_watch`): the ladder skips them.
    demoted: frozenset[str] = frozenset()
    #: Per variant: the cold start of each Ready pod whose readiness is its first
    #: (:mod:`grm_operator.control.coldstarts`), offered on every tick; the policy keeps each pod
    #: once (:func:`grm_operator.policy.coldstart.remember`).
    cold_starts: Mapping[str, Sequence[StartSample]] = field(default_factory=dict)

    def unschedulable(self, variant: str, now: float, grace_s: float) -> int:
        """Pending pods of ``variant`` unscheduled for at least ``grace_s`` (or since unknown)."""
        since = self.pending_since.get(variant, ())
        young = sum(1 for t in since if now - t < grace_s)
        return max(0, self.pending.get(variant, 0) - young)


@dataclass(frozen=True)
class PolicyState:
    """The policy's memory (JSON-serialisable through :meth:`to_dict` / :meth:`from_dict`)."""

    #: Replica recommendations of the active variant as runs (start time, replicas), newest last.
    recommendations: tuple[tuple[float, int], ...] = ()
    #: (time, sequence rate normalised to one sample per score request), newest last.
    demand: tuple[tuple[float, float], ...] = ()
    #: Per variant: observed step time ÷ the profile's (1.4 = the replica is 40 % slower).
    speed: Mapping[str, float] = field(default_factory=dict)
    #: Per variant, per latency ("ttft", "itl", "e2e"): observed p95 ÷ the model's mean at the
    #: operating point, learnt only from windows where that variant was the active one.
    tail: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: Per variant: when its ``speed`` and ``tail`` were last learnt. The values stored are those
    #: learnt then; what the policy uses decays from them toward the priors with the time since
    #: (see ``corrections.corrections_at``), so a fleet without fresh evidence leaves the state alone.
    learnt_at: Mapping[str, float] = field(default_factory=dict)
    last_switch: float | None = None
    #: Since when a better operating point has fitted with margin (hysteresis for stepping up).
    better_since: float | None = None
    #: Since when the current operating point has failed to hold the SLO within its budget while a
    #: better one could (the urgent move's wait).
    failing_since: float | None = None
    panic_until: float | None = None
    #: Demand per sample (score requests per second) of the last control periods, one value per
    #: period (sample-and-hold across a missed tick), newest last, at most ``ARRIVAL_BINS``: the
    #: series the optimiser's demand distribution and periodicity detector read (the rules do not).
    arrivals: tuple[float, ...] = ()
    #: When the newest value of ``arrivals`` was recorded.
    arrivals_at: float | None = None
    #: The estimated share of each period's requests over the SLO, aligned with ``arrivals``: the
    #: attainment of the last hour, which prices a miss (``policy.mpc``).
    missed: tuple[float, ...] = ()
    #: Per variant: its worker pods' measured cold starts, at most ``MEASURED_SAMPLES`` (8), oldest
    #: first (:mod:`grm_operator.policy.coldstart`; ~0.5 kB of status per variant).
    cold_starts: Mapping[str, tuple[StartSample, ...]] = field(default_factory=dict)

    def learn_cold_starts(self, seen: Mapping[str, Sequence[StartSample]]) -> PolicyState:
        """This state with the cold starts ``seen`` (``Observation.cold_starts``) remembered. A
        variant is never forgotten: dropping one from the dict would leave it in status (a merge
        patch keeps keys it does not name) and rewrite status on every tick."""
        if not any(seen.values()):
            return self
        merged = dict(self.cold_starts)
        for variant, samples in seen.items():
            kept = remember(merged.get(variant, ()), samples)
            if kept:
                merged[variant] = kept
        return self if merged == dict(self.cold_starts) else replace(self, cold_starts=merged)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in status.policyState, rounded (no float noise). Unset values are
        null, so that a JSON merge patch of this dict deletes what the policy forgot."""
        return {
            "recommendations": [[round(t, 1), n] for t, n in self.recommendations],
            "demand": [[round(t, 1), round(r, 4)] for t, r in self.demand],
            "speed": {k: round(v, 4) for k, v in sorted(self.speed.items())},
            "tails": {
                name: {k: round(v, 4) for k, v in sorted(factors.items())}
                for name, factors in sorted(self.tail.items())
            },
            "learntAt": {k: round(v, 1) for k, v in sorted(self.learnt_at.items())},
            # The shared, never-forgetting tail of earlier versions: null deletes it from status.
            "tail": None,
            "lastSwitch": self.last_switch,
            "betterSince": self.better_since,
            "failingSince": self.failing_since,
            "panicUntil": self.panic_until,
            "arrivals": [round(v, 3) for v in self.arrivals] if self.arrivals else None,
            "arrivalsAt": None if self.arrivals_at is None else round(self.arrivals_at, 1),
            "missed": [round(v, 4) for v in self.missed] if self.missed else None,
            "coldStarts": {
                name: [[s.pod, round(s.ready_at, 1), round(s.seconds, 1)] for s in samples]
                for name, samples in sorted(self.cold_starts.items())
            }
            or None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PolicyState:
        """Parse status.policyState; anything malformed is dropped (the policy re-learns it)."""
        if not data:
            return cls()

        def pairs(key: str) -> tuple[tuple[float, float], ...]:
            out: list[tuple[float, float]] = []
            for item in data.get(key) or []:
                if isinstance(item, list | tuple) and len(item) == 2:
                    try:
                        out.append((float(item[0]), float(item[1])))
                    except (TypeError, ValueError):
                        continue
            return tuple(out)

        def floats(key: str) -> dict[str, float]:
            raw = data.get(key)
            return floats_of(raw) if isinstance(raw, Mapping) else {}

        def floats_of(raw: Mapping[Any, Any]) -> dict[str, float]:
            out: dict[str, float] = {}
            for k, v in raw.items():
                try:
                    out[str(k)] = float(v)
                except (TypeError, ValueError):
                    continue
            return out

        def optional(key: str) -> float | None:
            value = data.get(key)
            try:
                return None if value is None else float(value)
            except (TypeError, ValueError):
                return None

        def numbers(key: str) -> tuple[float, ...]:
            raw = data.get(key)
            if not isinstance(raw, list):
                return ()
            out: list[float] = []
            for item in raw[-ARRIVAL_BINS:]:
                try:
                    out.append(max(0.0, float(item)))
                except (TypeError, ValueError):
                    return ()  # a hole would shift the series' phase: re-learn it whole
            return tuple(out)

        def nested(key: str) -> dict[str, dict[str, float]]:
            raw = data.get(key)
            if not isinstance(raw, Mapping):
                return {}
            out: dict[str, dict[str, float]] = {}
            for name, factors in raw.items():
                if isinstance(factors, Mapping):
                    parsed = floats_of(factors)
                    if parsed:
                        out[str(name)] = parsed
            return out

        def starts() -> dict[str, tuple[StartSample, ...]]:
            raw = data.get("coldStarts")
            if not isinstance(raw, Mapping):
                return {}
            out: dict[str, tuple[StartSample, ...]] = {}
            for name, items in raw.items():
                parsed: list[StartSample] = []
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, list | tuple) and len(item) == 3:
                        try:
                            sample = StartSample(str(item[0]), float(item[1]), float(item[2]))
                        except (TypeError, ValueError):
                            continue
                        if math.isfinite(sample.seconds) and sample.seconds >= 0:
                            parsed.append(sample)
                if parsed:
                    # Bounded whatever was written: the newest MEASURED_SAMPLES by readiness.
                    parsed.sort(key=lambda s: (s.ready_at, s.pod))
                    out[str(name)] = tuple(parsed[-MEASURED_SAMPLES:])
            return out

        return cls(
            recommendations=tuple((t, int(n)) for t, n in pairs("recommendations")),
            demand=pairs("demand"),
            speed=floats("speed"),
            tail=nested("tails"),
            learnt_at=floats("learntAt"),
            last_switch=optional("lastSwitch"),
            better_since=optional("betterSince"),
            failing_since=optional("failingSince"),
            panic_until=optional("panicUntil"),
            arrivals=numbers("arrivals"),
            arrivals_at=optional("arrivalsAt"),
            missed=numbers("missed"),
            cold_starts=starts(),
        )

    def evolve(self, **changes: Any) -> PolicyState:
        """A copy with fields replaced."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Decision:
    """What the policy wants for the next control period."""

    action: Action
    variant: str
    replicas: int
    samples: int
    #: The rule that took the decision (machine-readable), or the optimiser's :class:`ReasonCode`;
    #: ``reason`` says it in words.
    rule: Rule | ReasonCode
    reason: str
    #: ``(status, reason)`` hints for the conditions the autoscaler writes.
    slo_met: bool | None = None
    metrics_available: bool = True
    #: Replicas the demand needs at the chosen point before bounds and stabilisation.
    needed: int | None = None
    #: Demand used (sequences per second at the chosen sample budget, forecast included).
    demand_seq_rate: float | None = None
    #: The move the optimiser chose and the next cheapest (None for the rules and for holds).
    winner: MoveScore | None = None
    runner_up: MoveScore | None = None
