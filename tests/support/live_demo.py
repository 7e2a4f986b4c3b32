"""The live demo's GRMDeployment (examples/grmd-live-demo.yaml) on the policy test fleet: bf16 2
GPUs a replica, fp8 1, maxGPUs 4, 2 s control period, 30 s stabilisation window and cooldown,
k = 4; a load that needs fp8 from 100 s and falls at :data:`DROP`."""

from __future__ import annotations

import yaml

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy import decide
from support.fleet import Fleet, PolicyFn
from support.paths import EXAMPLES

LIVE_DEMO = EXAMPLES / "grmd-live-demo.yaml"
PERIOD = 2.0
DROP = 250.0


def live_demo_spec() -> GRMDeploymentSpec:
    return GRMDeploymentSpec.model_validate(yaml.safe_load(LIVE_DEMO.read_text())["spec"])


def run_live_demo(until: float, policy: PolicyFn = decide) -> tuple[Fleet, list[tuple[float, int]]]:
    """1 score/s (bf16 fills its 4 GPUs), 3/s from 100 s (fp8 needed), 0.5/s from :data:`DROP`.

    Returns the fleet and, per tick, (time, GPUs asked for: every variant's desired replicas).
    """
    spec = live_demo_spec()
    fleet = Fleet(spec, policy=policy)
    gpus: list[tuple[float, int]] = []
    now = 0.0
    while now < until:
        fleet.tick(now, 1.0 if now < 100 else 3.0 if now < DROP else 0.5)
        gpus.append((now, sum(n * spec.variant(v).gpus_per_replica for v, n in fleet.desired.items())))
        now += PERIOD
    return fleet, gpus
