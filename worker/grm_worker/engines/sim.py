"""The simulated engine: vLLM's OpenAI API and metrics, timed by the performance model.

A continuous-batching step loop in the image of vLLM's v1 scheduler:

* each step first gives every running sequence its next piece of work (one decode token, or the
  next chunk of its prompt), then admits waiting sequences while ``max_num_seqs``, the step's
  token budget (``max_num_batched_tokens``, chunked prefill) and the KV cache allow;
* a running sequence that needs a KV slot when the cache is full preempts the newest running
  sequence, which goes back to the head of the queue and recomputes its prefill (vLLM's default);
* the step lasts ``perfmodel.step_time_s(P, B, Σctx)`` simulated seconds, times log-normal jitter
  and an injected slowdown; the step that completes a prompt emits its first token.

Simulated time runs ``time_scale``× faster than the wall clock: every latency the engine
reports (histograms, the start-up delay) is in simulated seconds, so a demo at 10× shows the
same numbers as real time. ``grm_worker_gpu_utilization_ratio`` is the step loop's busy fraction over the
last ``gpu_util_window_s`` simulated seconds, the same for each of the replica's GPUs (tensor
parallel ranks are busy together). The series are vLLM's (:mod:`grm_worker.engines.sim_metrics`),
and so are the request and answer shapes (:mod:`grm_worker.engines.sim_openai`).

A stream whose client disconnects is aborted (:meth:`SimEngine.abort`): its sequences leave
the batch and count as ``finished_reason="abort"``, as in vLLM.

Fault injection (the admin endpoint): ``slowdown`` multiplies every step, ``error_rate`` fails
that fraction of requests with HTTP 500, ``crash`` makes the engine die (the worker exits).

One concept in one module (the simulated engine's scheduler: its step loop, sequences, KV
cache and injected faults share one state), so it is not split further; its OpenAI wire format
and its metrics live in :mod:`.sim_openai` and :mod:`.sim_metrics`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grm_worker.contract.config import WorkerConfig
from grm_worker.contract.perfmodel import PerformanceProfile, profile_for, step_time_s
from grm_worker.engines.base import Engine, EngineError, EngineReply
from grm_worker.engines.sim_metrics import SimMetrics
from grm_worker.engines.sim_openai import (
    Sample,
    chat_prompt,
    chat_reply,
    completion_prompts,
    completion_reply,
    error_reply,
    models_reply,
    request_params,
)
from grm_worker.engines.simtext import count_tokens, cut_at_stop, generate_tokens

__all__ = ["SimEngine", "SimFaults"]

# Simulated seconds the event loop may fall behind a busy step loop before steps stop chaining
# (a CPU-starved worker then reports the delay as latency instead of compressing it later).
_MAX_LAG_S = 0.05


@dataclass
class SimFaults:
    """Injected faults (set through the admin endpoint)."""

    slowdown: float = 1.0
    error_rate: float = 0.0
    crashed: str | None = None


@dataclass(eq=False)
class _Seq:
    """One sequence (a prompt × one of its n samples) inside the engine."""

    prompt_tokens: int
    tokens: list[str]
    finish_reason: str
    arrival: float
    n: int
    max_tokens: int
    out: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    prefill_target: int = 0
    prefilled: int = 0
    generated: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    preemptions: int = 0
    stop_reason: str | None = None
    """The stop string that ended the sequence, if one did."""
    parent: _Seq | None = None
    """For samples 2..n of one prompt: the sample whose prefill (and prompt KV) they share."""

    def __post_init__(self) -> None:
        self.prefill_target = self.prompt_tokens

    @property
    def ctx_tokens(self) -> int:
        """Context the sequence attends over."""
        return self.prefilled + self.generated

    @property
    def kv_tokens(self) -> int:
        """KV-cache tokens the sequence holds itself (a fork shares its parent's prompt blocks)."""
        return self.ctx_tokens - (self.prompt_tokens if self.parent is not None else 0)

    @property
    def decoding(self) -> bool:
        return self.prefilled >= self.prefill_target


class SimEngine(Engine):
    """A simulated vLLM engine in this process (see the module docstring)."""

    def __init__(self, config: WorkerConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.model_name = config.model.public_name
        overrides: dict[str, Any] = dict(config.sim.profile)
        opts = config.vllm
        overrides.setdefault("max_num_seqs", opts.max_num_seqs)
        if opts.max_num_batched_tokens is not None:
            overrides.setdefault("max_num_batched_tokens", opts.max_num_batched_tokens)
        for name in ("max_num_seqs", "max_num_batched_tokens", "kv_cache_tokens", "gpus"):
            if name in overrides:
                overrides[name] = int(overrides[name])
        self.profile: PerformanceProfile = profile_for(config.precision, **overrides)
        self.max_model_len = opts.max_model_len or 32768
        self.faults = SimFaults()
        self.metrics = SimMetrics(self.model_name, self.max_model_len, self.profile.gpus)
        self._clock = clock
        self._t0 = clock()
        self._rng = random.Random(config.sim.seed)
        self._sample_counter = 0
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._running: list[_Seq] = []
        self._wakeup = asyncio.Event()
        self._dead = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready_at = math.inf
        self._last_end = 0.0
        self._busy: collections.deque[tuple[float, float]] = collections.deque()
        self._current: tuple[float, float] | None = None
        self.steps = 0
        self.busy_seconds = 0.0
        """Simulated seconds the step loop has been busy (engine time spent)."""

    # --- time ------------------------------------------------------------------------------------
    def now(self) -> float:
        """Simulated seconds since the engine was created."""
        return (self._clock() - self._t0) * self.config.sim.time_scale

    async def _sleep_until(self, sim_deadline: float) -> None:
        delay = (sim_deadline - self.now()) / self.config.sim.time_scale
        if delay > 0:
            await asyncio.sleep(delay)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._ready_at = self.now() + self.config.sim.startup_delay_s
        self._task = asyncio.create_task(self._loop(), name="sim-engine-steps")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for seq in [*self._running, *self._waiting]:
            seq.out.put_nowait(None)

    async def ready(self) -> bool:
        return self.faults.crashed is None and self.now() >= self._ready_at

    async def wait_dead(self) -> str:
        await self._dead.wait()
        return self.faults.crashed or "crashed"

    def crash(self, reason: str = "injected crash") -> None:
        """Fault injection: the engine dies (the worker exits non-zero)."""
        self.faults.crashed = reason
        self._dead.set()

    # --- the step loop --------------------------------------------------------------------------
    def _schedule(self) -> tuple[list[tuple[_Seq, int]], list[_Seq]]:
        """Pick this step's work: (sequence, prefill chunk) pairs and decoding sequences."""
        p = self.profile
        budget = p.max_num_batched_tokens
        kv_used = sum(s.kv_tokens for s in self._running)
        prefills: list[tuple[_Seq, int]] = []
        decodes: list[_Seq] = []
        index = 0
        while index < len(self._running) and budget > 0:
            seq = self._running[index]
            need = 1 if seq.decoding else min(seq.prefill_target - seq.prefilled, budget)
            while kv_used + need > p.kv_cache_tokens and len(self._running) - 1 > index:
                victim = self._running.pop()
                kv_used -= victim.kv_tokens
                self._preempt(victim)
            if kv_used + need > p.kv_cache_tokens:
                break
            kv_used += need
            budget -= need
            if seq.decoding:
                decodes.append(seq)
            else:
                prefills.append((seq, need))
            index += 1
        while self._waiting and budget > 0 and len(self._running) < p.max_num_seqs:
            seq = self._waiting[0]
            if seq.parent is not None and seq.parent not in self._running and seq.parent not in self._waiting:
                seq.parent = None  # the parent finished and freed the prompt: prefill it again
            if seq.parent is not None:
                # Parallel sampling (n > 1): the fork joins once its parent's prompt is in the
                # cache and then only decodes (one prefill for all n samples, as in vLLM).
                if not (seq.parent.decoding and seq.parent in self._running):
                    break
                seq.prefilled = seq.prefill_target
                chunk = 1
            else:
                chunk = min(seq.prefill_target - seq.prefilled, budget)
            if kv_used + chunk > p.kv_cache_tokens:
                break
            self._waiting.popleft()
            self._running.append(seq)
            if seq.scheduled_at is None:
                seq.scheduled_at = self.now()
            kv_used += chunk
            budget -= chunk
            if seq.decoding:
                decodes.append(seq)
            else:
                prefills.append((seq, chunk))
        return prefills, decodes

    def _preempt(self, seq: _Seq) -> None:
        # Recompute preemption: the KV is freed, prompt and generated tokens are prefilled again
        # (a fork then holds a copy of the prompt of its own).
        seq.prefill_target = seq.prompt_tokens + seq.generated
        seq.parent = None
        seq.prefilled = 0
        seq.preemptions += 1
        self.metrics.preemptions_l.inc()
        self._waiting.appendleft(seq)

    def _step_seconds(self, prefill_tokens: int, decodes: list[_Seq]) -> float:
        ctx = sum(s.ctx_tokens for s in decodes)
        seconds = step_time_s(self.profile, prefill_tokens, len(decodes), ctx) * self.faults.slowdown
        jitter = self.config.sim.jitter
        if jitter > 0:
            # Log-normal with mean 1 and relative standard deviation ≈ jitter.
            sigma = math.sqrt(math.log1p(jitter * jitter))
            seconds *= self._rng.lognormvariate(-sigma * sigma / 2, sigma)
        return seconds

    async def _loop(self) -> None:
        await self._sleep_until(self._ready_at)
        continuing = False
        while True:
            if not self._running and not self._waiting:
                self._wakeup.clear()
                self._update_gauges()
                await self._wakeup.wait()
                continuing = False
                continue
            prefills, decodes = self._schedule()
            if not prefills and not decodes:
                # Nothing fits (a prompt larger than the KV cache): fail it instead of spinning.
                seq = self._waiting.popleft()
                seq.finish_reason = "error"
                seq.out.put_nowait(None)
                continue
            prefill_tokens = sum(chunk for _, chunk in prefills)
            now = self.now()
            # Back-to-back steps chain exactly (timer resolution must not leak into latencies);
            # after an idle wait, or when the event loop lagged by more than _MAX_LAG_S, the step
            # starts now.
            start = (
                self._last_end
                if continuing and now - self._last_end < _MAX_LAG_S
                else max(now, self._last_end)
            )
            end = start + self._step_seconds(prefill_tokens, decodes)
            self._current = (start, end)
            self._update_gauges()
            await self._sleep_until(end)
            self._current = None
            self._last_end = end
            continuing = True
            self._record_busy(start, end)
            self.steps += 1
            self.busy_seconds += end - start
            self.metrics.iteration.observe(prefill_tokens + len(decodes))
            self.metrics.prompt_tokens_l.inc(prefill_tokens)
            for seq, chunk in prefills:
                seq.prefilled += chunk
                if seq.decoding:
                    self._emit(seq, end)
            for seq in decodes:
                self._emit(seq, end)
            self._running = [s for s in self._running if s.generated < len(s.tokens)]

    def _emit(self, seq: _Seq, at: float) -> None:
        if seq.generated >= len(seq.tokens):
            return
        if seq.first_token_at is None:
            seq.first_token_at = at
            self.metrics.ttft.observe(at - seq.arrival)
        elif seq.last_token_at is not None:
            self.metrics.itl.observe(at - seq.last_token_at)
        seq.out.put_nowait(seq.tokens[seq.generated])
        seq.generated += 1
        seq.last_token_at = at
        self.metrics.generation_tokens_l.inc()
        if seq.generated == len(seq.tokens):
            self._finish(seq, at)

    def _finish(self, seq: _Seq, at: float) -> None:
        m = self.metrics
        scheduled = seq.scheduled_at if seq.scheduled_at is not None else at
        first = seq.first_token_at if seq.first_token_at is not None else at
        m.e2e.observe(at - seq.arrival)
        m.queue.observe(scheduled - seq.arrival)
        m.inference.observe(at - scheduled)
        m.prefill_time.observe(first - scheduled)
        m.decode_time.observe(at - first)
        if seq.generated > 1:
            m.tpot.observe((at - first) / (seq.generated - 1))
        m.req_prompt.observe(seq.prompt_tokens)
        m.req_gen.observe(seq.generated)
        m.req_preemptions.observe(seq.preemptions)
        m.success.labels(finished_reason=seq.finish_reason, **m.values).inc()
        seq.out.put_nowait(None)

    def _record_busy(self, start: float, end: float) -> None:
        self._busy.append((start, end))
        horizon = end - self.config.sim.gpu_util_window_s
        while self._busy and self._busy[0][1] < horizon:
            self._busy.popleft()

    def gpu_busy_fraction(self) -> float:
        """Fraction of the last ``gpu_util_window_s`` simulated seconds the step loop was busy."""
        window = self.config.sim.gpu_util_window_s
        now = self.now()
        lo = now - window
        steps = [*self._busy, self._current] if self._current is not None else self._busy
        busy = sum(max(0.0, min(e, now) - max(s, lo)) for s, e in steps)
        return min(1.0, busy / window)

    def _update_gauges(self) -> None:
        m = self.metrics
        m.running_l.set(len(self._running))
        m.waiting_l.set(len(self._waiting))
        m.kv_usage_l.set(min(1.0, sum(s.kv_tokens for s in self._running) / self.profile.kv_cache_tokens))

    # --- requests ---------------------------------------------------------------------------------
    def submit(
        self,
        prompt: str,
        max_tokens: int,
        *,
        n: int = 1,
        seed: int | None = None,
        stop: tuple[str, ...] = (),
        plain_tokens: int | None = None,
    ) -> list[_Seq]:
        """Queue ``n`` sequences of ``prompt``; each yields its tokens on ``seq.out`` then None.
        ``stop`` ends a sequence at the first of those strings; ``plain_tokens`` is the length
        of a plain answer without a limit (see :func:`generate_tokens`)."""
        prompt_tokens = count_tokens(prompt)
        self.metrics.params_n.observe(n)
        self.metrics.params_max_tokens.observe(max_tokens)
        self.metrics.max_gen.observe(max_tokens)
        seqs: list[_Seq] = []
        for i in range(n):
            self._sample_counter += 1
            sample_seed = (
                hash((self.config.sim.seed, seed, i))
                if seed is not None
                else hash((self.config.sim.seed, self._sample_counter))
            )
            tokens, reason = generate_tokens(
                prompt,
                max_tokens,
                self.config.sim.output_tokens,
                sample_seed,
                plain_tokens=plain_tokens,
                verdict_flip=self.config.sim.verdict_flip,
            )
            tokens, stop_reason = cut_at_stop(tokens, stop)
            seq = _Seq(
                prompt_tokens,
                tokens,
                "stop" if stop_reason is not None else reason,
                self.now(),
                n,
                max_tokens,
                stop_reason=stop_reason,
                parent=seqs[0] if seqs else None,
            )
            self.metrics.prefix_queries_l.inc(prompt_tokens)
            if not tokens:
                self._finish(seq, seq.arrival)
            else:
                self._waiting.append(seq)
            seqs.append(seq)
        self._update_gauges()
        self._wakeup.set()
        return seqs

    def abort(self, seqs: Sequence[Sample]) -> None:
        """Take unfinished sequences out of the engine (their client left): they free their KV
        cache and batch slots and count as ``finished_reason="abort"``."""
        gone = {id(seq) for seq in seqs}
        aborted = [s for s in [*self._running, *self._waiting] if id(s) in gone]
        if not aborted:
            return
        self._running = [s for s in self._running if id(s) not in gone]
        self._waiting = collections.deque(s for s in self._waiting if id(s) not in gone)
        for seq in aborted:
            seq.finish_reason = "abort"
            self.metrics.success.labels(finished_reason="abort", **self.metrics.values).inc()
            seq.out.put_nowait(None)
        self._update_gauges()

    def _check(self, prompt_tokens: int, max_tokens: int) -> None:
        if self.faults.crashed is not None:
            raise EngineError(f"engine is dead: {self.faults.crashed}", 500)
        if self.faults.error_rate > 0 and self._rng.random() < self.faults.error_rate:
            raise EngineError("injected engine failure", 500)
        if prompt_tokens + max_tokens > self.max_model_len:
            raise EngineError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion).",
                400,
            )

    async def call(self, path: str, body: dict[str, Any]) -> EngineReply:
        try:
            if path == "/v1/completions":
                return await self._completions(body)
            if path == "/v1/chat/completions":
                return await self._chat(body)
            raise EngineError(f"Not Found: {path}", 404)
        except EngineError as error:
            return error_reply(error)

    async def _completions(self, body: dict[str, Any]) -> EngineReply:
        request = request_params(body, self.model_name)
        prompts = completion_prompts(body)
        max_tokens = request.max_tokens or 16  # never None for completions (vLLM's default 16)
        for prompt in prompts:
            self._check(count_tokens(prompt), max_tokens)
        seqs = [
            seq
            for prompt in prompts
            for seq in self.submit(prompt, max_tokens, n=request.n, seed=request.seed, stop=request.stop)
        ]
        return await completion_reply(self.model_name, seqs, request, prompts, self.abort)

    async def _chat(self, body: dict[str, Any]) -> EngineReply:
        request = request_params(body, self.model_name, chat=True)
        prompt = chat_prompt(body)
        prompt_tokens = count_tokens(prompt)
        # Without a limit vLLM allows the rest of the context and a real model ends at its EOS:
        # the sim ends a plain answer after sim.output_tokens tokens with finish_reason "stop".
        unlimited = request.max_tokens is None
        max_tokens = self.max_model_len - prompt_tokens if request.max_tokens is None else request.max_tokens
        self._check(prompt_tokens, max(1, max_tokens))
        seqs = self.submit(
            prompt,
            max_tokens,
            n=request.n,
            seed=request.seed,
            stop=request.stop,
            plain_tokens=self.config.sim.output_tokens if unlimited else None,
        )
        return await chat_reply(self.model_name, seqs, request, self.abort)

    async def models(self) -> EngineReply:
        root = self.config.model.path or self.config.model.name
        return models_reply(self.model_name, root=root, max_model_len=self.max_model_len)

    async def metrics_text(self) -> str:
        self._update_gauges()
        return self.metrics.render(self.gpu_busy_fraction())
