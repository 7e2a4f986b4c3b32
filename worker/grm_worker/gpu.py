"""GPU gauges from NVML, under the worker's own metric names.

The worker reads NVML (``nvidia-ml-py``, imported as ``pynvml``, optional) at scrape time and
renders, per GPU (labels ``gpu`` = index, ``uuid``, ``gpu_model``):
``grm_worker_gpu_utilization_ratio`` (0–1), ``grm_worker_gpu_memory_used_bytes`` and
``grm_worker_gpu_memory_free_bytes``. Not dcgm-exporter's ``DCGM_FI_*`` names: NVIDIA's GPU
Operator runs dcgm-exporter on every GPU node, and series of the same name from the worker, with
other labels, would mix into its dashboards and alerts. :func:`NvmlGauges.create` returns None
when NVML or a GPU is missing, so the worker runs unchanged on CPU machines.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

__all__ = ["GPU_LABELS", "GPU_MEMORY_FREE", "GPU_MEMORY_USED", "GPU_UTIL", "NvmlGauges"]

GPU_UTIL = "grm_worker_gpu_utilization_ratio"
GPU_MEMORY_USED = "grm_worker_gpu_memory_used_bytes"
GPU_MEMORY_FREE = "grm_worker_gpu_memory_free_bytes"
#: Labels of every GPU series: the index the worker sees, the GPU's UUID (what dcgm-exporter's
#: ``UUID`` label holds, for joins) and its product name.
GPU_LABELS = ("gpu", "uuid", "gpu_model")

log = logging.getLogger("grm_worker.gpu")


class NvmlGauges:
    """GPU utilisation and framebuffer memory of the visible GPUs, read on each render."""

    def __init__(self, nvml: ModuleType, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles
        self.registry = CollectorRegistry(auto_describe=True)
        labels = list(GPU_LABELS)
        self.util = Gauge(GPU_UTIL, "GPU utilisation (NVML), 0–1.", labels, registry=self.registry)
        self.memory_used = Gauge(GPU_MEMORY_USED, "GPU memory used (bytes).", labels, registry=self.registry)
        self.memory_free = Gauge(GPU_MEMORY_FREE, "GPU memory free (bytes).", labels, registry=self.registry)
        self._labels = []
        for index, handle in enumerate(handles):
            name = nvml.nvmlDeviceGetName(handle)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            self._labels.append(
                {
                    "gpu": str(index),
                    "uuid": uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    "gpu_model": name.decode() if isinstance(name, bytes) else str(name),
                }
            )

    @classmethod
    def create(cls) -> NvmlGauges | None:
        """NVML gauges for every visible GPU, or None without NVML or GPUs."""
        try:
            nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as error:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, …
            log.debug("no NVML GPU gauges: %s", error)
            return None
        if not handles:
            return None
        return cls(nvml, handles)

    def render(self) -> str:
        """Read every GPU now and return the exposition text."""
        for handle, labels in zip(self._handles, self._labels, strict=True):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as error:  # a GPU that fell off the bus must not break /metrics
                log.warning("NVML read failed for GPU %s: %s", labels["gpu"], error)
                continue
            self.util.labels(**labels).set(float(util.gpu) / 100)  # NVML reports percent
            self.memory_used.labels(**labels).set(float(memory.used))
            self.memory_free.labels(**labels).set(float(memory.free))
        return generate_latest(self.registry).decode()
