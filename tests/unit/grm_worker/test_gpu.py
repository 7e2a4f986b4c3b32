"""NVML GPU gauges rendered under DCGM's names, with a stand-in NVML module (no GPU here)."""

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
    util = {s.labels["gpu"]: s.value for s in families["DCGM_FI_DEV_GPU_UTIL"].samples}
    assert util == {"0": 40.0, "1": 41.0}
    used = {s.labels["UUID"]: s.value for s in families["DCGM_FI_DEV_FB_USED"].samples}
    assert used == {"GPU-0000": 1024.0, "GPU-0001": 2048.0}
    assert families["DCGM_FI_DEV_FB_FREE"].samples[0].labels["modelName"] == "NVIDIA H100 80GB HBM3"


def test_no_nvml_or_no_gpu_means_no_gauges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(0))
    assert NvmlGauges.create() is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert NvmlGauges.create() is None


def test_failed_reads_do_not_break_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(1, fail_reads=True))
    gauges = NvmlGauges.create()
    assert gauges is not None
    assert "DCGM_FI_DEV_GPU_UTIL{" not in gauges.render()
