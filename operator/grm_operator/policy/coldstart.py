"""Cold start of a worker replica: the seconds from its request to Ready, estimated from the size of
the checkpoint it loads. One estimate serves every user of it: the startup probe's budget
(:func:`grm_operator.control.builders.modelload.startup_budget_s`, with a margin), the policy's
forecast horizon (:func:`grm_operator.policy.decide.decide`: how far ahead it provisions, which
must cover a cold start) and the fleet simulator's replicas.

In order of preference:

1. **declared**: the variant's ``profile.coldStart`` (measured by the user on their cluster);
2. **size**: ``60 s + GB / 0.25 GB/s`` — the checkpoint's size (:func:`checkpoint_gb`, from
   ``model.weightsGB`` or the parameter count in the model's name, × the variant's bytes per
   parameter) read at 0.25 GB/s, a cautious rate for network block storage (an AWS gp3 volume's
   baseline is 125 MiB/s, a local NVMe is 10× faster), plus 60 s of engine start (CUDA graph
   capture, KV-cache allocation). DeepSeek-GRM-27B: bf16 54 GB → 276 s (an fp8 variant without a
   checkpoint of its own reads the same bf16 weights), its AWQ checkpoint 16.2 GB → 125 s;
3. **prior**: the precision's static prior (45–90 s, ``grm_worker.contract.perfmodel``) when the
   size is unknown (no ``weightsGB``, no ``<n>B`` in the name).

The operator measures no cold start of its own yet (neither status nor the policy's observation
carries pod start times), so a cluster much faster or slower than 0.25 GB/s should declare
``profile.coldStart``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec, Variant
from grm_worker.contract.perfmodel import profile_for

#: Local weights load at this rate (GB/s) (module doc).
LOAD_GB_PER_S = 0.25
#: The engine's start after the weights are read, seconds (module doc).
ENGINE_START_S = 60.0

# Bytes per parameter of the checkpoint the loader reads, by precision. fp8 and int8
# (compressed-tensors) keep embeddings and norms in 16 bits (~0.55 of the bf16 size); AWQ/GPTQ int4
# stores 4-bit weights plus group scales and 16-bit embeddings (~0.3: a Gemma-2-27B AWQ checkpoint
# is ~17 GB of bf16's 54.5).
CHECKPOINT_BYTES_PER_PARAMETER = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.1,  # a pre-quantized fp8 checkpoint; without one the loader reads bf16 (2.0)
    "int8": 1.1,
    "awq-int4": 0.6,
    "gptq-int4": 0.6,
}

# "DeepSeek-GRM-27B", "Qwen2.5-0.5B-Instruct": a number followed by B and no further letter.
_PARAMETERS_IN_NAME = re.compile(r"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)[Bb](?![A-Za-z])")

Basis = Literal["declared", "size", "prior"]


@dataclass(frozen=True)
class ColdStart:
    """A cold-start estimate and what it rests on."""

    seconds: float
    basis: Basis


def parameters_billions(spec: GRMDeploymentSpec) -> float | None:
    """spec.model.parametersBillions, else the count in the model name (the last ``<n>B``)."""
    if spec.model.parameters_billions is not None:
        return spec.model.parameters_billions
    found = _PARAMETERS_IN_NAME.findall(spec.model.name)
    return float(found[-1]) if found else None


def checkpoint_bytes_per_parameter(variant: Variant) -> float:
    """Bytes per parameter of the checkpoint this variant's loader reads."""
    if variant.precision == "fp8" and variant.uri is None:
        return CHECKPOINT_BYTES_PER_PARAMETER["bf16"]  # quantized to fp8 on the GPU at load
    return CHECKPOINT_BYTES_PER_PARAMETER[variant.precision]


def checkpoint_gb(spec: GRMDeploymentSpec, variant: Variant) -> float | None:
    """GB (10^9 bytes) of the checkpoint this variant's worker reads at start: spec.model.weightsGB
    (the bf16 checkpoint) scaled to the variant's bytes per parameter, else the parameter count ×
    those bytes; None when neither is known. Sizes the pod's memory, its startup budget and the
    cold-start estimate."""
    per_parameter = checkpoint_bytes_per_parameter(variant)
    if spec.model.weights_gb is not None:
        return spec.model.weights_gb * per_parameter / CHECKPOINT_BYTES_PER_PARAMETER["bf16"]
    params = parameters_billions(spec)
    return None if params is None else params * per_parameter


def cold_start(spec: GRMDeploymentSpec, variant: Variant) -> ColdStart:
    """The variant's cold start (module doc): declared, else from the checkpoint's size, else the
    precision's prior."""
    if variant.profile is not None and variant.profile.cold_start:
        return ColdStart(parse_duration(variant.profile.cold_start), "declared")
    size = checkpoint_gb(spec, variant)
    if size is not None:
        return ColdStart(ENGINE_START_S + size / LOAD_GB_PER_S, "size")
    return ColdStart(profile_for(variant.precision).cold_start_s, "prior")
