"""Cold start of a worker replica: the seconds from its binding to a node to Ready, measured on
the cluster or estimated from the size of the checkpoint it loads. One estimate serves the policy's
forecast horizon (:func:`grm_operator.policy.decide.decide`: how far ahead it provisions, which
must cover a cold start; :func:`grm_operator.policy.mpc.decide_mpc` likewise) and the fleet
simulator's replicas; the startup probe's budget
(:func:`grm_operator.control.builders.modelload.startup_budget_s`) takes the same estimate without
the measurement (below).

In order of preference:

1. **declared**: the variant's ``profile.coldStart`` (the user's word wins);
2. **measured**: the p90 of the variant's last :data:`MEASURED_SAMPLES` (8) cold starts measured
   on the cluster, once there are :data:`MIN_MEASURED_SAMPLES` (2). The operator measures each
   worker pod's first readiness, from its PodScheduled=True transition (not its creation: waiting
   for a node is the node autoscaler's, ``spec.scaling.pendingGrace``) to its Ready=True
   transition (:mod:`grm_operator.control.coldstarts`), and the policy keeps them in
   ``status.policyState.coldStarts`` (:func:`remember`), so they survive an operator restart;
3. **size**: ``60 s + GB / 0.25 GB/s`` — the checkpoint's size (:func:`checkpoint_gb`, from
   ``model.weightsGB`` or the parameter count in the model's name, × the variant's bytes per
   parameter) read at 0.25 GB/s, a cautious rate for network block storage (an AWS gp3 volume's
   baseline is 125 MiB/s, a local NVMe is 10× faster), plus 60 s of engine start (CUDA graph
   capture, KV-cache allocation). DeepSeek-GRM-27B: bf16 54 GB → 276 s (an fp8 variant without a
   checkpoint of its own reads the same bf16 weights), its AWQ checkpoint 16.2 GB → 125 s;
4. **prior**: the precision's static prior (45–90 s, ``grm_worker.contract.perfmodel``) when the
   size is unknown (no ``weightsGB``, no ``<n>B`` in the name).

Why two samples and the p90. The horizon must cover a cold start: a replica asked for now that
arrives after the horizon is capacity the forecast counted on and did not have. One sample is one
pod on one node, and a lucky one (weights in the node's page cache, 40 s where the others take
250 s) would shorten the horizon for every later scale-up; the p90 of two is 0.9 of the way to the
slower one. A slow outlier errs on the safe side, and the p90 (linear interpolation) weighs it
0.3 with 8 samples: starts of 262, 265, 270, 271, 274, 280, 288 s and one of 410 s on a node that
first pulled the image give a p90 of 325 s, where the median (272.5 s) leaves half the starts
late and the maximum (410 s) provisions 122 s early for a one-off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
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

#: Measured cold starts kept per variant (status.policyState.coldStarts), newest by readiness.
MEASURED_SAMPLES = 8
#: Measured cold starts needed before they replace the size estimate (module doc).
MIN_MEASURED_SAMPLES = 2
#: The quantile of the measured cold starts the horizon covers (module doc).
MEASURED_QUANTILE = 0.9

Basis = Literal["declared", "measured", "size", "prior"]


@dataclass(frozen=True)
class StartSample:
    """One worker pod's measured cold start: its name, when it became Ready (epoch seconds) and the
    seconds from its binding to a node to then."""

    pod: str
    ready_at: float
    seconds: float


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


def remember(known: Sequence[StartSample], seen: Iterable[StartSample]) -> tuple[StartSample, ...]:
    """``known`` with the samples of ``seen`` whose pod it does not hold yet: the
    :data:`MEASURED_SAMPLES` newest by readiness (ties by pod name), oldest first.

    The autoscaler offers every Ready pod's first readiness on every tick, so a pod already held is
    skipped (counted once), and one that no longer fits sorts before all that are kept and is cut
    again: offering the same pods twice changes nothing, and status is not rewritten."""
    held = {s.pod for s in known}
    fresh: dict[str, StartSample] = {}
    for sample in seen:
        if sample.pod not in held and sample.seconds >= 0:
            fresh.setdefault(sample.pod, sample)
    if not fresh:
        return tuple(known)
    merged = sorted([*known, *fresh.values()], key=lambda s: (s.ready_at, s.pod))
    return tuple(merged[-MEASURED_SAMPLES:])


def measured_seconds(samples: Sequence[StartSample]) -> float | None:
    """The p90 (linear interpolation) of the measured cold starts; None with fewer than
    :data:`MIN_MEASURED_SAMPLES` (module doc)."""
    if len(samples) < MIN_MEASURED_SAMPLES:
        return None
    ordered = sorted(s.seconds for s in samples)
    rank = MEASURED_QUANTILE * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cold_start(spec: GRMDeploymentSpec, variant: Variant, measured: Sequence[StartSample] = ()) -> ColdStart:
    """The variant's cold start (module doc): declared, else measured (``measured``: its samples,
    status.policyState.coldStarts), else from the checkpoint's size, else the precision's prior."""
    if variant.profile is not None and variant.profile.cold_start:
        return ColdStart(parse_duration(variant.profile.cold_start), "declared")
    seconds = measured_seconds(measured)
    if seconds is not None:
        return ColdStart(seconds, "measured")
    size = checkpoint_gb(spec, variant)
    if size is not None:
        return ColdStart(ENGINE_START_S + size / LOAD_GB_PER_S, "size")
    return ColdStart(profile_for(variant.precision).cold_start_s, "prior")
