"""The demand distribution (policy.forecast) and what the optimisation does with it on an RL
training loop: a burst of scoring every step, quiet in between."""

from __future__ import annotations

import math

from grm_operator.policy.forecast import forecast, record
from grm_operator.policy.mpc import decide_mpc as decide
from support.fleet import Fleet
from support.policy import make_spec

PERIOD = 15.0
STEP_S = 360.0  # one RL training step: its rollouts are scored in the first minute
BURST, QUIET = 3.0, 0.1  # score requests/s


def rl_rate(now: float) -> float:
    return BURST if now % STEP_S < 60 else QUIET


def test_scenario_weights_sum_to_one_and_a_ramp_is_continued() -> None:
    ramp = [0.1 * i for i in range(40)]
    found = forecast(ramp, PERIOD, 7)
    assert math.isclose(sum(s.weight for s in found.scenarios), 1.0)
    persistence = next(s for s in found.scenarios if s.kind == "persistence")
    assert persistence.values[0] > ramp[-1] and persistence.values[-1] > persistence.values[0]
    assert found.burst is None  # a ramp is no period


def test_the_arrival_series_holds_missed_ticks_and_restarts_after_a_long_gap() -> None:
    series = record((1.0, 2.0), 30.0, 75.0, 3.0, PERIOD, 240)
    assert series == (1.0, 2.0, 2.0, 2.0, 3.0)  # two missed ticks repeat the last value
    assert record(series, 75.0, 75.0 + 241 * PERIOD, 5.0, PERIOD, 240) == (5.0,)
    assert len(record((0.0,) * 240, 0.0, PERIOD, 1.0, PERIOD, 240)) == 240


def test_a_periodic_load_forecasts_the_next_burst_when_and_how_big() -> None:
    series = [rl_rate(i * PERIOD) for i in range(214)]  # 53 minutes, the last tick at phase 315 s
    found = forecast(series, PERIOD, 7)
    assert found.burst is not None
    assert abs(found.burst.period_s - STEP_S) <= 0.05 * STEP_S
    assert found.burst.confidence >= 0.5
    now = 213 * PERIOD
    assert abs(found.burst.in_s - (STEP_S - now % STEP_S)) <= 2 * PERIOD
    assert found.burst.size > 2.0
    periodic = [s for s in found.scenarios if s.kind == "periodic"]
    assert periodic and all(not s.steady for s in periodic)
    assert max(max(s.values) for s in periodic) == BURST  # the burst is in the look-ahead


def test_an_rl_loop_scales_down_in_the_quiet_phase_and_up_ahead_of_the_next_burst() -> None:
    spec = make_spec(
        variants=[{"name": "fp8", "precision": "fp8", "quality": 1.0}],
        scaling={"maxReplicas": 12, "maxGPUs": 12},
    )
    fleet = Fleet(spec, policy=decide)
    now = 0.0
    replicas: dict[float, int] = {}
    ready_at_burst: list[int] = []
    while now < 3600:
        fleet.tick(now, rl_rate(now))
        if now >= 1800:  # the period is known by then (five steps seen)
            replicas[now % STEP_S] = fleet.replicas()
            if now % STEP_S == 0:
                ready_at_burst.append(fleet.observe(now, BURST).ready["fp8"])
        now += PERIOD
    quiet = min(n for phase, n in replicas.items() if 120 <= phase < 240)
    peak = max(replicas.values())
    assert quiet < peak, replicas  # the quiet phase needs fewer than the burst
    # The replicas a burst needs were asked for, and Ready, before it came (not after its start).
    assert ready_at_burst and min(ready_at_burst) > quiet, (ready_at_burst, quiet)
    decision = fleet.decisions[-1]
    assert "periodic load: next burst" in decision.reason, decision.reason
