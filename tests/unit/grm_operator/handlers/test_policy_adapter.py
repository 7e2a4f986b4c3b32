"""The policy adapter hands the autoscaler's pod counts to the policy, including since when pods
are unscheduled (spec.scaling.pendingGrace counts from there)."""

from __future__ import annotations

import pytest

from grm_operator.control.actuation import VariantDeployment
from grm_operator.handlers.policy_adapter import PodCounts, decide_intent
from grm_operator.metrics import Reading
from support.policy import make_signals, make_spec

NOW = 10_000.0


@pytest.mark.parametrize(("unscheduled_for", "switches"), [(60.0, False), (600.0, True)])
def test_pending_pods_reach_the_policy_with_their_age(unscheduled_for: float, switches: bool) -> None:
    # 4 bf16 replicas asked, 2 Ready, 2 unscheduled, under a load that needs all 4 (default grace 5m).
    total = make_signals(4.0, pods=2, e2e_p95=30.0, ttft_p95=2.0, waiting=20.0, sample_age_s=1.0)
    intent = decide_intent(
        spec=make_spec(),
        status={"activeVariant": "bf16", "samples": 8},
        reading=Reading(total=total, variants={"bf16": total}),
        pods={"bf16": PodCounts(ready=2, pending=2, pending_since=(NOW - unscheduled_for,) * 2)},
        deployments={"bf16": VariantDeployment(desired=4, replicas=4, ready=2, pending=2)},
        now=NOW,
    )
    assert (intent.variant == "fp8") is switches, intent.reason
