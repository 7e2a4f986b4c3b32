"""Worker pod sizing: the CPU, memory and /dev/shm of one replica of a variant, derived from the
model (parameters × bytes per parameter of the checkpoint the loader reads, plus per-process
overhead) unless the variant or the template overrides them.

Without requests a worker pod is BestEffort: the scheduler places a 27B loader on a node without
the host RAM to read its weights and the kubelet evicts it first under memory pressure.

The numbers (all per replica, ``g`` = gpusPerReplica):

* **weights**: vLLM's default loader mmaps the safetensors shards, so the whole checkpoint passes
  through host RAM while it is copied to the GPUs, and those pages are charged to the pod's
  cgroup. DeepSeek-GRM-27B in bf16: 27e9 × 2 B = 50.3 GiB; its AWQ checkpoint 27e9 × 0.6 B =
  15.1 GiB (4-bit weights + group scales, with embeddings and norms left in 16 bits).
  The same checkpoint size (:func:`checkpoint_gb`, ``model.weightsGB`` when given) sizes the
  startup probe (:mod:`.modelload`).
  An fp8 variant without a checkpoint of its own reads the bf16 weights and quantizes on the GPU.
* **per GPU process**: 4 GiB. Each tensor-parallel rank is a process holding a CUDA context,
  torch and NCCL buffers; 3–5 GiB resident is what vLLM ranks typically hold after loading.
* **front and engine core**: 3 GiB (vLLM's API server and engine-core processes, the tokenizer
  and the GRM front).
* **/dev/shm**: 1 GiB per GPU, a memory-backed emptyDir whose pages count against the pod's memory:
  vLLM's tensor-parallel message queue and NCCL's shared-memory transport live there; Docker's
  64 MiB default is too small for NCCL, and an unbounded tmpfs could take the node's RAM.
* **memory limit**: 1.25 × the request. Page cache is reclaimed at the limit, anonymous memory is
  what gets OOM-killed; a quarter above the request covers tokenizer and Python growth.
* **cpu**: 2 + g cores requested (the front, vLLM's engine-core busy loop, one per rank launching
  kernels), no CPU limit: CFS throttling of a decode loop shows up directly as latency.

bf16 27B on 2 GPUs: memory 50.3 + 8 + 3 + 2 = 63.3 → 64Gi, limit 80Gi, cpu 4, /dev/shm 2Gi.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from grm_operator.api.models import GRMDeploymentSpec, Variant, parse_quantity

# The checkpoint's size is the policy layer's (it also sizes the cold-start estimate); re-exported.
from grm_operator.policy.coldstart import (
    CHECKPOINT_BYTES_PER_PARAMETER,
    checkpoint_bytes_per_parameter,
    checkpoint_gb,
    parameters_billions,
)

__all__ = [
    "CHECKPOINT_BYTES_PER_PARAMETER",
    "PodSize",
    "checkpoint_bytes_per_parameter",
    "checkpoint_gb",
    "derived_size",
    "parameters_billions",
    "pod_size",
    "weights_gib",
]

GIB = 2**30
PROCESS_OVERHEAD_GIB_PER_GPU = 4
FRONT_AND_ENGINE_CORE_GIB = 3
SHM_GIB_PER_GPU = 1
MEMORY_LIMIT_FACTOR = 1.25
CPU_BASE = 2
CPU_PER_GPU = 1
# A sim worker (front and simulated engine in one Python process, no weights, no GPU process):
# 51 MB RSS idle and 57 MB after 40 concurrent score requests, measured; a tenth of a CPU covers
# the demo's peak. 512Mi is 9x the measured RSS. A real node holds the demo's pods with this; with
# the GPU worker's request (2 + 1 CPU per GPU, 4-5 GiB) a 2-CPU, 24-GiB machine holds none.
SIM_CPU = "100m"
SIM_MEMORY_MIB = 512


@dataclass(frozen=True)
class PodSize:
    """Host resources of one worker replica, as Kubernetes quantities."""

    cpu: str
    memory: str
    memory_limit: str
    shared_memory: str


def weights_gib(spec: GRMDeploymentSpec, variant: Variant) -> float:
    """GiB of the checkpoint passing through host RAM at load (0 when the size is unknown)."""
    size = checkpoint_gb(spec, variant)
    return 0.0 if size is None else size * 1e9 / GIB


def derived_size(spec: GRMDeploymentSpec, variant: Variant, *, simulated: bool = False) -> PodSize:
    """The size derived from the model, before any override.

    ``simulated``: the sim engine (``grm.dev/worker-engine: sim``, tests and demos) loads no
    weights and starts no GPU processes, so only what its one process uses is requested
    (:data:`SIM_CPU`, :data:`SIM_MEMORY_MIB`); otherwise eight simulated 27B replicas would ask a
    node for 470 GiB and 32 CPUs.
    """
    gpus = variant.gpus_per_replica
    shm_gib = SHM_GIB_PER_GPU * gpus
    if simulated:
        return PodSize(
            cpu=SIM_CPU,
            memory=f"{SIM_MEMORY_MIB}Mi",
            memory_limit=f"{math.ceil(SIM_MEMORY_MIB * MEMORY_LIMIT_FACTOR)}Mi",
            shared_memory=f"{shm_gib}Gi",
        )
    loaded_gib = weights_gib(spec, variant) + PROCESS_OVERHEAD_GIB_PER_GPU * gpus
    memory_gib = math.ceil(loaded_gib + FRONT_AND_ENGINE_CORE_GIB + shm_gib)
    return PodSize(
        cpu=str(CPU_BASE + CPU_PER_GPU * gpus),
        memory=f"{memory_gib}Gi",
        memory_limit=f"{math.ceil(memory_gib * MEMORY_LIMIT_FACTOR)}Gi",
        shared_memory=f"{shm_gib}Gi",
    )


def pod_size(spec: GRMDeploymentSpec, variant: Variant, *, simulated: bool = False) -> PodSize:
    """The derived size with the variant's ``resources`` applied field by field.

    An overridden memory without a memoryLimit gets 1.25 × that memory, as a derived one does; a
    memoryLimit below the memory (derived or given) lowers the request to it: Kubernetes rejects
    requests above limits, and the limit is the harder promise (the OOM killer enforces it).
    """
    size = derived_size(spec, variant, simulated=simulated)
    override = variant.resources
    if override is None:
        return size
    memory = override.memory or size.memory
    if override.memory_limit is not None:
        limit = override.memory_limit
        if parse_quantity(limit) < parse_quantity(memory):
            memory = limit  # the limit wins, whether the memory was derived or given
    elif override.memory is not None:
        limit = f"{math.ceil(parse_quantity(override.memory) * MEMORY_LIMIT_FACTOR / 2**20)}Mi"
    else:
        limit = size.memory_limit
    return PodSize(
        cpu=override.cpu or size.cpu,
        memory=memory,
        memory_limit=limit,
        shared_memory=override.shared_memory or size.shared_memory,
    )
