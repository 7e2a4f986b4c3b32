"""Synthetic workloads of the benchmark: reward-model traffic of RL training, and variants of the
Azure traces (a flash crowd, long prompts), all seeded and deterministic.

**RL training** calls its reward model once per training step, when the step's rollouts are done
(verl's colocated mode: actor, rollout and reward share the GPUs and take turns, so the whole
batch is scored in one burst), or as each sample completes (verl's standalone reward, OpenRLHF's
remote RM, slime: the reward model is its own service and scores while generation runs). Per step
``rollout_batch × samples_per_prompt`` responses are scored, one GRM score request each: its prompt
is the task prompt plus the response (``prompt_tokens``, log-normal), its critiques
``critique_tokens`` long (log-normal). The step period drifts: each step lasts
``step_period_s × exp(N(0, period_jitter))``. Stragglers: with probability ``straggler_prob`` a step
has slow rollouts — in colocated mode the burst waits for them (it starts ``straggler_delay_s``
later); in streaming mode a ``straggler_fraction`` of the step's responses complete up to
``straggler_delay_s`` after the rest. At ``change_at_s`` the batch becomes ``changed_batch`` (a
curriculum or a restart with another config).

Colocated: the step's requests arrive over ``burst_s`` seconds at the end of its generation phase
(``generation_fraction`` of the step). Streaming: they arrive over the generation phase as the
responses complete, front-loaded (short responses finish first): offsets are
``generation_fraction × period × Beta(1.5, 3)``.

Example (the defaults): 32 prompts × 8 samples = 256 score requests every ~180 s, 1,500-token
prompts and 300-token critiques; at k = 4 critiques each that is 1,024 critiques in ~8 s, then
quiet for ~2½ minutes — the fleet a burst needs is idle 95 % of the time.

Run ``.venv/bin/python bench/workloads.py rl --mode colocated --out FILE.csv`` to write one as an
Azure-format CSV (what ``grm-operator simulate --trace`` reads).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np

from grm_operator.simulator.trace import Trace

Mode = Literal["colocated", "streaming"]
#: Longest prompt a synthetic request gets (a 16k-token context, as the bench's KV caches hold).
MAX_PROMPT = 16_384
MAX_CRITIQUE = 2_048


@dataclass(frozen=True)
class RLWorkload:
    """Parameters of RL-training reward traffic (see module doc)."""

    mode: Mode = "colocated"
    duration_s: float = 2400.0
    step_period_s: float = 180.0
    period_jitter: float = 0.1
    rollout_batch: int = 32
    samples_per_prompt: int = 8
    prompt_tokens: float = 1500.0
    critique_tokens: float = 300.0
    #: Log-normal spread (sigma of the log) of both lengths.
    length_sigma: float = 0.5
    generation_fraction: float = 0.6
    burst_s: float = 8.0
    straggler_prob: float = 0.2
    straggler_fraction: float = 0.05
    straggler_delay_s: float = 40.0
    change_at_s: float | None = 1440.0
    changed_batch: int = 48

    def __post_init__(self) -> None:
        if self.mode not in ("colocated", "streaming"):
            raise ValueError(f"mode must be colocated or streaming, got {self.mode!r}")
        positive = {
            "duration_s": self.duration_s,
            "step_period_s": self.step_period_s,
            "rollout_batch": self.rollout_batch,
            "samples_per_prompt": self.samples_per_prompt,
            "prompt_tokens": self.prompt_tokens,
            "critique_tokens": self.critique_tokens,
            "burst_s": self.burst_s,
            "changed_batch": self.changed_batch,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not 0 < self.generation_fraction <= 1:
            raise ValueError(f"generation_fraction must be in (0, 1], got {self.generation_fraction}")
        for name, value in (
            ("straggler_prob", self.straggler_prob),
            ("straggler_fraction", self.straggler_fraction),
        ):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.period_jitter < 0 or self.straggler_delay_s < 0 or self.length_sigma < 0:
            raise ValueError("period_jitter, straggler_delay_s and length_sigma must be ≥ 0")

    def batch_at(self, t: float) -> int:
        """Prompts per step for a step starting at ``t``."""
        if self.change_at_s is not None and t >= self.change_at_s:
            return self.changed_batch
        return self.rollout_batch


@dataclass(frozen=True)
class StepRecord:
    """One training step of a generated workload: when it started, how long it lasted, how many
    score requests it sent, and whether it straggled."""

    start_s: float
    period_s: float
    requests: int
    straggled: bool


def _lengths(rng: np.random.Generator, mean: float, sigma: float, size: int, cap: int) -> np.ndarray:
    # Log-normal with the given mean: mu = ln(mean) − sigma²/2.
    mu = np.log(mean) - sigma * sigma / 2
    values = np.rint(rng.lognormal(mu, sigma, size=size)) if sigma > 0 else np.full(size, round(mean))
    return np.clip(values, 1, cap).astype(np.int64)


def rl_steps(params: RLWorkload, seed: int = 0) -> tuple[Trace, list[StepRecord]]:
    """The workload's requests as a :class:`Trace` (times from 0) and its steps."""
    rng = np.random.default_rng(seed)
    times: list[np.ndarray] = []
    prompts: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    steps: list[StepRecord] = []
    t = 0.0
    while t < params.duration_s:
        period = params.step_period_s * float(np.exp(rng.normal(0.0, params.period_jitter)))
        n = params.batch_at(t) * params.samples_per_prompt
        generation = params.generation_fraction * period
        straggled = bool(rng.random() < params.straggler_prob)
        if params.mode == "colocated":
            start = t + generation + (params.straggler_delay_s if straggled else 0.0)
            offsets = start + rng.uniform(0.0, params.burst_s, size=n)
        else:
            offsets = t + generation * rng.beta(1.5, 3.0, size=n)
            if straggled:
                late = rng.random(size=n) < params.straggler_fraction
                offsets = offsets + late * rng.uniform(0.0, params.straggler_delay_s, size=n)
        times.append(offsets)
        prompts.append(_lengths(rng, params.prompt_tokens, params.length_sigma, n, MAX_PROMPT))
        outputs.append(_lengths(rng, params.critique_tokens, params.length_sigma, n, MAX_CRITIQUE))
        steps.append(StepRecord(t, period, n, straggled))
        t += period
    all_times = np.concatenate(times)
    order = np.argsort(all_times, kind="stable")
    all_times = all_times[order]
    trace = Trace(
        all_times - all_times[0],
        np.concatenate(prompts)[order],
        np.concatenate(outputs)[order],
        f"rl-{params.mode}",
    )
    return trace, steps


def rl_trace(params: RLWorkload, seed: int = 0) -> Trace:
    """The workload's requests (see :func:`rl_steps`)."""
    return rl_steps(params, seed)[0]


def flash_crowd(trace: Trace, start_s: float, duration_s: float, factor: float, seed: int = 0) -> Trace:
    """``trace`` with ``factor``× its arrivals in ``[start_s, start_s + duration_s)``: each request
    there gets ``factor − 1`` copies (a fractional part as a coin flip) at uniform times in the
    window, with the lengths of a random request of the window."""
    if factor < 1:
        raise ValueError(f"flash-crowd factor must be ≥ 1, got {factor}")
    rng = np.random.default_rng(seed)
    inside = np.flatnonzero((trace.times >= start_s) & (trace.times < start_s + duration_s))
    if inside.size == 0:
        raise ValueError(f"no request in the flash-crowd window [{start_s}, {start_s + duration_s})")
    extra_count = int(np.floor((factor - 1.0) * inside.size + rng.random()))
    picks = rng.choice(inside, size=extra_count, replace=True)
    extra_times = rng.uniform(start_s, start_s + duration_s, size=extra_count)
    times = np.concatenate([trace.times, extra_times])
    order = np.argsort(times, kind="stable")
    prompt = np.concatenate([trace.prompt, trace.prompt[picks]])[order]
    output = np.concatenate([trace.output, trace.output[picks]])[order]
    return Trace(times[order], prompt, output, f"{trace.name}-flash{factor:g}")


def long_prompts(trace: Trace, factor: float) -> Trace:
    """``trace`` with every prompt ``factor``× longer (capped at :data:`MAX_PROMPT`): a document-
    length judging workload (long responses, retrieved context)."""
    if factor <= 0:
        raise ValueError(f"prompt factor must be > 0, got {factor}")
    prompt = np.clip(np.rint(trace.prompt * factor), 1, MAX_PROMPT).astype(np.int64)
    return Trace(trace.times, prompt, trace.output, f"{trace.name}-prompts{factor:g}")


#: The Azure traces' timestamp layout (100-ns digits); the synthetic ones start here.
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def write_csv(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` as an Azure LLM-inference CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t, p, o in zip(trace.times.tolist(), trace.prompt.tolist(), trace.output.tolist(), strict=True):
        micros = round(t * 1e6)
        stamp = (EPOCH + timedelta(microseconds=micros)).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
        lines.append(f"{stamp},{p},{o}")
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    rl = sub.add_parser("rl", help="RL-training reward traffic")
    rl.add_argument("--mode", choices=("colocated", "streaming"), default="colocated")
    rl.add_argument("--seed", type=int, default=0)
    rl.add_argument("--out", required=True)
    for field_name, default in (
        ("duration_s", RLWorkload.duration_s),
        ("step_period_s", RLWorkload.step_period_s),
        ("period_jitter", RLWorkload.period_jitter),
        ("prompt_tokens", RLWorkload.prompt_tokens),
        ("critique_tokens", RLWorkload.critique_tokens),
    ):
        rl.add_argument("--" + field_name.replace("_", "-"), type=float, default=default)
    rl.add_argument("--rollout-batch", type=int, default=RLWorkload.rollout_batch)
    rl.add_argument("--samples-per-prompt", type=int, default=RLWorkload.samples_per_prompt)
    args = parser.parse_args(argv)
    try:
        params = replace(
            RLWorkload(mode=args.mode),
            duration_s=args.duration_s,
            step_period_s=args.step_period_s,
            period_jitter=args.period_jitter,
            prompt_tokens=args.prompt_tokens,
            critique_tokens=args.critique_tokens,
            rollout_batch=args.rollout_batch,
            samples_per_prompt=args.samples_per_prompt,
        )
    except ValueError as exc:
        print(f"workloads: {exc}", file=sys.stderr)
        return 2
    trace = rl_trace(params, args.seed)
    write_csv(trace, args.out)
    print(f"{args.out}: {len(trace)} requests over {trace.duration_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
