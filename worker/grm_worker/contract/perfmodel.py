"""The latency model of one vLLM replica: continuous batching with chunked prefill.

This is a contract module (pure, no I/O): the ``sim`` engine uses :func:`step_time_s` to time its
step loop, the operator's fleet simulator uses it to simulate replicas, and the policy uses the
steady-state estimates (:func:`steady_state`, :func:`max_rate_at_slo`) as its capacity prior.

One engine step processes ``P`` prefill tokens (chunks of waiting prompts) and one token for each
of ``B`` decoding sequences whose contexts add up to ``Σctx`` tokens::

    t_step = c + b·P + e·B + k·Σctx

Defaults are priors for a Gemma-2-27B-class model (DeepSeek-GRM-27B: 46 layers, hidden 4608) on
H100 80GB GPUs: the weight GEMMs of a step timed on one H100 (18.9 ms bf16, 10.1 ms fp8 with fused
activation quantisation, at small batches), the rest scaled from published measurements (vidur's
H100 profiles, vLLM benchmarks, IST-DASLab/marlin); the policy corrects them online.

Worked example (fp8, c = 12.5 ms, e = 0.035 ms, k = 0.16 µs): 32 sequences at 2k context take
12.5 + 1.1 + 10.5 = 24.1 ms a step, i.e. ~1330 output tokens/s for the replica.

Steady state (the policy's prior). With sequences arriving at rate λ, each with ``P`` prompt and
``O`` output tokens, every second of engine time must absorb λ·P prefill tokens and λ·O decode
slots, so the step time solves ``t = c + t·λ·(b·P + e·O + k·O·ctx̄)``::

    t = c / (1 − ρ),   ρ = λ·(b·P + e·O + k·O·ctx̄),   ctx̄ = P + O/2

ρ is the engine's load; at ρ → 1 the step time (and so the inter-token latency) diverges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

__all__ = [
    "DEFAULT_PROFILES",
    "PRECISIONS",
    "PerformanceProfile",
    "SteadyState",
    "max_rate_at_slo",
    "profile_for",
    "steady_state",
    "step_time_s",
]

#: Precisions the project knows, best quality first (the CRD's enum uses the same strings).
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp8", "int8", "awq-int4", "gptq-int4")


@dataclass(frozen=True)
class PerformanceProfile:
    """Step-time coefficients and limits of one replica of one precision variant.

    Times are in seconds. ``gpus`` is the replica's GPU count (tensor parallelism).
    """

    step_overhead_s: float
    """c: fixed cost of a step (weight reads, scheduler, sampler), seconds."""
    prefill_s_per_token: float
    """b: cost per prefill token in a step, seconds."""
    decode_s_per_seq: float
    """e: cost per decoding sequence in a step, seconds."""
    attention_s_per_ctx_token: float
    """k: decode attention cost per context token of the running sequences, seconds."""
    kv_cache_tokens: int
    """Tokens of KV cache the replica holds: running sequences' contexts must fit in it."""
    max_num_seqs: int = 256
    """vLLM's --max-num-seqs: most sequences decoding at once."""
    max_num_batched_tokens: int = 8192
    """vLLM's --max-num-batched-tokens: most tokens (prefill + decode) in one step."""
    scheduling_overhead_s: float = 0.010
    """Time from arrival to the first scheduled step when nothing waits (5–20 ms)."""
    cold_start_s: float = 60.0
    """Seconds from pod creation to Ready (weights load + engine start)."""
    gpus: int = 1
    """GPUs one replica uses."""

    def scaled(self, factor: float) -> PerformanceProfile:
        """The same replica ``factor``× slower (every time coefficient multiplied)."""
        if factor <= 0:
            raise ValueError(f"slowdown factor must be > 0, got {factor}")
        return replace(
            self,
            step_overhead_s=self.step_overhead_s * factor,
            prefill_s_per_token=self.prefill_s_per_token * factor,
            decode_s_per_seq=self.decode_s_per_seq * factor,
            attention_s_per_ctx_token=self.attention_s_per_ctx_token * factor,
        )


# The mid-range of each prior's interval: bf16 c 20–24 ms, b 0.08–0.10 ms/token, e 0.02–0.05 ms/seq,
# k 0.12–0.20 µs per context token (bf16 KV cache).
# bf16 runs TP2 (54.5 GB of weights leave too little KV on one card): 2 GPUs, KV of both cards.
_BF16 = PerformanceProfile(
    step_overhead_s=0.022,
    prefill_s_per_token=0.09e-3,
    decode_s_per_seq=0.035e-3,
    attention_s_per_ctx_token=0.16e-6,
    kv_cache_tokens=200_000,
    cold_start_s=90.0,
    gpus=2,
)
DEFAULT_PROFILES: Mapping[str, PerformanceProfile] = {
    "bf16": _BF16,
    "fp16": _BF16,
    # fp8 W8A8 with fused activation quantisation: half the weight-read floor (10.1 vs 18.9 ms).
    "fp8": PerformanceProfile(
        step_overhead_s=0.0125,
        prefill_s_per_token=0.055e-3,
        decode_s_per_seq=0.035e-3,
        attention_s_per_ctx_token=0.16e-6,
        kv_cache_tokens=120_000,
        cold_start_s=60.0,
        gpus=1,
    ),
    "int8": PerformanceProfile(
        step_overhead_s=0.0125,
        prefill_s_per_token=0.06e-3,
        decode_s_per_seq=0.035e-3,
        attention_s_per_ctx_token=0.16e-6,
        kv_cache_tokens=120_000,
        cold_start_s=60.0,
        gpus=1,
    ),
    # W4A16 Marlin: 8.5 ms floor at small batches; e = 0.1 ms/seq brings a 128-sequence step back
    # to the bf16 value (8.5 + 12.8 ≈ 21 ms), as Marlin approaches bf16's compute line by a batch
    # of 128–256 (IST-DASLab/marlin).
    "awq-int4": PerformanceProfile(
        step_overhead_s=0.0085,
        prefill_s_per_token=0.10e-3,
        decode_s_per_seq=0.10e-3,
        attention_s_per_ctx_token=0.16e-6,
        kv_cache_tokens=150_000,
        cold_start_s=45.0,
        gpus=1,
    ),
}
DEFAULT_PROFILES = {**DEFAULT_PROFILES, "gptq-int4": DEFAULT_PROFILES["awq-int4"]}


def profile_for(precision: str, **overrides: float | int) -> PerformanceProfile:
    """The default profile of ``precision`` with the given fields replaced.

    Raises ``ValueError`` for an unknown precision or field.
    """
    try:
        base = DEFAULT_PROFILES[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}") from None
    unknown = set(overrides) - set(PerformanceProfile.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown performance profile fields: {', '.join(sorted(unknown))}")
    return replace(base, **overrides)  # type: ignore[arg-type]


def step_time_s(
    profile: PerformanceProfile, prefill_tokens: int, decode_seqs: int, context_tokens: int
) -> float:
    """Seconds one engine step takes: ``c + b·P + e·B + k·Σctx``."""
    return (
        profile.step_overhead_s
        + profile.prefill_s_per_token * prefill_tokens
        + profile.decode_s_per_seq * decode_seqs
        + profile.attention_s_per_ctx_token * context_tokens
    )


def _work_per_seq(profile: PerformanceProfile, prompt_tokens: float, output_tokens: float) -> float:
    """Engine seconds one sequence adds beyond the fixed step cost: its prefill, its decode slots
    and the attention over its growing context (mean ``P + O/2``)."""
    mean_ctx = prompt_tokens + output_tokens / 2.0
    return (
        profile.prefill_s_per_token * prompt_tokens
        + profile.decode_s_per_seq * output_tokens
        + profile.attention_s_per_ctx_token * output_tokens * mean_ctx
    )


@dataclass(frozen=True)
class SteadyState:
    """Mean behaviour of one replica at a constant sequence arrival rate."""

    load: float
    """ρ: fraction of engine time spent on work proportional to the load (must stay < 1)."""
    step_s: float
    """Mean step time = mean inter-token latency, seconds."""
    ttft_s: float
    """Mean time to first token, seconds."""
    e2e_s: float
    """Mean time from arrival to the last token, seconds."""
    running_seqs: float
    """Mean sequences decoding at once (Little's law)."""
    kv_tokens: float
    """Mean KV-cache tokens held by running sequences."""
    feasible: bool
    """False when ρ ≥ 1 or the running sequences exceed the KV cache or max_num_seqs."""


def steady_state(
    profile: PerformanceProfile, seq_rate: float, prompt_tokens: float, output_tokens: float
) -> SteadyState:
    """Steady-state latencies of one replica receiving ``seq_rate`` sequences per second.

    TTFT is the scheduling overhead plus the steps that carry the prompt's prefill chunks, each
    inflated by the same 1/(1 − ρ) queueing factor as decode steps. Example (fp8 defaults,
    2 seq/s of 1000-token prompts and 300-token outputs): work per sequence is
    55 ms prefill + 10.5 ms decode + 55.2 ms attention = 120.7 ms, so ρ = 0.241, the step time
    12.5 / 0.759 = 16.5 ms and ~9.9 sequences run at once.
    """
    if seq_rate < 0 or prompt_tokens < 0 or output_tokens < 1:
        raise ValueError("seq_rate and prompt_tokens must be ≥ 0 and output_tokens ≥ 1")
    mean_ctx = prompt_tokens + output_tokens / 2.0
    load = seq_rate * _work_per_seq(profile, prompt_tokens, output_tokens)
    if load >= 1.0:
        return SteadyState(load, math.inf, math.inf, math.inf, math.inf, math.inf, False)
    step = profile.step_overhead_s / (1.0 - load)
    running = seq_rate * output_tokens * step
    chunk = max(1, profile.max_num_batched_tokens - int(running))
    chunks = max(1, math.ceil(prompt_tokens / chunk))
    prefill_step = profile.step_overhead_s + profile.prefill_s_per_token * min(prompt_tokens, chunk)
    ttft = profile.scheduling_overhead_s + chunks * prefill_step / (1.0 - load)
    e2e = ttft + max(0.0, output_tokens - 1) * step
    kv = running * mean_ctx
    feasible = kv <= profile.kv_cache_tokens and running <= profile.max_num_seqs
    return SteadyState(load, step, ttft, e2e, running, kv, feasible)


def max_rate_at_slo(
    profile: PerformanceProfile,
    prompt_tokens: float,
    output_tokens: float,
    *,
    ttft_s: float | None = None,
    itl_s: float | None = None,
    e2e_s: float | None = None,
    max_load: float = 0.95,
) -> float:
    """Highest sequence rate (per second) one replica serves with mean latencies within the SLOs.

    ``None`` means no target for that latency. ``max_load`` caps ρ so the answer keeps a margin
    even without any latency target. Returns 0.0 when even an idle replica misses a target.
    Bisection: every latency grows monotonically with the rate.
    """

    def fits(rate: float) -> bool:
        s = steady_state(profile, rate, prompt_tokens, output_tokens)
        return (
            s.feasible
            and s.load <= max_load
            and (ttft_s is None or s.ttft_s <= ttft_s)
            and (itl_s is None or s.step_s <= itl_s)
            and (e2e_s is None or s.e2e_s <= e2e_s)
        )

    if not fits(0.0):
        return 0.0
    low, high = 0.0, max_load / _work_per_seq(profile, prompt_tokens, output_tokens)
    for _ in range(60):
        mid = (low + high) / 2.0
        if fits(mid):
            low = mid
        else:
            high = mid
    return low
