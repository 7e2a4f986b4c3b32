"""The variant-switch state machine: surge, drain, roll back on timeout, and resume after an
operator restart from every phase (the state is only what status.switch holds)."""

from __future__ import annotations

import pytest

from grm_operator.control.rollout import (
    GPUBudget,
    Observed,
    Step,
    Switch,
    advance,
    from_rfc3339,
    start,
    to_rfc3339,
)

T0 = 1_800_000_000.0  # an arbitrary epoch second
TIMEOUT, DRAIN, BACKOFF = 600.0, 60.0, 1800.0


def step(switch: Switch, now: float, **observed: Observed) -> Step:
    return advance(switch, observed, now, timeout_s=TIMEOUT, drain_s=DRAIN, backoff_s=BACKOFF)


def restart(s: Switch) -> Switch:
    """What a restarted operator reads back from status.switch."""
    return Switch.from_status(s.to_status())


def test_start_surges_the_new_variant_while_the_old_serves() -> None:
    st = start("bf16", "fp8", 3, T0, "p95 TTFT 0.82s > 0.5s at maxGPUs")
    assert st.switch == Switch("bf16", "fp8", T0, 3, "Surging")
    assert st.replicas == {"fp8": 3} and st.active == "bf16"
    assert "p95 TTFT 0.82s > 0.5s" in st.message and st.reason == "SwitchStarted"


def test_start_surges_at_least_one_replica() -> None:
    assert start("a", "b", 0, T0, "x").replicas == {"b": 1}


def test_a_successful_switch_surges_drains_and_completes() -> None:
    s = start("bf16", "fp8", 2, T0, "why").switch
    assert s is not None
    waiting = step(s, T0 + 30, bf16=Observed(2, 2), fp8=Observed(2, 1))
    assert waiting.switch == s and waiting.outcome == "InProgress" and waiting.active == "bf16"
    assert waiting.message == ""  # nothing happened: no Event
    ready = step(s, T0 + 60, bf16=Observed(2, 2), fp8=Observed(2, 2))
    assert ready.switch is not None and ready.switch.phase == "Draining"
    assert ready.replicas == {"bf16": 0} and ready.active == "fp8"
    assert "2/2 fp8 replicas are Ready" in ready.message
    draining = step(ready.switch, T0 + 70, bf16=Observed(1, 0), fp8=Observed(2, 2))
    assert draining.outcome == "InProgress" and draining.replicas == {"bf16": 0} and draining.active == "fp8"
    done = step(ready.switch, T0 + 130, bf16=Observed(0, 0), fp8=Observed(2, 2))
    assert done.switch is None and done.outcome == "Completed" and done.active == "fp8"
    assert done.reason == "SwitchCompleted" and "bf16 drained" in done.message


def test_a_switch_that_does_not_become_ready_rolls_back_and_marks_the_variant_unhealthy() -> None:
    s = start("bf16", "int4", 2, T0, "why").switch
    assert s is not None
    assert step(s, T0 + TIMEOUT, int4=Observed(2, 1)).switch == s  # not yet past the timeout
    back = step(s, T0 + TIMEOUT + 1, bf16=Observed(2, 2), int4=Observed(2, 1))
    assert back.switch is not None and back.switch.phase == "RollingBack"
    assert back.replicas == {"int4": 0} and back.active == "bf16"
    assert back.unhealthy == {"int4": T0 + TIMEOUT + 1 + BACKOFF}
    assert "only 1/2 int4 replicas became Ready within the 600s switch timeout" in back.message
    still = step(back.switch, T0 + TIMEOUT + 5, int4=Observed(1, 0))
    assert still.outcome == "InProgress" and still.replicas == {"int4": 0} and not still.unhealthy
    done = step(back.switch, T0 + TIMEOUT + 20, int4=Observed(0, 0))
    assert done.switch is None and done.outcome == "RolledBack" and done.active == "bf16"


def test_a_pod_stuck_terminating_does_not_block_the_switch_forever() -> None:
    s = Switch("a", "b", T0, 1, "Draining")
    assert step(s, T0 + TIMEOUT + DRAIN, a=Observed(1, 0)).outcome == "InProgress"
    done = step(s, T0 + TIMEOUT + DRAIN + 61, a=Observed(1, 0))
    assert done.outcome == "Completed" and "1 pod(s) still terminating" in done.message


def test_removing_a_variant_from_the_spec_ends_the_switch() -> None:
    s = Switch("a", "b", T0, 1, "Surging")
    gone_target = advance(
        s, {}, T0 + 1, timeout_s=TIMEOUT, drain_s=DRAIN, backoff_s=BACKOFF, variants=frozenset({"a"})
    )
    assert gone_target.switch is not None and gone_target.switch.phase == "RollingBack"
    assert not gone_target.unhealthy  # nothing wrong with the variant: it was removed
    gone_source = advance(
        s, {}, T0 + 1, timeout_s=TIMEOUT, drain_s=DRAIN, backoff_s=BACKOFF, variants=frozenset({"b"})
    )
    assert gone_source.switch is not None and gone_source.switch.phase == "Draining"


def test_status_round_trip_keeps_the_switch_to_the_second() -> None:
    s = Switch("bf16", "fp8", T0, 4, "Draining")
    wire = s.to_status().to_wire()
    assert wire == {
        "from": "bf16",
        "to": "fp8",
        "started": to_rfc3339(T0),
        "targetReplicas": 4,
        "phase": "Draining",
    }
    assert restart(s) == s
    assert from_rfc3339("2027-01-15T08:00:00Z") == 1_800_000_000.0


# Resume after restart: the operator died in each phase; what it reads back decides.
@pytest.mark.parametrize(
    ("phase", "down_for", "observed", "expected_phase", "expected_outcome", "active"),
    [
        # Died while surging, came back before the timeout, pods now Ready: continue to Draining.
        ("Surging", 120, {"a": Observed(2, 2), "b": Observed(2, 2)}, "Draining", "InProgress", "b"),
        # Died while surging, came back before the timeout, pods not Ready: keep surging.
        ("Surging", 120, {"a": Observed(2, 2), "b": Observed(2, 0)}, "Surging", "InProgress", "a"),
        # Died while surging, came back after the timeout, not Ready: roll back.
        ("Surging", 900, {"a": Observed(2, 2), "b": Observed(2, 1)}, "RollingBack", "InProgress", "a"),
        # Died while draining, the old pods are gone by now: complete.
        ("Draining", 300, {"a": Observed(0, 0), "b": Observed(2, 2)}, None, "Completed", "b"),
        # Died while draining, old pods still there: keep them at 0 and wait.
        ("Draining", 30, {"a": Observed(2, 0), "b": Observed(2, 2)}, "Draining", "InProgress", "b"),
        # Died while rolling back, the new pods are gone: rolled back.
        ("RollingBack", 60, {"a": Observed(2, 2), "b": Observed(0, 0)}, None, "RolledBack", "a"),
        # Died while rolling back, new pods remain: keep scaling them to 0.
        ("RollingBack", 60, {"a": Observed(2, 2), "b": Observed(1, 0)}, "RollingBack", "InProgress", "a"),
    ],
)
def test_a_restarted_operator_resumes_or_rolls_back_from_status(
    phase: str,
    down_for: float,
    observed: dict[str, Observed],
    expected_phase: str | None,
    expected_outcome: str,
    active: str,
) -> None:
    before = Switch("a", "b", T0, 2, phase)  # type: ignore[arg-type]
    resumed = step(restart(before), T0 + down_for, **observed)
    assert (resumed.switch.phase if resumed.switch else None) == expected_phase
    assert resumed.outcome == expected_outcome and resumed.active == active
    # Whatever the phase, the variant being left or abandoned is driven to 0.
    if expected_phase in ("Draining",) or expected_outcome == "Completed":
        assert resumed.replicas.get("a") == 0
    if expected_phase == "RollingBack" or expected_outcome == "RolledBack":
        assert resumed.replicas.get("b") == 0


def roll(switch: Switch, now: float, budget: GPUBudget, **observed: Observed) -> Step:
    return advance(switch, observed, now, timeout_s=TIMEOUT, drain_s=DRAIN, backoff_s=BACKOFF, budget=budget)


def test_a_switch_at_a_full_budget_rolls_batch_by_batch() -> None:
    """maxGPUs 16 full with 8 bf16 replicas of 2 GPUs; fp8 (1 GPU) wanted at 16. Batches of
    ¼ × 16 = 4 GPUs: bf16 8 → 6 and fp8 → 4; with 4 fp8 Ready bf16 → 4, fp8 → 8; and so on."""
    budget = GPUBudget(16, old_gpus=2, new_gpus=1)
    s = start("bf16", "fp8", 16, T0, "why", surge=1).switch
    assert s is not None and s.target_replicas == 16
    first = roll(s, T0 + 15, budget, bf16=Observed(8, 8, desired=8), fp8=Observed(1, 0, pending=1))
    assert first.replicas == {"fp8": 4, "bf16": 6} and first.reason == "SwitchRolling"
    assert "bf16 8 → 6" in first.message and "0/16 fp8 Ready" in first.message
    # Same tick again (the freed GPUs still held by draining pods): the same targets, no Event.
    same = roll(s, T0 + 30, budget, bf16=Observed(6, 6, desired=6), fp8=Observed(4, 0, pending=2))
    assert same.replicas == {"fp8": 4} and same.message == ""
    second = roll(s, T0 + 120, budget, bf16=Observed(6, 6, desired=6), fp8=Observed(4, 4))
    assert second.replicas == {"fp8": 8, "bf16": 4}
    last = roll(s, T0 + 400, budget, bf16=Observed(2, 2, desired=2), fp8=Observed(12, 12))
    assert last.replicas == {"fp8": 16, "bf16": 0}
    done = roll(s, T0 + 500, budget, bf16=Observed(0, 0, desired=0), fp8=Observed(16, 16))
    assert done.switch is not None and done.switch.phase == "Draining"


def test_rolling_never_leaves_no_ready_replica() -> None:
    """bf16 at 1 replica of 2 GPUs fills maxGPUs 2; fp8 wanted at 2: bf16 keeps serving while fp8
    has no Ready pod (the first fp8 replica needs a GPU beyond the budget, as the surge did); with
    one fp8 Ready, bf16 goes and fp8 takes the budget."""
    budget = GPUBudget(2, old_gpus=2, new_gpus=1)
    s = start("bf16", "fp8", 2, T0, "why", surge=1).switch
    assert s is not None
    held = roll(s, T0 + 15, budget, bf16=Observed(1, 1, desired=1), fp8=Observed(1, 0, pending=1))
    assert held.replicas == {"fp8": 1} and held.message == ""
    freed = roll(s, T0 + 60, budget, bf16=Observed(1, 1, desired=1), fp8=Observed(1, 1))
    assert freed.replicas == {"fp8": 2, "bf16": 0}


def test_a_switch_that_fits_surges_at_full_size() -> None:
    budget = GPUBudget(16, old_gpus=2, new_gpus=1)
    s = start("bf16", "fp8", 4, T0, "why").switch
    assert s is not None
    plain = roll(s, T0 + 15, budget, bf16=Observed(2, 2, desired=2), fp8=Observed(4, 0))
    assert plain.replicas == {"fp8": 4} and plain.message == ""


def test_a_rolling_switch_past_its_timeout_finishes_with_the_ready_replicas() -> None:
    """Replicas that got Ready prove the variant works: past the timeout the switch drains the
    old variant instead of dropping them; with none Ready it rolls back as before."""
    budget = GPUBudget(16, old_gpus=2, new_gpus=1)
    s = start("bf16", "fp8", 16, T0, "why", surge=1).switch
    assert s is not None
    late = roll(s, T0 + TIMEOUT + 1, budget, bf16=Observed(4, 4, desired=4), fp8=Observed(8, 6))
    assert late.switch is not None and late.switch.phase == "Draining" and late.active == "fp8"
    assert "6/16 fp8 replicas Ready" in late.message
    failed = roll(s, T0 + TIMEOUT + 1, budget, bf16=Observed(6, 6, desired=6), fp8=Observed(4, 0))
    assert failed.switch is not None and failed.switch.phase == "RollingBack"


def test_a_new_variant_that_crash_loops_rolls_back_at_once_not_after_the_timeout() -> None:
    """int4 pods that vLLM refuses (a dtype the architecture rejects) restart again and again: the
    switch rolls back as soon as one crash-loops with none Ready, a rolling one included, instead
    of holding the GPUs it took until the 600 s timeout."""
    s = start("bf16", "int4", 2, T0, "why").switch
    assert s is not None
    # One restart is not yet a crash loop; a Ready pod proves the variant can start.
    assert step(s, T0 + 40, bf16=Observed(2, 2), int4=Observed(2, 0)).switch == s
    assert step(s, T0 + 90, bf16=Observed(2, 2), int4=Observed(2, 1, crashing=1)).switch == s
    back = step(s, T0 + 90, bf16=Observed(2, 2), int4=Observed(2, 0, crashing=1))
    assert back.switch is not None and back.switch.phase == "RollingBack"
    assert back.replicas == {"int4": 0} and back.active == "bf16"
    assert back.unhealthy == {"int4": T0 + 90 + BACKOFF}
    assert "1 int4 pod(s) crash-loop" in back.message and "90s into the switch" in back.message
    budget = GPUBudget(4, old_gpus=2, new_gpus=1)
    rolling = start("bf16", "int4", 4, T0, "why", surge=1).switch
    assert rolling is not None
    crashed = roll(rolling, T0 + 90, budget, bf16=Observed(1, 1, desired=1), int4=Observed(2, 0, crashing=2))
    assert crashed.switch is not None and crashed.switch.phase == "RollingBack"
