"""Pending pods and ``spec.scaling.pendingGrace``: a pod unscheduled for less than the grace is a
node on its way (a node autoscaler), past it the cluster has no GPU left and the budget shrinks.
"""

from __future__ import annotations

import pytest

from grm_operator.policy import PolicyState, Rule, decide
from support.fleet import Fleet
from support.policy import make_observation, make_signals, make_spec

PERIOD = 15.0
NOW = 10_000.0


def test_a_node_autoscaler_keeps_the_best_variant_within_the_default_grace() -> None:
    # The cluster has 4 GPUs; a node autoscaler brings one for any pod Pending for 2 minutes.
    # 1.2 score/s needs 4 bf16 replicas (8 GPUs): within the default grace (5 min) the pods wait
    # for their nodes and the fleet stays on bf16.
    fleet = Fleet(make_spec(), cluster_gpus=4, node_arrives_after=120.0)
    fleet.run([(900.0, 1.2)], PERIOD)
    assert fleet.active == "bf16", [d.reason for d in fleet.decisions if d.action != "None"][:6]
    assert all(d.action != "SwitchVariant" for d in fleet.decisions)
    assert fleet.cluster_gpus is not None and fleet.cluster_gpus >= 8


def test_without_a_grace_the_same_cluster_steps_down_before_the_nodes_come() -> None:
    fleet = Fleet(make_spec(scaling={"pendingGrace": "0s"}), cluster_gpus=4, node_arrives_after=120.0)
    fleet.run([(900.0, 1.2)], PERIOD)
    switch = next(d for d in fleet.decisions if d.action == "SwitchVariant")
    assert (switch.rule, switch.variant) == (Rule.SWITCH_DOWN, "fp8")


def test_without_a_node_autoscaler_the_ladder_steps_down_once_the_grace_has_passed() -> None:
    fleet = Fleet(make_spec(scaling={"pendingGrace": "2m"}), cluster_gpus=4)
    fleet.run([(600.0, 1.2)], PERIOD)
    switches = [(i * PERIOD, d) for i, d in enumerate(fleet.decisions) if d.action == "SwitchVariant"]
    assert switches, [d.reason for d in fleet.decisions if d.action != "None"][:6]
    at, switch = switches[0]
    # The pods were created at t = 0 (the first scale-up): the switch comes at the first tick
    # past the 120 s grace, not before.
    assert 120.0 <= at <= 120.0 + PERIOD
    assert (switch.rule, switch.variant) == (Rule.SWITCH_DOWN, "fp8")


@pytest.mark.parametrize(
    ("unscheduled_for", "shrinks"),
    [(299.0, False), (300.0, True), (None, True)],
    ids=["within-the-grace", "at-the-grace", "since-unknown"],
)
def test_only_pods_unscheduled_past_the_grace_shrink_the_gpu_budget(
    unscheduled_for: float | None, shrinks: bool
) -> None:
    # 4 bf16 replicas asked (8 GPUs), 2 Ready and 2 Pending, under a load that needs all 4.
    spec = make_spec()
    obs = make_observation(
        "bf16",
        make_signals(4.0, pods=2, e2e_p95=30.0, ttft_p95=2.0, waiting=20.0, sample_age_s=1.0),
        now=NOW,
        ready=2,
        desired=4,
        pending=2,
        samples=8,
        pending_since=None if unscheduled_for is None else {"bf16": (NOW - unscheduled_for,) * 2},
    )
    assert obs.unschedulable("bf16", NOW, 300.0) == (2 if shrinks else 0)
    decision, _ = decide(obs, PolicyState(), spec, NOW)
    if shrinks:
        # Only the 2 running bf16 replicas' GPUs (4) count: bf16 cannot hold it, fp8 can.
        assert (decision.action, decision.variant) == ("SwitchVariant", "fp8"), decision.reason
    else:
        assert decision.variant == "bf16", decision.reason
        assert decision.replicas >= 4, decision.reason
