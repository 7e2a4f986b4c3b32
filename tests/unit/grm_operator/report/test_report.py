"""The report's reductions and what-ifs on a fake Prometheus that answers range queries from a
known fleet (support.report_prometheus): 2 bf16 replicas (2 GPUs each) for the first half, 1 fp8
replica after, a load that repeats every 6 minutes, latency histograms with a known share under
the SLO."""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.report.cli import ReportError, add_arguments, parse_time, run
from grm_operator.report.document import to_json, to_markdown
from grm_operator.report.history import (
    QUERIES,
    HistoryError,
    counter_increases,
    fetch_history,
    fraction_within,
    histogram_quantile,
    selector,
)
from grm_operator.report.usage import summarise
from grm_operator.report.whatif import (
    ENSEMBLE_RUNS,
    Outcome,
    Scenario,
    arrival_trace,
    parse_candidate,
    recommend,
    replay_ensemble,
    replica_speed,
    run_scenario,
    scenarios,
)
from support.report_prometheus import (
    BINS,
    NAME,
    NS,
    SPEC,
    START,
    STEP,
    FakePrometheus,
    fake_report,
    requests_in_minute,
)


def _history(fake: FakePrometheus | None = None) -> Any:
    return fetch_history(
        fake or FakePrometheus(),
        sel=selector(NS, NAME),
        start=START,
        end=START + BINS * STEP,
        step_s=STEP,
        resolution_s=15.0,
    )


def test_fraction_within_interpolates_inside_the_bucket_holding_the_target() -> None:
    buckets = {10.0: 80.0, 15.0: 100.0, 20.0: 120.0, math.inf: 120.0}
    assert fraction_within(buckets, 20.0) == (120.0, 120.0)
    assert fraction_within(buckets, 12.0) == pytest.approx((88.0, 120.0))
    assert fraction_within(buckets, 5.0) == pytest.approx((40.0, 120.0))
    # Beyond the highest finite bound: what the +Inf bucket holds is not known to be within.
    assert fraction_within({1.0: 5.0, math.inf: 9.0}, 3.0) == (5.0, 9.0)
    assert fraction_within({}, 1.0) == (0.0, 0.0)


def test_counter_increases_per_bin_across_new_pods_and_resets() -> None:
    nan = math.nan
    # Absent at the start (a new pod: from 0), growing, gone for a bin, back after a restart.
    assert counter_increases([nan, 2, 5, nan, 1, 0.5]) == [2, 3, 0, 1, 0.5]
    # Counted before the range: only what it gained inside counts.
    assert counter_increases([100, 100, 103]) == [0, 3]


def test_histogram_quantile_is_promql_s() -> None:
    # docs/metrics.md: 120 at 0.3 s and 60 at 0.7 s in vLLM's TTFT buckets → p95 = 0.7125 s.
    buckets = {0.25: 0.0, 0.3: 120.0, 0.4: 120.0, 0.5: 120.0, 0.75: 180.0, 1.0: 180.0, math.inf: 180.0}
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.7125)
    assert histogram_quantile(0.95, {1.0: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.95, {1.0: 1.0, math.inf: 10.0}) == 1.0  # rank in +Inf: highest bound


def test_every_query_selects_the_deployment_and_uses_the_bin() -> None:
    fake = FakePrometheus()
    history = _history(fake)
    assert len(fake.calls) == len(QUERIES)
    for query, step in fake.calls:
        assert '{namespace="rl",grm_dev_deployment="reward"}' in query
        assert step == "60s"
        assert "{" + "selector}" not in query and "{step}" not in query
    assert (
        "[60s:15s]) / on() group_left() count_over_time(vector(1)[60s:15s]) * 60"
        in history.queries["pod_seconds"]
    )
    assert selector("rl", None) == '{namespace="rl",grm_dev_deployment!=""}'


def test_a_failing_query_names_itself() -> None:
    with pytest.raises(HistoryError, match="ttft_buckets failed: connection refused"):
        _history(FakePrometheus(fail="time_to_first_token"))
    with pytest.raises(HistoryError, match="shorter than one step"):
        fetch_history(FakePrometheus(), sel="{}", start=START, end=START + 30, step_s=STEP, resolution_s=15)


def test_usage_per_variant_from_the_series() -> None:
    usage = summarise(_history(), GRMDeploymentSpec.model_validate(SPEC))
    bf16, fp8 = usage.variants["bf16"], usage.variants["fp8"]
    # 18 minutes of 2 bf16 pods at 2 GPUs, then 18 of one fp8 pod at 1 GPU.
    assert bf16.hours_active == pytest.approx(0.3)
    assert bf16.replica_hours == pytest.approx(0.6)
    assert bf16.gpu_hours == pytest.approx(1.2)
    assert fp8.gpu_hours == pytest.approx(0.3)
    assert usage.gpu_hours == pytest.approx(1.5)
    assert usage.peak_gpus == pytest.approx(4.0)
    total = sum(requests_in_minute(i) for i in range(BINS))
    total_bf16 = sum(requests_in_minute(i) for i in range(BINS // 2))
    assert usage.requests == pytest.approx(total)
    assert usage.outcomes == {"ok": total - BINS, "rejected": BINS}
    assert bf16.request_share + fp8.request_share == pytest.approx(1.0)
    assert bf16.samples_per_request == pytest.approx(4.0 * (total_bf16 - 18) / total_bf16)
    assert bf16.shed_samples == pytest.approx(2.0 * 18)
    # e2e: 80 % of the timed requests within 20 s? No: 80 % ≤ 10 s, the rest in (10, 30]: a 20-s
    # target interpolates half of them in → 90 % of the timed ones; one rejected a bin is a miss.
    timed = total - BINS
    assert usage.e2e_attainment == pytest.approx(0.9 * timed / total)
    assert usage.ttft_attainment == pytest.approx(1.0)
    assert usage.slo_attainment == usage.e2e_attainment
    assert bf16.quality == 1.0 and bf16.quality_source == "declared"
    assert usage.arrivals.prompt_tokens[0] == pytest.approx(200) and usage.arrivals.output_tokens[
        0
    ] == pytest.approx(100)
    assert usage.e2e_p95[0] is not None and 10.0 < usage.e2e_p95[0] < 30.0
    assert usage.mean_e2e_s == pytest.approx(0.8 * 8 + 0.2 * 20)


def test_usage_per_sample_budget_splits_each_variant_by_the_budget_its_bins_ended_with() -> None:
    usage = summarise(_history(), GRMDeploymentSpec.model_validate(SPEC))
    bf16, fp8 = usage.variants["bf16"], usage.variants["fp8"]
    # bf16 ran 9 minutes at k = 4, then 9 at k = 2 (2 pods × 2 GPUs); fp8 18 minutes at k = 4.
    assert [(b.samples, round(b.gpu_hours, 6)) for b in bf16.budgets] == [(2, 0.6), (4, 0.6)]
    assert [(b.samples, round(b.hours_active, 6)) for b in fp8.budgets] == [(4, 0.3)]
    assert sum(b.gpu_hours for b in bf16.budgets) == pytest.approx(bf16.gpu_hours)
    assert sum(b.request_share for b in bf16.budgets) == pytest.approx(bf16.request_share)
    at_2 = bf16.budgets[0]
    assert at_2.requests == pytest.approx(sum(requests_in_minute(i) for i in range(9, 18)))
    assert at_2.ttft_attainment == pytest.approx(1.0)
    # 90 % of the answered ones within 20 s; its share of the 36 rejected requests are misses.
    assert at_2.e2e_attainment == pytest.approx(
        0.9 * (at_2.requests - 9) / (at_2.requests - 9 + 36 * at_2.request_share)
    )


def test_measured_quality_from_status_wins() -> None:
    status = {"variants": [{"name": "fp8", "quality": {"value": 0.97, "low": 0.95, "high": 0.98}}]}
    usage = summarise(_history(), GRMDeploymentSpec.model_validate(SPEC), status)
    assert usage.variants["fp8"].quality == 0.97 and usage.variants["fp8"].quality_source == "measured"


def test_the_period_of_the_load_is_found() -> None:
    usage = summarise(_history(), GRMDeploymentSpec.model_validate(SPEC))
    period = usage.arrivals.periodicity
    assert period is not None
    assert period.period_s == pytest.approx(360.0, rel=0.1)
    assert usage.arrivals.peak_rps == pytest.approx(0.5)


def test_arrivals_keep_the_count_and_the_bins() -> None:
    usage = summarise(_history(), GRMDeploymentSpec.model_validate(SPEC))
    trace = arrival_trace(usage.arrivals)
    assert len(trace) == round(usage.requests)
    # 30 requests in the first minute, evenly spaced: 2 s apart.
    assert trace.times[1] - trace.times[0] == pytest.approx(2.0)
    assert int(trace.prompt[0]) == 200 and int(trace.output[0]) == 100


def test_scenarios_are_valid_specs_with_their_patches() -> None:
    spec = GRMDeploymentSpec.model_validate(SPEC)
    cand = parse_candidate(
        "name=int4,precision=awq-int4,quality=0.992,gpusPerReplica=1,uri=pvc://models/m-awq"
    )
    found, skipped = scenarios(spec, [cand])
    keys = [s.key for s in found]
    assert keys[0] == "replay"
    assert {"drop-bf16", "drop-fp8", "add-int4", "slo-relaxed", "slo-tightened"} <= set(keys)
    assert {"maxgpus-2", "maxgpus-6"} <= set(keys)
    add = next(s for s in found if s.key == "add-int4")
    assert [v.name for v in add.spec.variants] == ["bf16", "fp8", "int4"]
    assert add.patch is not None and add.patch["spec"]["variants"][2]["uri"] == "pvc://models/m-awq"
    drop = next(s for s in found if s.key == "drop-bf16")
    assert [v.name for v in drop.spec.variants] == ["fp8"]
    # The candidate in place of each variant, the ladder kept in quality order.
    instead = {s.key: s for s in found if s.kind == "replace"}
    assert set(instead) == {"replace-bf16-int4", "replace-fp8-int4"}
    assert [v.name for v in instead["replace-bf16-int4"].spec.variants] == ["fp8", "int4"]
    assert [v.name for v in instead["replace-fp8-int4"].spec.variants] == ["bf16", "int4"]
    assert instead["replace-bf16-int4"].title == "with int4 instead of bf16 (quality 0.992)"
    assert instead["replace-bf16-int4"].recommendable
    relaxed = next(s for s in found if s.key == "slo-relaxed")
    assert relaxed.spec.slo.e2e_p95_s == 30.0 and not relaxed.recommendable
    assert skipped == []
    # An int4 candidate without its checkpoint is not a valid variant: left out with the reason.
    _, skipped = scenarios(spec, [parse_candidate("name=int4,precision=awq-int4,quality=0.992")])
    assert skipped and "with int4" in skipped[0] and "not a valid spec" in skipped[0]
    # One under the quality floor (0.99) would never be served: left out, and said why.
    found, skipped = scenarios(spec, [parse_candidate("name=int4,precision=awq-int4,uri=/m,quality=0.97")])
    assert "add-int4" not in [s.key for s in found]
    assert skipped and "below precision.minQuality 0.99" in skipped[0]
    # The pinned variant stays: no scenario replaces it.
    pinned = GRMDeploymentSpec.model_validate(
        {**SPEC, "precision": {**SPEC.get("precision", {}), "policy": "Pinned", "pinnedVariant": "bf16"}}
    )
    found, skipped = scenarios(pinned, [cand])
    assert [s.key for s in found if s.kind == "replace"] == ["replace-fp8-int4"]
    assert "with int4 instead of bf16: bf16 is the pinned variant" in skipped
    with pytest.raises(ValueError, match="needs quality"):
        parse_candidate("name=x,precision=fp8")


def _outcome(
    spec: GRMDeploymentSpec, key: str, gpu: float, att: float, quality: float, kind: str = "drop"
) -> Outcome:
    scenario = Scenario(key, key, kind, spec, None if kind == "replay" else {"spec": {}}, kind != "replay")
    return Outcome(scenario, gpu, att, att, att, quality, 0, 0)


def test_recommendations_save_gpu_hours_at_equal_attainment_and_admissible_quality() -> None:
    spec = GRMDeploymentSpec.model_validate(SPEC)
    outcomes = [
        _outcome(spec, "replay", 10.0, 0.99, 1.0, "replay"),
        _outcome(spec, "small", 9.0, 0.99, 1.0),  # saves 1
        _outcome(spec, "big", 5.0, 0.987, 0.995),  # saves 5 within the 0.5-pp tolerance
        _outcome(spec, "worse", 4.0, 0.95, 0.995),  # loses attainment
        _outcome(spec, "coarse", 3.0, 0.99, 0.98),  # under the 0.99 quality floor
        _outcome(spec, "tiny", 9.9, 0.99, 1.0),  # saves 1 %: under min_saving
    ]
    ranked = recommend(outcomes, spec)
    assert [r.outcome.scenario.key for r in ranked] == ["big", "small"]
    assert ranked[0].gpu_hours_saved == pytest.approx(5.0) and ranked[0].saved_fraction == pytest.approx(0.5)


def test_the_replay_runs_at_the_speed_the_operator_measured_weighted_by_requests() -> None:
    status = {"policyState": {"speed": {"bf16": 1.5, "fp8": 0.8, "bad": "x", "zero": 0}}}
    speed, speeds = replica_speed(status, {"bf16": 30.0, "fp8": 10.0, "int4": 0.0})
    assert speeds == {"bf16": 1.5, "fp8": 0.8}
    assert speed == pytest.approx((1.5 * 30 + 0.8 * 10) / 40)
    # A variant the operator never measured runs at the model's speed; no status: all of them.
    assert replica_speed(status, {"bf16": 10.0, "w4": 10.0})[0] == pytest.approx(1.25)
    assert replica_speed(None, {"bf16": 10.0}) == (1.0, {})
    assert replica_speed({"policyState": {"speed": "garbage"}}, {"bf16": 1.0}) == (1.0, {})


def test_a_slower_measured_speed_makes_the_replay_hold_at_least_as_many_gpus() -> None:
    resource = {"metadata": {"namespace": NS, "name": NAME}, "spec": SPEC}
    runs = {}
    for speed in (1.0, 2.5):
        slow = {**resource, "status": {"policyState": {"speed": {"bf16": speed, "fp8": speed}}}}
        report = fake_report(slow)
        assert {o.model_error for o in report.outcomes + report.ensemble} == {speed}
        assert to_json(report)["simulated"]["speeds"] == {"bf16": speed, "fp8": speed}
        runs[speed] = report.replay
    assert runs[2.5].gpu_hours >= runs[1.0].gpu_hours
    assert runs[2.5].mean_e2e_s is not None and runs[1.0].mean_e2e_s is not None
    assert runs[2.5].mean_e2e_s > runs[1.0].mean_e2e_s


def test_random_placements_keep_the_bins_and_the_ensemble_reruns_the_replay() -> None:
    spec = GRMDeploymentSpec.model_validate(SPEC)
    arrivals = summarise(_history(), spec).arrivals
    even = arrival_trace(arrivals)
    drawn = arrival_trace(arrivals, placement=random.Random(3))
    assert len(drawn) == len(even) and list(drawn.times) == sorted(drawn.times)
    assert list(drawn.times) != list(even.times)
    # Each request stays in the bin it was counted in: the i-th of either placement are less than
    # two bins apart (one for the position inside the bin, one for where each trace's 0 is).
    assert float(np.max(np.abs(drawn.times - even.times))) < 2 * STEP
    assert list(drawn.prompt) == list(even.prompt)
    replay = run_scenario(scenarios(spec)[0][0], even, cold_start_s=5.0, model_error=1.3)
    runs = replay_ensemble(replay, arrivals, cold_start_s=5.0)
    assert len(runs) == ENSEMBLE_RUNS and runs[0] is replay
    assert {o.model_error for o in runs} == {1.3} and {o.scenario.key for o in runs} == {"replay"}


def test_the_whole_report_recommends_dropping_the_costly_variant() -> None:
    resource = {"metadata": {"namespace": NS, "name": NAME}, "spec": SPEC}
    report = fake_report(resource)
    doc = to_json(report)
    for key in (
        "period_s",
        "period_strength",
        "gpu_hours",
        "slo_attainment",
        "variants",
        "simulated",
        "recommendations",
    ):
        assert key in doc
    assert doc["period_s"] == pytest.approx(360.0, rel=0.1)
    for fields in doc["variants"].values():
        assert {"hours_active", "gpu_hours", "request_share", "slo_attainment"} <= set(fields)
    assert {"gpu_hours", "slo_attainment"} <= set(doc["simulated"])
    # No status: every run at the model's speed.
    assert {w["model_error"] for w in doc["whatifs"]} == {1.0} and doc["simulated"]["speeds"] == {}
    # bf16 at 2 GPUs a replica carries about as much per replica as fp8 at 1: dropping bf16 is
    # the biggest saving, at quality 0.995 ≥ the 0.99 floor.
    assert doc["recommendations"], doc["whatifs"]
    best = doc["recommendations"][0]
    assert [v["name"] for v in best["change"]["spec"]["variants"]] == ["fp8"]
    assert best["gpu_hours_saved"] > 0 and best["mean_quality"] >= 0.99
    assert {"change", "gpu_hours_saved", "slo_attainment", "mean_quality"} <= set(best)
    assert "kubectl -n rl patch grmdeployment reward --type merge" in best["kubectl"]
    text = to_markdown(report)
    assert "## Recommendations" in text and "without bf16" in text
    for query in report.queries.values():
        assert query in text
    json.dumps(doc)  # serialisable
    assert doc["simulated"]["ensemble"]["runs"] == ENSEMBLE_RUNS


def test_the_replay_is_judged_by_the_range_its_ensemble_spans() -> None:
    resource = {"metadata": {"namespace": NS, "name": NAME}, "spec": SPEC}
    report = fake_report(resource)
    observed = report.usage.gpu_hours
    report.ensemble = [replace(report.replay, gpu_hours=observed * f) for f in (0.5, 1.2)]
    assert report.replay_errors()[0] == 0.0
    report.ensemble = [replace(report.replay, gpu_hours=observed * f) for f in (0.5, 0.6)]
    gpu_error = report.replay_errors()[0]
    assert gpu_error == pytest.approx(-0.4) and not report.replay_trusted()
    assert "**outside**" in to_markdown(report) and to_json(report)["simulated"]["ensemble"]["gpu_hours"] == [
        round(observed * 0.5, 4),
        round(observed * 0.6, 4),
    ]


def test_the_command_with_a_spec_file(tmp_path: Path) -> None:
    manifest = tmp_path / "grmd.yaml"
    manifest.write_text(json.dumps({"metadata": {"name": NAME}, "spec": SPEC}))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "--prometheus", "http://prom:9090", "-n", NS, "--spec", str(manifest),
            "--since", datetime.fromtimestamp(START).astimezone().isoformat(),
            "--until", datetime.fromtimestamp(START + 12 * STEP).astimezone().isoformat(),
            "--out", str(out), "--json", str(tmp_path / "r.json"), "--cold-start", "5s",
        ]
    )  # fmt: skip
    # 12 minutes of 2 bf16 replicas: 0.8 GPU-hours; too short for a 6-minute period to count.
    docs = run(args, prometheus=FakePrometheus(bins=12))
    assert docs[0]["grmdeployment"] == "rl/reward"
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["gpu_hours"] == pytest.approx(0.8) and written["period_s"] is None
    assert {p.name for p in out.iterdir()} == {
        "report.md",
        "load.png",
        "replicas.png",
        "latency.png",
        "frontier.png",
    }
    assert "(frontier.png)" in (out / "report.md").read_text()


def test_times_and_bad_input() -> None:
    assert parse_time("2h", 10_000.0) == 2800.0
    assert parse_time("2026-01-01T00:00:00Z", 0.0) == 1767225600.0
    with pytest.raises(ReportError, match="neither a duration"):
        parse_time("yesterday", 0.0)
