"""The simulator's cluster capacity (``grm_operator.simulator.cluster``): a fixed cluster short of
maxGPUs keeps pods Pending, a node autoscaler brings nodes after its delay up to its ceiling and
removes idle ones; the fleet reports Pending ages to the policy and the bounds respect the cluster.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.simulator.cli import cluster_model, load_spec
from grm_operator.simulator.cluster import ClusterModel, ClusterState
from grm_operator.simulator.controller import Command, FleetView
from grm_operator.simulator.fleet import Fleet, SimConfig
from grm_operator.simulator.report import run_policies
from grm_operator.simulator.trace import Trace

DATA = resources.files("grm_operator") / "data"


@pytest.fixture(scope="module")
def spec() -> GRMDeploymentSpec:
    with resources.as_file(DATA / "demo-spec.yaml") as path:
        return load_spec(path)


def constant_trace(rate: float, seconds: float) -> Trace:
    n = int(rate * seconds)
    times = np.arange(n, dtype=np.float64) / rate
    return Trace(times, np.full(n, 1000, np.int64), np.full(n, 200, np.int64), "constant")


def test_a_fixed_cluster_never_grows() -> None:
    state = ClusterState(ClusterModel(gpus=4))
    state.step(0.0, used=4, pending=[2, 2])
    state.step(3600.0, used=4, pending=[2, 2])
    assert (state.gpus, state.coming, state.nodes_added) == (4, [], 0)


def test_the_autoscaler_brings_a_node_per_pending_pod_after_its_delay_up_to_its_ceiling() -> None:
    state = ClusterState(ClusterModel(gpus=4, node_delay_s=180.0, max_gpus=8))
    # 4 GPUs in use, three TP2 pods Pending: two nodes fit under the ceiling of 8, the third not.
    state.step(10.0, used=4, pending=[2, 2, 2])
    assert state.coming == [(190.0, 2), (190.0, 2)]
    # Nodes on their way count: the same pods seen again ask for no more.
    state.step(100.0, used=4, pending=[2, 2, 2])
    assert len(state.coming) == 2
    state.step(189.0, used=4, pending=[2, 2, 2])
    assert state.gpus == 4
    state.step(190.0, used=4, pending=[2, 2, 2])
    assert (state.gpus, state.coming, state.nodes_added) == (8, [], 2)


def test_a_pod_that_fits_the_free_gpus_asks_for_no_node() -> None:
    state = ClusterState(ClusterModel(gpus=4, node_delay_s=180.0, max_gpus=16))
    state.step(0.0, used=2, pending=[2])
    assert state.coming == []
    state.step(0.0, used=2, pending=[2, 1])
    assert state.coming == [(180.0, 1)]


def test_an_added_node_unused_for_the_scale_down_time_goes_and_the_first_ones_stay() -> None:
    state = ClusterState(ClusterModel(gpus=2, node_delay_s=60.0, max_gpus=6, scale_down_s=600.0))
    state.step(0.0, used=2, pending=[2, 2])
    state.step(60.0, used=6, pending=[])
    assert state.gpus == 6
    state.step(100.0, used=2, pending=[])  # the load fell: 4 GPUs unused from now
    state.step(699.0, used=2, pending=[])
    assert state.gpus == 6
    state.step(700.0, used=2, pending=[])
    assert (state.gpus, state.nodes_removed) == (4, 1)
    state.step(1300.0, used=2, pending=[])
    assert state.gpus == 2
    state.step(5000.0, used=0, pending=[])
    assert state.gpus == 2  # the cluster's own nodes are never removed


def test_the_instant_bounds_get_nodes_at_once_but_never_beyond_the_ceiling() -> None:
    state = ClusterState(ClusterModel(gpus=2, node_delay_s=300.0, max_gpus=4), delayed=False)
    state.step(0.0, used=2, pending=[2, 2])
    assert (state.gpus, state.coming) == (4, [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpus": -1}, "≥ 0"),
        ({"gpus": 4, "node_delay_s": -1.0}, "node delay"),
        ({"gpus": 8, "node_delay_s": 60.0, "max_gpus": 4}, "below"),
    ],
)
def test_a_malformed_cluster_is_refused_with_a_reason(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClusterModel(**kwargs)  # type: ignore[arg-type]


def test_the_cli_flags_build_the_cluster_and_refuse_a_ceiling_without_an_autoscaler() -> None:
    assert cluster_model(None, None, None) is None
    assert cluster_model(8, None, None) == ClusterModel(8)
    assert cluster_model(4, "3m", 16) == ClusterModel(4, 180.0, 16)
    unlimited = cluster_model(4, "3m", None)
    assert unlimited is not None and unlimited.autoscaled
    with pytest.raises(ValueError, match="need --cluster-gpus"):
        cluster_model(None, "3m", None)
    with pytest.raises(ValueError, match="needs --node-delay"):
        cluster_model(4, None, 16)


class FixedAsk:
    """Asks for ``replicas`` bf16 replicas from the first tick and records what it observes."""

    name = "fixed-ask"
    period_s = 15.0

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.views: list[FleetView] = []

    def start(self, fleet: Fleet) -> Command:
        return Command("bf16", 1, 8)

    def tick(self, view: FleetView) -> Command:
        self.views.append(view)
        return Command("bf16", self.replicas, 8)


def test_the_fleet_reports_pending_pods_with_their_age_until_the_node_comes(spec: GRMDeploymentSpec) -> None:
    # 2 GPUs at the start (one bf16 replica), a node autoscaler to 8 after 180 s; 4 replicas asked
    # for at the first tick (t = 15 s): three Pending from then until their nodes are Ready.
    cluster = ClusterModel(gpus=2, node_delay_s=180.0, max_gpus=8)
    controller = FixedAsk(4)
    Fleet(SimConfig(spec=spec, trace=constant_trace(0.5, 600), cluster=cluster), controller).run()
    by_time = {v.now: v.observation for v in controller.views}
    waiting = by_time[150.0]
    assert waiting.pending["bf16"] == 3
    assert waiting.pending_since["bf16"] == (15.0, 15.0, 15.0)
    assert waiting.unschedulable("bf16", 150.0, grace_s=120.0) == 3
    assert waiting.unschedulable("bf16", 150.0, grace_s=300.0) == 0
    # The nodes asked for at the 15-s tick (the scheduler's pass right after the request) are
    # Ready 180 s later; the next tick finds the pods scheduled.
    after = by_time[210.0]
    assert after.pending["bf16"] == 0 and "bf16" not in after.pending_since


def test_without_an_autoscaler_pods_beyond_the_cluster_stay_pending(spec: GRMDeploymentSpec) -> None:
    controller = FixedAsk(4)
    config = SimConfig(spec=spec, trace=constant_trace(0.5, 600), cluster=ClusterModel(gpus=4))
    result = Fleet(config, controller).run()
    assert controller.views[-1].observation.pending["bf16"] == 2
    assert max(p.gpus for p in result.series) == 4


def test_an_autoscaler_without_a_limit_grows_the_fleet_to_max_gpus(spec: GRMDeploymentSpec) -> None:
    controller = FixedAsk(8)  # 16 GPUs asked for; the demo spec's maxGPUs is 12
    cluster = ClusterModel(gpus=2, node_delay_s=60.0)
    config = SimConfig(spec=spec, trace=constant_trace(0.5, 600), cluster=cluster)
    assert config.gpu_ceiling() == spec.max_gpus() == 12
    result = Fleet(config, controller).run()
    assert max(p.gpus for p in result.series) == 12


def test_the_bounds_use_no_gpu_the_cluster_never_had(spec: GRMDeploymentSpec) -> None:
    # 3 score requests/s at k = 8 need more than 4 GPUs; the cluster has 4 and no autoscaler: no
    # bound (the instant ones included) holds more than 4 GPUs at any time.
    config = SimConfig(spec=spec, trace=constant_trace(3.0, 300), cluster=ClusterModel(gpus=4))
    assert config.gpu_ceiling() == 4
    results = run_policies(config, ["oracle-max", "oracle", "oracle-cold", "grm"], progress=False)
    for name, result in results.items():
        assert max(p.gpus for p in result.series) <= 4, name
    assert results["grm"].slo_attainment <= results["oracle-max"].slo_attainment + 1e-9
