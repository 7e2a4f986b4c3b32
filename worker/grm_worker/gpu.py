"""GPU gauges from NVML, exported under DCGM's metric names.

Where the DCGM exporter is not installed the operator still gets a GPU signal: the worker reads
NVML (``nvidia-ml-py``, imported as ``pynvml``, optional) at scrape time and renders
``DCGM_FI_DEV_GPU_UTIL`` (%), ``DCGM_FI_DEV_FB_USED`` and ``DCGM_FI_DEV_FB_FREE`` (MiB) with
DCGM's labels. :func:`NvmlGauges.create` returns None when NVML or a GPU is missing, so the
worker runs unchanged on CPU machines.
"""

from __future__ import annotations

import importlib
import logging
import socket
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

__all__ = ["NvmlGauges"]

log = logging.getLogger("grm_worker.gpu")


class NvmlGauges:
    """GPU utilisation and framebuffer memory of the visible GPUs, read on each render."""

    def __init__(self, nvml: ModuleType, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["gpu", "UUID", "device", "modelName", "Hostname"]
        self.util = Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels, registry=self.registry)
        self.fb_used = Gauge(
            "DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels, registry=self.registry
        )
        self.fb_free = Gauge(
            "DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels, registry=self.registry
        )
        host = socket.gethostname()
        self._labels = []
        for index, handle in enumerate(handles):
            name = nvml.nvmlDeviceGetName(handle)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            self._labels.append(
                {
                    "gpu": str(index),
                    "UUID": uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    "device": f"nvidia{index}",
                    "modelName": name.decode() if isinstance(name, bytes) else str(name),
                    "Hostname": host,
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
            self.util.labels(**labels).set(float(util.gpu))
            self.fb_used.labels(**labels).set(memory.used / 2**20)
            self.fb_free.labels(**labels).set(memory.free / 2**20)
        return generate_latest(self.registry).decode()
