"""Operating points (variant × GRM sample budget), their quality, and what one replica serves.

Quality of a point is the variant's declared quality times the relative reward accuracy of
k-sample voting. DeepSeek-GRM-27B (arXiv 2504.02495) reports overall accuracy 67.9 / 70.6 / 71.0
for k = 1 / 8 / 32: about +0.9 points per doubling of k up to 8, then +0.2 per doubling. So with
samples.max = 8, k = 4 keeps 69.7 / 70.6 = 0.987 of the quality and k = 1 keeps 0.962; an fp8
variant (0.995) at k = 4 is worth 0.982.

Capacity of one replica at a point is the highest sequence rate whose modelled latencies stay
inside the SLO: :func:`grm_worker.contract.perfmodel.max_rate_at_slo` on the variant's profile slowed by
the online ``speed`` correction, with each SLO target divided by the observed tail factor
(p95 ÷ modelled mean). Example: fp8 default profile, 1000-token prompts, 300-token critiques,
ttftP95 500 ms with tail 2.0 → modelled mean TTFT ≤ 250 ms, e2eP95 20 s with tail 1.5 → mean
e2e ≤ 13.3 s; the binding limit is the load cap ρ ≤ 0.85, about 5.7 sequences/s per replica.

A rate is the wrong measure of load that comes in bursts shorter than the latency targets (an RL
training step scores its whole batch within ~8 s): the burst's sequences must be served *together*
inside the SLO, whatever the minute's mean rate. :func:`burst_capacity` is what one replica serves
of such a burst (below); the policy sizes for the latest repeated burst with it (docs/policy.md §6).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec, Variant
from grm_worker.contract.perfmodel import (
    PerformanceProfile,
    max_rate_at_slo,
    profile_for,
    steady_state,
    step_time_s,
)

#: Voting accuracy by k (DeepSeek-GRM-27B, overall): interpolated linearly in log2(k).
_VOTING_ACCURACY = ((1, 67.9), (8, 70.6), (32, 71.0))
#: Default tail factors (observed p95 ÷ modelled mean) before any traffic was seen.
DEFAULT_TAIL = {"ttft": 2.0, "itl": 1.3, "e2e": 1.5}
TAIL_BOUNDS = (1.0, 6.0)
#: Highest engine load ρ planned for: queueing explodes as ρ → 1 (at 0.85 the step is 6.7× c).
MAX_LOAD = 0.85


def voting_accuracy(samples: int) -> float:
    """Reward accuracy (percent) of majority voting over ``samples`` critiques."""
    if samples <= 1:
        return _VOTING_ACCURACY[0][1]
    x = math.log2(samples)
    for (k0, a0), (k1, a1) in itertools.pairwise(_VOTING_ACCURACY):
        x0, x1 = math.log2(k0), math.log2(k1)
        if x <= x1:
            return a0 + (a1 - a0) * (x - x0) / (x1 - x0)
    return _VOTING_ACCURACY[-1][1]


@dataclass(frozen=True)
class OperatingPoint:
    """A variant run with a sample budget, and the quality that buys."""

    variant: Variant
    samples: int
    quality: float

    @property
    def label(self) -> str:
        """``fp8×k4``."""
        return f"{self.variant.name}×k{self.samples}"


def sample_budgets(low: int, high: int) -> list[int]:
    """Budgets tried from ``high`` down: halving (8, 4, 2, 1), ``low`` included."""
    out = [high]
    k = high
    while k // 2 >= low and k // 2 >= 1:
        k //= 2
        out.append(k)
    if out[-1] != low:
        out.append(low)
    return out


def operating_points(
    spec: GRMDeploymentSpec, pinned: str | None = None, excluded: Collection[str] = ()
) -> list[OperatingPoint]:
    """Admissible points (quality ≥ minQuality), best quality first; ties: fewer GPUs first.

    ``excluded`` variants are left off the ladder: demoted by their live agreement with the
    reference (:mod:`grm_operator.policy.quality_watch`). A pinned variant is never excluded
    (the user's explicit choice)."""
    k_max = spec.scoring.samples.max
    reference = voting_accuracy(k_max)
    variants = [spec.variant(pinned)] if pinned else [v for v in spec.variants if v.name not in excluded]
    points = [
        OperatingPoint(v, k, v.quality * voting_accuracy(k) / reference)
        for v in variants
        for k in sample_budgets(spec.scoring.samples.min, k_max)
    ]
    floor = spec.precision.min_quality - 1e-9
    admissible = [p for p in points if p.quality >= floor]
    admissible.sort(key=lambda p: (-round(p.quality, 6), p.variant.gpus_per_replica, -p.samples))
    return admissible


def shed_floor(spec: GRMDeploymentSpec, variant: str) -> int | None:
    """The samples a worker of ``variant`` gives a new score request while its engine has a queue
    (spec.scoring.shedSamples OnQueue): the fewest admissible on the variant. None when shedding is
    off, the variant admits no budget below samples.max (nothing to shed) or none at all."""
    if spec.scoring.shed_samples == "Off":
        return None
    budgets = [p.samples for p in operating_points(spec, variant)]
    if not budgets or min(budgets) >= spec.scoring.samples.max:
        return None
    return min(budgets)


def variant_profile(variant: Variant) -> PerformanceProfile:
    """The variant's declared profile, or the built-in prior of its precision."""
    prof = variant.profile
    if prof is None:
        return profile_for(variant.precision, gpus=variant.gpus_per_replica)
    overrides: dict[str, float | int] = {
        "step_overhead_s": prof.step_overhead_ms / 1000.0,
        "prefill_s_per_token": prof.prefill_ms_per_token / 1000.0,
        "decode_s_per_seq": prof.decode_ms_per_sequence / 1000.0,
        "attention_s_per_ctx_token": prof.attention_us_per_context_token / 1e6,
        "kv_cache_tokens": prof.kv_cache_tokens,
        "gpus": variant.gpus_per_replica,
    }
    if prof.cold_start:
        overrides["cold_start_s"] = parse_duration(prof.cold_start)
    return profile_for(variant.precision, **overrides)


@dataclass(frozen=True)
class Workload:
    """Mean shape of one engine request (one critique): prompt and output tokens."""

    prompt_tokens: float
    output_tokens: float


def replica_capacity(
    spec: GRMDeploymentSpec,
    variant: Variant,
    workload: Workload,
    speed: float,
    tail: Mapping[str, float],
) -> float:
    """Sequences per second one replica of ``variant`` serves inside the SLO (see module doc)."""
    profile = variant_profile(variant).scaled(max(speed, 1e-3))

    def target(value: float | None, key: str) -> float | None:
        return None if value is None else value / max(tail.get(key, DEFAULT_TAIL[key]), TAIL_BOUNDS[0])

    return max_rate_at_slo(
        profile,
        workload.prompt_tokens,
        max(workload.output_tokens, 1.0),
        ttft_s=target(spec.slo.ttft_p95_s, "ttft"),
        itl_s=target(spec.slo.itl_p95_s, "itl"),
        e2e_s=target(spec.slo.e2e_p95_s, "e2e"),
        max_load=MAX_LOAD,
    )


def expected_means(
    variant: Variant, workload: Workload, seq_rate_per_replica: float, speed: float
) -> tuple[float, float, float] | None:
    """Modelled mean (TTFT, ITL, e2e) of one replica at a rate, or None when overloaded."""
    profile = variant_profile(variant).scaled(max(speed, 1e-3))
    state = steady_state(
        profile, seq_rate_per_replica, workload.prompt_tokens, max(workload.output_tokens, 1.0)
    )
    if not state.feasible or math.isinf(state.step_s):
        return None
    return state.ttft_s, state.step_s, state.e2e_s


def burst_capacity(spec: GRMDeploymentSpec, variant: Variant, workload: Workload, speed: float) -> float:
    """Sequences of a burst (arriving all at once) one replica of ``variant`` serves inside the SLO.

    A replica runs at most ``slots`` sequences at once: its KV cache holds ``P + O`` tokens per
    sequence (admission reserves the final footprint), at most ``max_num_seqs``. The rest wait
    for a whole *round* (prefill of the slots at the step's token budget, then ``O`` decode steps of
    the full batch) before their first token. So the burst's first round counts as far as its
    prompts are prefilled within the TTFT target, and each later round only if it still starts in
    time for the TTFT target and ends inside the e2e one. Example (fp8 defaults, 1,500-token
    prompts, 300-token critiques, ttftP95 10 s, e2eP95 60 s): 66 slots, prefill 17.7k tokens/s, a
    round 5.7 + 300 × 32.4 ms = 15.4 s, longer than the TTFT target: 66 sequences, so a 768-sequence
    burst needs 12 replicas where its minute's mean (12.8 seq/s) asks for 5. No target: unbounded.
    """
    profile = variant_profile(variant).scaled(max(speed, 1e-3))
    prompt, output = max(workload.prompt_tokens, 1.0), max(workload.output_tokens, 1.0)
    slots = max(1.0, min(float(profile.max_num_seqs), profile.kv_cache_tokens / (prompt + output)))
    budget = profile.max_num_batched_tokens
    prefill_rate = budget / step_time_s(profile, budget, 0, 0)  # prompt tokens/s at a full step
    full_step = step_time_s(profile, 0, int(slots), int(slots * (prompt + output / 2)))
    round_s = slots * prompt / prefill_rate + output * full_step
    ttft, e2e = spec.slo.ttft_p95_s, spec.slo.e2e_p95_s
    if ttft is None and e2e is None:
        return math.inf
    first = slots if ttft is None else max(1.0, min(slots, ttft * prefill_rate / prompt))
    later_by_ttft = math.inf if ttft is None else math.floor(ttft / round_s)
    later_by_e2e = math.inf if e2e is None else math.floor(e2e / round_s) - 1
    later = max(0.0, min(later_by_ttft, later_by_e2e))
    return first + slots * later
