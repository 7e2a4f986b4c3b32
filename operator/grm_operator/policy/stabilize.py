"""The post-filter on the optimisation's replica count: stabilisation, panic and the scale-down
rate, as Knative's autoscaler applies them (KPA: stable and panic windows, max-scale-down-rate).

The optimisation (:mod:`.decide`) recommends replicas each tick; this filter turns the
recommendations into the replicas asked for, so that one window's noise never moves the fleet:

* **scale-up stabilisation** (``spec.scaling.scaleUpStabilization``, default 0): up to the lowest
  recommendation of the window (0: at once);
* **scale-down stabilisation** (``scaleDownStabilization``, default 5 min): down only to the
  highest recommendation of the window, and not before a full window of recommendations is
  remembered (after a start, a restart without state or a switch, the running replicas stand
  for the past). A confident periodic forecast (strength ≥ ``PERIODIC_TRUST``) shortens the
  window to a quarter of the period: the drop into the quiet phase of an RL training loop is
  foreseen, not noise, and a 5-minute window would keep the burst's fleet through a 6-minute
  step's whole quiet phase;
* **panic**: an observed p95 above the SLO scales up to at least ready × min(2, p95 ÷ SLO) and
  holds off scale-down for ``PANIC_HOLD_S``;
* **rate**: at most halving per tick (Knative's max-scale-down-rate 2), so a forecast error costs
  one period of half the fleet, not the whole of it.

Recommendations are remembered as runs (start time, value), so a steady recommendation leaves the
state — and the status holding it — untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy.types import PolicyState, ReasonCode

PANIC_HOLD_S = 60.0
MAX_SCALE_DOWN_RATE = 2.0
#: Periodicity strength from which the forecast, not the stabilisation window, times scale-downs.
PERIODIC_TRUST = 0.5


@dataclass(frozen=True)
class Filtered:
    """The replicas to ask for, the code of what changed them (None: the recommendation stands)."""

    replicas: int
    code: ReasonCode | None
    note: str
    state: PolicyState


def record(
    runs: Sequence[tuple[float, int]], now: float, value: int, keep_s: float
) -> tuple[tuple[float, int], ...]:
    """Recommendations as runs (start time, value): a new run only when the value changes. Runs
    that ended before ``now - keep_s`` are dropped."""
    out = list(runs)
    while len(out) >= 2 and out[1][0] < now - keep_s:
        out.pop(0)
    if not out or out[-1][1] != value:
        out.append((now, value))
    return tuple(out)


def over_window(runs: Sequence[tuple[float, int]], now: float, window_s: float) -> list[int]:
    """Values of the runs overlapping ``[now - window_s, now]`` (run i lasts until run i+1)."""
    start = now - window_s
    return [value for i, (_, value) in enumerate(runs) if i + 1 == len(runs) or runs[i + 1][0] >= start]


def stabilize(
    *,
    spec: GRMDeploymentSpec,
    state: PolicyState,
    now: float,
    recommended: int,
    current: int,
    ready: int,
    cap: int,
    breach: float,
    period_s: float,
    periodic_strength: float = 0.0,
    period_of_load_s: float | None = None,
) -> Filtered:
    """The replicas to ask for given the optimisation's ``recommended`` (see module doc).

    ``current`` is the Deployment's desired replicas, ``cap`` the most the GPU budget allows,
    ``breach`` the worst observed p95 ÷ SLO (> 1: breached).
    """
    need, code, note = recommended, None, ""
    panic_until = state.panic_until
    if breach > 1.0:
        panic_until = now + PANIC_HOLD_S
        panic_need = min(math.ceil(ready * min(2.0, breach)), cap)
        if panic_need > need:
            need, code = panic_need, ReasonCode.PANIC
            note = f"panic: p95 {breach:.2f}× the SLO, at least {panic_need} replicas"
    up_window = parse_duration(spec.scaling.scale_up_stabilization)
    down_window = parse_duration(spec.scaling.scale_down_stabilization)
    if periodic_strength >= PERIODIC_TRUST and period_of_load_s is not None:
        down_window = min(down_window, max(period_of_load_s / 4, 3 * period_s))
    recs = record(state.recommendations, now, need, max(up_window, down_window))
    if need >= current:
        replicas = min(over_window(recs, now, up_window)) if up_window > 0 else need
        replicas = max(replicas, current)
        if replicas < need:
            code = ReasonCode.SCALE_UP_STABILIZATION
            note = f"scale-up stabilisation: lowest recommendation of {up_window:.0f}s is {replicas}"
    else:
        replicas = max(over_window(recs, now, down_window))
        if not recs or recs[0][0] > now - down_window:
            replicas = max(replicas, current)
        if panic_until is not None and now < panic_until:
            replicas = max(replicas, current)
        if replicas > need:
            code = ReasonCode.PANIC if panic_until is not None and now < panic_until else code
            code = code or ReasonCode.STABILIZATION
            note = f"highest recommendation over the {down_window:.0f}s scale-down window is {replicas}"
        limited = math.ceil(current / MAX_SCALE_DOWN_RATE)
        if limited > replicas:
            replicas, code = limited, ReasonCode.SCALE_DOWN_RATE
            note = f"scale-down rate: at most halving, {current} → {limited}"
    replicas = min(max(replicas, spec.scaling.min_replicas), max(cap, spec.scaling.min_replicas))
    return Filtered(replicas, code, note, state.evolve(recommendations=recs, panic_until=panic_until))
