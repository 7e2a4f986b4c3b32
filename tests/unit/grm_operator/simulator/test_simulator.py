"""The fleet simulator: engine timing, determinism, conservation, the oracle bound, sanity, the CLI.

Runs use the bundled trace slice (485 requests of the Azure conversational hour) and small
synthetic traces, so the whole file takes a few seconds.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from grm_operator import cli
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy import PolicyState
from grm_operator.policy.coldstart import cold_start
from grm_operator.policy.coldstart import cold_start as estimate
from grm_operator.policy.types import Decision, Observation
from grm_operator.simulator.cli import load_spec
from grm_operator.simulator.controller import Command, FleetView
from grm_operator.simulator.engine import Group, Replica, StepSample
from grm_operator.simulator.fleet import Fleet, SimConfig
from grm_operator.simulator.pod import Pod
from grm_operator.simulator.policies import POLICIES
from grm_operator.simulator.policies.baselines import StaticPeak
from grm_operator.simulator.policies.grm import Grm
from grm_operator.simulator.report import run_policies
from grm_operator.simulator.results import RunResult
from grm_operator.simulator.scrape import window_signals
from grm_operator.simulator.trace import Trace, load_trace
from grm_worker.contract.perfmodel import profile_for, step_time_s

DATA = resources.files("grm_operator") / "data"
SUMMARY_KEYS = {
    "slo_attainment",
    "gpu_hours",
    "mean_quality",
    "p95_ttft_s",
    "p95_e2e_s",
    "switches",
    "scale_events",
    "rejected",
}


@pytest.fixture(scope="module")
def spec() -> GRMDeploymentSpec:
    with resources.as_file(DATA / "demo-spec.yaml") as path:
        return load_spec(path)


@pytest.fixture(scope="module")
def slice_trace() -> Trace:
    with resources.as_file(DATA / "azure-conv-slice.csv") as path:
        return load_trace(path).scaled(8.0)


def constant_trace(rate: float, seconds: float, prompt: int = 1000, output: int = 200) -> Trace:
    n = int(rate * seconds)
    times = np.arange(n, dtype=np.float64) / rate
    return Trace(times, np.full(n, prompt, np.int64), np.full(n, output, np.int64), "constant")


def with_scaling(spec: GRMDeploymentSpec, **scaling: int) -> GRMDeploymentSpec:
    data = spec.model_dump(by_alias=True, exclude_none=True)
    data["scaling"].update(scaling)
    return GRMDeploymentSpec.model_validate(data)


def test_engine_times_a_lone_request_step_by_step_with_the_perf_model() -> None:
    # One request, k = 1, no jitter: one prefill step of 100 tokens emits the first token, then
    # 4 decode steps over contexts 101..104 — the closed form must equal the step-by-step sum.
    profile = profile_for("fp8")
    engine = Replica(profile, random.Random(0), jitter=0.0)
    group = Group(0, 0.0, 100, 5, 1, False, 1.0)
    engine.submit(group, 0.0)
    done: list[Group] = []
    steps: list[StepSample] = []
    engine.advance(100.0, done, steps)
    first = step_time_s(profile, 100, 0, 0)
    decode = sum(step_time_s(profile, 0, 1, 101 + i) for i in range(4))
    assert done == [group]
    assert group.first_token == pytest.approx(first)
    assert group.finished == pytest.approx(first + decode)
    assert sum(s.tokens for s in steps) == 4


def test_engine_chunks_shuffled_prefill_and_gives_the_first_sample_its_own_first_token() -> None:
    # k = 4 shuffled samples of a 3000-token prompt: 12000 prefill tokens, 8192 a step. Sample 1's
    # prompt completes in step 1 (its first token then); the last sample's in step 2.
    profile = profile_for("fp8")
    engine = Replica(profile, random.Random(0), jitter=0.0)
    group = Group(0, 0.0, 3000, 2, 4, False, 1.0)
    engine.submit(group, 0.0)
    engine.advance(100.0, [], [])
    step1 = step_time_s(profile, 8192, 0, 0)
    step2 = step_time_s(profile, 12000 - 8192, 0, 0)
    assert group.first_token == pytest.approx(step1)
    assert group.last_first_token == pytest.approx(step1 + step2)


def test_engine_keeps_requests_waiting_while_running_prompts_fill_the_token_budget() -> None:
    # Three 6000-token prompts at once, KV room for all: as vLLM V1 schedules, the first takes 6000
    # of the step's 8192 tokens and the second the rest (chunked); the third waits (a queue the
    # workers see and shed on) until the first prompt is prefilled, not admitted into a backlog.
    profile = profile_for("fp8")
    engine = Replica(profile, random.Random(0), jitter=0.0)
    groups = [Group(i, 0.0, 6000, 50, 1, False, 1.0) for i in range(3)]
    for g in groups:
        engine.submit(g, 0.0)
    engine.advance(1e-6, [], [])
    assert [g.admitted for g in groups[:2]] == [0.0, 0.0]
    assert list(engine.waiting) == [groups[2]]
    engine.advance(100.0, [], [])
    first_prefilled = groups[0].first_token
    assert first_prefilled is not None and groups[2].admitted == pytest.approx(first_prefilled)


def test_a_replica_sheds_as_its_worker_reads_the_queue_not_on_every_waiting_request() -> None:
    # The worker reads its engine's queue once a second and sheds only for a full batch: requests
    # wait and those admitted since its last read waited 0.25 s or more on average. Chunked
    # prefill keeps a request or two waiting a step at moderate load; that must not shed.
    engine = Replica(profile_for("fp8"), random.Random(0), jitter=0.0)
    pod = Pod("fp8", 1, engine, 0.0, 0.0, scheduled=0.0, ready_at=0.0)
    engine.waiting.append(Group(0, 0.0, 1000, 10, 2, False, 1.0))  # 2 sequences waiting
    engine.admitted_seqs, engine.queued_s = 100, 1.0
    assert pod.read_queue(10.0) is False  # one read: no interval yet
    engine.admitted_seqs, engine.queued_s = 130, 1.9  # 30 admitted after 30 ms each
    assert pod.read_queue(11.0) is False
    engine.admitted_seqs, engine.queued_s = 140, 9.9  # 10 admitted after 0.8 s each: full
    assert pod.read_queue(12.0) is True and pod.batch_full  # stands until the next read
    engine.waiting.clear()
    assert pod.read_queue(13.0) is False


def test_a_seed_makes_a_run_reproducible(spec: GRMDeploymentSpec, slice_trace: Trace) -> None:
    config = SimConfig(spec=spec, trace=slice_trace, seed=3)
    first = run_policies(config, ["grm", "kpa"], progress=False)
    second = run_policies(config, ["grm", "kpa"], progress=False)
    assert {n: r.summary() for n, r in first.items()} == {n: r.summary() for n, r in second.items()}
    other = run_policies(SimConfig(spec=spec, trace=slice_trace, seed=4), ["grm"], progress=False)
    assert other["grm"].p95_e2e_s != first["grm"].p95_e2e_s  # the seed drives the step jitter


@pytest.fixture(scope="module")
def all_policies(spec: GRMDeploymentSpec, slice_trace: Trace) -> dict[str, RunResult]:
    return run_policies(SimConfig(spec=spec, trace=slice_trace, seed=0), list(POLICIES), progress=False)


def test_every_request_is_served_or_counted_rejected(all_policies: dict[str, RunResult]) -> None:
    for name, result in all_policies.items():
        assert result.served + result.rejected == result.total == 485, name


def test_oracle_uses_no_more_gpu_hours_than_any_policy_that_meets_the_slo_as_often(
    all_policies: dict[str, RunResult],
) -> None:
    # The oracle is the fewest GPUs that hold the SLO at the best admissible quality that fits: a
    # policy may spend less only by missing it more often or by serving lower (still admissible)
    # quality — grm bridging cold starts with fewer samples does — so the bound is over the
    # policies at least as good on both.
    oracle = all_policies["oracle"]
    assert oracle.slo_attainment >= 0.97
    bounded = [
        name
        for name, result in all_policies.items()
        if result.slo_attainment >= oracle.slo_attainment
        and result.mean_quality >= oracle.mean_quality - 1e-9
    ]
    assert "static-peak" in bounded
    for name in bounded:
        assert oracle.gpu_hours <= all_policies[name].gpu_hours + 1e-9, name
    assert all_policies["static-peak"].gpu_hours > oracle.gpu_hours


def test_oracle_cold_provisions_a_step_one_cold_start_ahead_and_pays_for_it(spec: GRMDeploymentSpec) -> None:
    # 0.05 score requests/s for 10 minutes, then 12/s for 5: the oracle's replicas start instantly
    # at the step; oracle-cold must ask for them a cold start earlier (125–276 s by variant: the
    # 27B checkpoint's size, grm_operator.policy.coldstart) to have
    # them Ready, and their GPUs count from the request.
    quiet, busy = constant_trace(0.05, 600), constant_trace(12.0, 300)
    trace = Trace(
        np.concatenate([quiet.times, busy.times + 600.0]),
        np.concatenate([quiet.prompt, busy.prompt]),
        np.concatenate([quiet.output, busy.output]),
        "step",
    )
    results = run_policies(SimConfig(spec=spec, trace=trace), ["oracle", "oracle-cold"], progress=False)
    cold_start = min(estimate(spec, v).seconds for v in spec.variants)

    def first_scale_up(result: RunResult) -> float:
        start = sum(result.series[0].replicas.values())
        return min(p.time for p in result.series if sum(p.replicas.values()) > start)

    assert first_scale_up(results["oracle"]) >= 600.0 - 60.0  # the minute of the step at the earliest
    assert first_scale_up(results["oracle-cold"]) <= 600.0 - cold_start
    assert results["oracle-cold"].slo_attainment >= 0.99
    assert results["oracle-cold"].gpu_hours > results["oracle"].gpu_hours


def test_static_peak_at_very_low_load_meets_the_slo(spec: GRMDeploymentSpec) -> None:
    config = SimConfig(spec=spec, trace=constant_trace(0.05, 600))
    result = run_policies(config, ["static-peak"], progress=False)["static-peak"]
    assert result.slo_attainment >= 0.99
    assert result.rejected == 0


def with_scoring(spec: GRMDeploymentSpec, **scoring: str) -> GRMDeploymentSpec:
    data = spec.model_dump(by_alias=True, exclude_none=True)
    data["scoring"].update(scoring)
    return GRMDeploymentSpec.model_validate(data)


def test_a_queued_replica_sheds_samples_to_the_floor_and_reports_them() -> None:
    # One bf16 replica at 3 score requests/s of k = 8 has a queue most of the time: requests that
    # meet it run at bf16's floor (k = 2: 0.97 admits voting over 2 of 8), the rest at 8.
    with resources.as_file(DATA / "demo-spec.yaml") as path:
        single = with_scaling(load_spec(path), maxReplicas=1, maxGPUs=2)
    trace = constant_trace(3.0, 300)
    runs = {}
    for mode in ("OnQueue", "Off"):
        fleet = Fleet(SimConfig(spec=with_scoring(single, shedSamples=mode), trace=trace), StaticPeak(single))
        runs[mode] = (fleet, fleet.run())
    shedding, shed_result = runs["OnQueue"]
    shed = [g for g in shedding.done if g.shed]
    assert shed and len(shed) < len(shedding.done)
    assert {g.samples for g in shed} == {2} and {g.shed for g in shed} == {6}
    assert shed_result.mean_quality >= single.precision.min_quality
    off, off_result = runs["Off"]
    assert not any(g.shed for g in off.done) and off_result.mean_quality == 1.0
    assert shed_result.slo_attainment > off_result.slo_attainment + 0.3
    # The policy sees them: a scrape's shed rate is its window's shed samples per second.
    window = [g for g in shedding.done if g.finished is not None and 200.0 < g.finished <= 260.0]
    signals = window_signals(window, [], [], 260.0, shedding.window_s)
    assert signals.shed_sps == pytest.approx(sum(g.shed for g in window) / 60.0)
    assert signals.shed_sps is not None and signals.shed_sps > 0


def test_one_replica_at_very_high_load_does_not(spec: GRMDeploymentSpec) -> None:
    single = with_scaling(spec, maxReplicas=1, maxGPUs=2)
    # 6 requests/s: at 3/s the replica still served 77 % within the SLO, shedding to 1 sample.
    config = SimConfig(spec=single, trace=constant_trace(6.0, 300))
    result = run_policies(config, ["static-peak"], progress=False)["static-peak"]
    assert result.slo_attainment < 0.5
    assert result.served + result.rejected == result.total


def test_model_error_makes_the_same_fleet_slower(spec: GRMDeploymentSpec, slice_trace: Trace) -> None:
    exact = run_policies(SimConfig(spec=spec, trace=slice_trace), ["static-peak"], progress=False)
    slow = run_policies(
        SimConfig(spec=spec, trace=slice_trace, model_error=1.4), ["static-peak"], progress=False
    )
    assert slow["static-peak"].p95_e2e_s > exact["static-peak"].p95_e2e_s * 1.2


def test_simulate_cli_writes_issue_6_json_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    plot = tmp_path / "out.png"
    with (
        resources.as_file(DATA / "azure-conv-slice.csv") as trace,
        resources.as_file(DATA / "demo-spec.yaml") as sp,
    ):
        status = cli.main(
            [
                "simulate",
                "--trace", str(trace),
                "--spec", str(sp),
                "--policy", "grm,oracle",
                "--rate-scale", "8",
                "--samples", "4",
                "--model-error", "1.4",
                "--seed", "1",
                "--limit", "150",
                "--json", str(out),
                "--plot", str(plot),
            ]
        )  # fmt: skip
    assert status == 0
    doc = json.loads(out.read_text())
    # The bounds add what they share: the attainment target and the requests no point serves.
    assert set(doc) == {"policies", "bounds"}
    assert {"target", "unservable", "total"} <= set(doc["bounds"])
    assert doc["bounds"]["total"] == 150
    assert set(doc["policies"]) == {"grm", "oracle"}
    for summary in doc["policies"].values():
        assert set(summary) == SUMMARY_KEYS
        assert 0.0 <= summary["slo_attainment"] <= 1.0
        assert summary["gpu_hours"] > 0
    assert 0 < plot.stat().st_size < 200_000
    table = capsys.readouterr().out
    assert "grm" in table and "oracle" in table and "k = 4" in table


def test_simulate_cli_rejects_an_unknown_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (
        resources.as_file(DATA / "azure-conv-slice.csv") as trace,
        resources.as_file(DATA / "demo-spec.yaml") as sp,
    ):
        status = cli.main(["simulate", "--trace", str(trace), "--spec", str(sp), "--policy", "grm,nope"])
    assert status == 2
    assert "unknown policy" in capsys.readouterr().err


def test_a_tight_gpu_budget_forces_the_ladder_and_is_never_exceeded(spec: GRMDeploymentSpec) -> None:
    # 6 GPUs: bf16 (2 GPUs a replica) holds 3 replicas, too few for 2 score requests/s at k = 8,
    # so the policy steps down the ladder; the surge of a switch counts within the budget.
    tight = with_scaling(spec, maxReplicas=6, maxGPUs=6)
    config = SimConfig(spec=tight, trace=constant_trace(2.0, 900, prompt=1000, output=200))
    result = run_policies(config, ["grm"], progress=False)["grm"]
    assert max(p.gpus for p in result.series) <= 6
    assert result.switches + sum(1 for p in result.series if p.samples < 8) > 0
    assert result.served + result.rejected == result.total


def test_demo_runs_every_policy_on_the_bundled_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "demo.png"
    out = tmp_path / "demo.json"
    assert cli.main(["demo", "--plot", str(plot), "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["policies"]) == set(POLICIES)
    assert 0 < plot.stat().st_size < 200_000
    printed = capsys.readouterr().out
    assert all(name in printed for name in POLICIES)


def with_shadow(spec: GRMDeploymentSpec, fraction: float) -> GRMDeploymentSpec:
    data = spec.model_dump(by_alias=True, exclude_none=True)
    data["precision"]["shadow"] = {"fraction": fraction, "window": "10m"}
    return GRMDeploymentSpec.model_validate(data)


def test_the_simulator_skips_a_variant_demoted_by_its_live_agreement(spec: GRMDeploymentSpec) -> None:
    # 4 score requests/s on 6 GPUs: bf16 (3 replicas) runs out of samples to shed and grm steps
    # down to fp8 after about 6 minutes. Every request is shadowed (fraction 1, so the 125
    # comparisons a 0.97 floor needs come within a minute): an fp8 that agrees with bf16 on half
    # the verdicts is demoted and the ladder goes on without it (int4, or fewer samples of bf16);
    # one that always agrees serves on.
    # A model of unknown size: replicas start in the precision priors' 45–90 s (not the 27B's
    # 125–276 s), so the hand-overs fit 15 minutes.
    data = with_shadow(with_scaling(spec, maxReplicas=8, maxGPUs=6), 1.0).model_dump(
        by_alias=True, exclude_none=True
    )
    data["model"]["name"] = "deepseek-ai/DeepSeek-GRM"
    tight = GRMDeploymentSpec.model_validate(data)
    trace = constant_trace(4.0, 900, prompt=1000, output=200)
    good = run_policies(SimConfig(spec=tight, trace=trace), ["grm"], progress=False)["grm"]
    bad = run_policies(
        SimConfig(spec=tight, trace=trace, live_agreement={"fp8": 0.5}), ["grm"], progress=False
    )["grm"]
    served_fp8 = [p.time for p in good.series if p.active == "fp8"]
    assert served_fp8 and served_fp8[-1] == good.series[-1].time  # fp8 serves to the end
    bad_fp8 = [p.time for p in bad.series if p.active == "fp8"]
    assert bad_fp8, "fp8 must serve before it is found out"
    first, last = bad_fp8[0], bad_fp8[-1]
    # Demoted within a minute of serving: the switch away starts then and takes as long as a
    # rolling hand-over of 6 GPUs takes (bf16's cold start per batch); fp8 never comes back.
    assert bad_fp8 == [p.time for p in bad.series if first <= p.time <= last], "fp8 came back"
    assert last < bad.series[-1].time and bad.series[-1].active in {"bf16", "int4"}
    assert bad.served + bad.rejected == bad.total


def test_the_simulated_operator_learns_the_replicas_cold_start_as_the_operator_does(
    spec: GRMDeploymentSpec,
) -> None:
    # Replicas that start in 40 s where the 27B's size estimate says 125-276 s (a local NVMe):
    # 0.5 score requests/s for 5 minutes, then 4/s, which needs more replicas; the scale-up's
    # pods are measured (scheduling to Ready) into the policy's memory, as on a cluster.
    low, high = constant_trace(0.5, 300), constant_trace(4.0, 600)
    trace = Trace(
        np.concatenate([low.times, 300.0 + high.times]),
        np.concatenate([low.prompt, high.prompt]),
        np.concatenate([low.output, high.output]),
        "step",
    )
    grm = Grm(spec)
    Fleet(SimConfig(spec=spec, trace=trace, cold_start_s=40.0), grm).run()
    learnt = PolicyState.from_dict(grm.status.get("policyState")).cold_starts
    samples = [s for starts in learnt.values() for s in starts]
    assert len(samples) >= 2 and {s.seconds for s in samples} == {40.0}
    assert any(
        cold_start(spec, spec.variant(name), starts).basis == "measured" for name, starts in learnt.items()
    )


def test_the_simulated_operator_consults_no_policy_while_a_switch_is_in_progress(
    spec: GRMDeploymentSpec,
) -> None:
    # As the operator's autoscaler (handlers.autoscale): while status.switch is set only the switch
    # acts; the policy is not consulted, so neither its memory nor the sample budget moves. The
    # simulator consulted it on every tick, so the benchmark credited both policies with sample cuts
    # and learning mid-switch that the operator never makes (docs/benchmark.md).
    # 4 score requests/s on 6 GPUs: bf16 runs out of samples to shed and steps down to fp8 (as in
    # the demotion test above, a model of unknown size so that replicas start in 45-90 s).
    data = with_scaling(spec, maxReplicas=8, maxGPUs=6).model_dump(by_alias=True, exclude_none=True)
    data["model"]["name"] = "deepseek-ai/DeepSeek-GRM"
    tight = GRMDeploymentSpec.model_validate(data)
    grm = Grm(tight)
    consulted: list[float] = []
    during_switch: list[float] = []
    policy = grm.policy

    def spy(
        obs: Observation, state: PolicyState, spec: GRMDeploymentSpec, now: float
    ) -> tuple[Decision, PolicyState]:
        consulted.append(now)
        if grm.status.get("switch"):
            during_switch.append(now)
        return policy(obs, state, spec, now)

    grm.policy = spy
    switching: list[float] = []
    tick = grm.tick

    def watched(view: FleetView) -> Command:
        if grm.status.get("switch"):
            switching.append(view.now)
        return tick(view)

    grm.tick = watched  # type: ignore[method-assign]
    result = Fleet(SimConfig(spec=tight, trace=constant_trace(4.0, 900, prompt=1000, output=200)), grm).run()
    assert result.switches >= 1 and switching, "the load must make the policy switch"
    assert consulted, "the policy runs between switches"
    assert not during_switch, f"consulted mid-switch at {during_switch[:5]}"
