"""The benchmark's synthetic workloads (bench/workloads.py): RL-training reward traffic in both
shapes, the flash crowd and the long prompts — their shape, their parameters and their determinism."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from grm_operator.simulator.trace import Trace, load_trace
from support.bench import load_bench_module


@pytest.fixture(scope="module")
def wl() -> ModuleType:
    return load_bench_module("workloads")


def test_colocated_rl_traffic_is_one_burst_per_step_of_batch_times_samples(wl: ModuleType) -> None:
    params = wl.RLWorkload(mode="colocated", duration_s=900.0, period_jitter=0.0, straggler_prob=0.0)
    trace, steps = wl.rl_steps(params, seed=3)
    assert [s.period_s for s in steps] == [180.0] * 5
    assert all(s.requests == 32 * 8 for s in steps) and len(trace) == 5 * 256
    # Each step's 256 requests land inside one 8-s burst, 180 s apart (the quiet gaps split them).
    bursts = np.split(trace.times, np.flatnonzero(np.diff(trace.times) > 60.0) + 1)
    assert [b.size for b in bursts] == [256] * 5
    assert all(b[-1] - b[0] <= 8.0 for b in bursts)
    assert np.all(np.diff(trace.times) >= 0) and trace.times[0] == 0.0
    assert abs(trace.prompt.mean() - 1500) < 100 and abs(trace.output.mean() - 300) < 25


def test_streaming_rl_traffic_spreads_over_the_generation_phase(wl: ModuleType) -> None:
    params = wl.RLWorkload(mode="streaming", duration_s=900.0, period_jitter=0.0, straggler_prob=0.0)
    colocated = wl.rl_trace(replace(params, mode="colocated"), seed=0)
    streaming = wl.rl_trace(params, seed=0)
    assert len(streaming) == len(colocated)

    def busiest_10s(trace: Trace) -> int:
        return int(max(((trace.times >= t) & (trace.times < t + 10)).sum() for t in np.arange(0, 900, 5)))

    assert busiest_10s(colocated) == 256
    assert busiest_10s(streaming) < 256 / 2  # the same requests over ~108 s, front-loaded


def test_the_batch_changes_mid_run_and_stragglers_delay_bursts(wl: ModuleType) -> None:
    params = wl.RLWorkload(duration_s=1800.0, change_at_s=900.0, changed_batch=48, straggler_prob=1.0)
    _, steps = wl.rl_steps(params, seed=1)
    assert {s.requests for s in steps if s.start_s < 900.0} == {256}
    assert {s.requests for s in steps if s.start_s >= 900.0} == {384}
    assert all(s.straggled for s in steps)
    # The step period drifts: jitter 0.1 gives periods around 180 s, not all equal.
    periods = [s.period_s for s in steps]
    assert len(set(periods)) == len(periods) and all(120 < p < 270 for p in periods)


def test_generation_is_deterministic_per_seed(wl: ModuleType) -> None:
    a = wl.rl_trace(wl.RLWorkload(), seed=5)
    b = wl.rl_trace(wl.RLWorkload(), seed=5)
    c = wl.rl_trace(wl.RLWorkload(), seed=6)
    assert np.array_equal(a.times, b.times) and np.array_equal(a.prompt, b.prompt)
    assert not np.array_equal(a.times[:100], c.times[:100])


def test_bad_parameters_get_a_clear_error(wl: ModuleType) -> None:
    with pytest.raises(ValueError, match="mode must be"):
        wl.RLWorkload(mode="batch")
    with pytest.raises(ValueError, match="rollout_batch must be > 0"):
        wl.RLWorkload(rollout_batch=0)
    with pytest.raises(ValueError, match="straggler_prob"):
        wl.RLWorkload(straggler_prob=1.5)


def test_flash_crowd_multiplies_the_window_and_leaves_the_rest(wl: ModuleType) -> None:
    times = np.arange(0.0, 600.0, 1.0)
    base = Trace(times, np.full(times.size, 100, np.int64), np.full(times.size, 10, np.int64), "flat")
    crowd = wl.flash_crowd(base, 120.0, 120.0, 4.5, seed=0)
    inside = (crowd.times >= 120.0) & (crowd.times < 240.0)
    assert int(inside.sum()) == 540  # 120 × 4.5
    assert int((~inside).sum()) == 480
    assert np.all(np.diff(crowd.times) >= 0)
    with pytest.raises(ValueError, match="no request"):
        wl.flash_crowd(base, 5000.0, 60.0, 4.5)


def test_long_prompts_scale_and_cap(wl: ModuleType) -> None:
    base = Trace(np.array([0.0, 1.0]), np.array([1000, 9000], np.int64), np.array([5, 5], np.int64), "t")
    longer = wl.long_prompts(base, 4.0)
    assert longer.prompt.tolist() == [4000, wl.MAX_PROMPT]


def test_a_written_csv_reads_back_as_the_same_trace(wl: ModuleType, tmp_path: Path) -> None:
    trace = wl.rl_trace(wl.RLWorkload(duration_s=400.0), seed=2)
    path = wl.write_csv(trace, tmp_path / "rl.csv")
    back = load_trace(path)
    assert len(back) == len(trace)
    assert np.allclose(back.times, trace.times, atol=2e-6)
    assert np.array_equal(back.prompt, trace.prompt) and np.array_equal(back.output, trace.output)
    assert wl.main(["rl", "--mode", "streaming", "--out", str(tmp_path / "s.csv")]) == 0
