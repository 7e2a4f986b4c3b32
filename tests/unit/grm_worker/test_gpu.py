"""NVML GPU gauges rendered under the worker's own names (not dcgm-exporter's), with a stand-in
NVML module (no GPU here)."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from grm_worker.gpu import NvmlGauges


def fake_nvml(count: int, fail_reads: bool = False) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")

    def util(handle: int) -> Any:
        if fail_reads:
            raise RuntimeError("GPU is lost")
        return types.SimpleNamespace(gpu=40 + handle, memory=10)

    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: count  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = util  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=2**30 * (h + 1), free=2**30 * 79
    )
    return nvml


def test_gauges_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(2))
    gauges = NvmlGauges.create()
    assert gauges is not None
    families = {f.name: f for f in text_string_to_metric_families(gauges.render())}
    util = {s.labels["gpu"]: s.value for s in families["grm_worker_gpu_utilization_ratio"].samples}
    assert util == {"0": 0.40, "1": 0.41}  # NVML's percent as a ratio
    used = {s.labels["uuid"]: s.value for s in families["grm_worker_gpu_memory_used_bytes"].samples}
    assert used == {"GPU-0000": 2.0**30, "GPU-0001": 2.0**31}
    free = families["grm_worker_gpu_memory_free_bytes"].samples[0]
    assert free.value == 79 * 2.0**30 and free.labels["gpu_model"] == "NVIDIA H100 80GB HBM3"
    # Nothing under dcgm-exporter's names, which the GPU Operator's exporter owns.
    assert not [name for name in families if name.startswith("DCGM_")]
    assert {tuple(sorted(s.labels)) for f in families.values() for s in f.samples} == {
        ("gpu", "gpu_model", "uuid")
    }


def test_no_nvml_or_no_gpu_means_no_gauges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(0))
    assert NvmlGauges.create() is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert NvmlGauges.create() is None


def test_failed_reads_do_not_break_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(1, fail_reads=True))
    gauges = NvmlGauges.create()
    assert gauges is not None
    assert "grm_worker_gpu_utilization_ratio{" not in gauges.render()
