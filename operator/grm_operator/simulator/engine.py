"""One simulated vLLM replica: continuous batching timed by ``perfmodel.step_time_s``, event to event.

The worker's ``sim`` engine runs one step at a time; an hour of a fleet would be millions of
steps. Here a replica jumps between *events* (a prefill completes, a group finishes, a new
request arrives) because between two events the batch is constant: ``D`` decoding sequences
over ``Σctx`` context tokens plus ``Pf`` prefill tokens a step, so step ``i`` of the segment lasts
``a + g·i`` with ``a = c + b·Pf + e·D + k·Σctx`` and ``g = k·D`` (every step adds one token to
each decoding context). ``n`` steps take ``n·a + g·n(n−1)/2`` — closed form, exact by step index.

A GRM score request with k samples is one *group*: its k critiques have the same prompt and
length, arrive together and are admitted together, so they progress in lockstep. Shuffled
sampling prefills the prompt k times (k·P prefill tokens), SharedPrefill once (P). As in vLLM:
decodes are scheduled first, prefill takes the rest of ``max_num_batched_tokens`` (chunked
prefill, first come first served), and waiting groups are admitted only while that token budget
has room after the running ones' decodes and unfinished prompts (vLLM V1's scheduler: a prefill
backlog shows as requests *waiting*, as the worker's sim engine shows it too); admission also
stops at ``max_num_seqs`` or when the group's final KV footprint (prompt + output of each sample)
would not fit the KV cache — reserving rather than preempting, a conservative simplification of
vLLM's recompute preemption. A group's TTFT
is the step that completes its whole prefill (its slowest sample's first token).
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from grm_worker.contract.perfmodel import PerformanceProfile, step_time_s


@dataclass(slots=True)
class Group:
    """One GRM score request (k sequences in lockstep) and what happened to it."""

    index: int
    arrival: float
    prompt: int
    output: int
    samples: int
    shared_prefill: bool
    quality: float
    variant: str = ""
    prefill_left: int = 0
    generated: int = 0
    admitted: float | None = None
    #: First token of the first sample (the score request's TTFT) and of the last one.
    first_token: float | None = None
    last_first_token: float | None = None
    finished: float | None = None
    decode_s: float = 0.0
    #: Samples of the budget not drawn: the worker lowered k because its engine had a queue.
    shed: int = 0
    #: When it was handed to a replica's engine (its queue time counts from then).
    submitted: float = 0.0

    def __post_init__(self) -> None:
        self.prefill_left = self.prompt_tokens

    @property
    def prompt_tokens(self) -> int:
        """Prefill tokens of the group (one prompt with shared prefill, k otherwise)."""
        return self.prompt if self.shared_prefill else self.prompt * self.samples

    @property
    def kv_final(self) -> int:
        """KV tokens the group holds at its end."""
        return self.prompt_tokens + self.output * self.samples

    @property
    def kv_now(self) -> int:
        """KV tokens the group holds now."""
        return self.prompt_tokens - self.prefill_left + self.samples * self.generated

    @property
    def ctx(self) -> int:
        """Context tokens the group's decoding sequences attend over."""
        return self.samples * (self.prompt + self.generated)


@dataclass(slots=True)
class StepSample:
    """A run of engine steps: when it ended, the mean step (= inter-token latency), tokens made."""

    time: float
    step_s: float
    tokens: int


@dataclass
class Replica:
    """A replica's engine: waiting and running groups and its clock (see module doc)."""

    profile: PerformanceProfile
    rng: random.Random
    jitter: float = 0.05
    clock: float = 0.0
    waiting: deque[Group] = field(default_factory=deque)
    running: list[Group] = field(default_factory=list)
    busy_s: float = 0.0
    #: When the last engine step ended (a drained replica is released then).
    last_step_end: float = 0.0
    kv_reserved: int = 0
    seqs: int = 0
    #: vLLM's queue-time histogram as counters: sequences admitted so far and the seconds they
    #: waited for admission in all (the worker reads them to tell a full batch from a step's wait).
    admitted_seqs: int = 0
    queued_s: float = 0.0
    #: The running groups split by phase, each in admission order, and their sums kept up to date
    #: event by event (exact integers), so a step costs one pass over the decoding groups rather
    #: than a sum over every running one per quantity.
    decoding: list[Group] = field(default_factory=list)
    prefilling: list[Group] = field(default_factory=list)
    #: Sequences decoding, their context tokens, and prefill tokens still to compute.
    decode_seqs: int = 0
    decode_ctx: int = 0
    prefill_backlog: int = 0
    #: Fewest tokens any decoding group has left to generate (inf when none decodes).
    decode_left: float = math.inf

    def waiting_seqs(self) -> int:
        """Sequences waiting for admission (``vllm:num_requests_waiting``)."""
        return sum(g.samples for g in self.waiting)

    def outstanding(self) -> int:
        """Sequences queued or running."""
        return self.seqs + self.waiting_seqs()

    def submit(self, group: Group, now: float) -> None:
        """Queue a group handed to the replica at ``now`` (call :meth:`advance` to ``now`` first)."""
        group.submitted = now
        self.waiting.append(group)
        if self.clock < now and not self.running:
            self.clock = now

    def _admit(self) -> None:
        p = self.profile
        # vLLM V1 schedules the running requests first (decodes, then their prompts' next chunks)
        # and admits waiting ones only while the step's token budget has room: a prefill backlog
        # keeps new requests *waiting* (vllm:num_requests_waiting, queue time) rather than admitted.
        budget = p.max_num_batched_tokens - self.decode_seqs - self.prefill_backlog
        while self.waiting:
            g = self.waiting[0]
            fits_kv = self.kv_reserved + g.kv_final <= p.kv_cache_tokens
            fits_seqs = self.seqs + g.samples <= p.max_num_seqs
            # A group larger than an empty engine still runs alone (vLLM would truncate or fail it).
            if not (fits_kv and fits_seqs and budget > 0) and self.running:
                return
            budget -= g.prefill_left
            self.waiting.popleft()
            g.admitted = self.clock
            self.admitted_seqs += g.samples
            self.queued_s += g.samples * max(0.0, self.clock - g.submitted)
            self.running.append(g)
            self.kv_reserved += g.kv_final
            self.seqs += g.samples
            if g.prefill_left > 0:
                self.prefilling.append(g)
                self.prefill_backlog += g.prefill_left
            else:
                self._start_decoding(g)

    def _start_decoding(self, g: Group) -> None:
        self.decoding.append(g)
        self.decode_seqs += g.samples
        self.decode_ctx += g.ctx
        left = g.output - g.generated
        if 0 < left < self.decode_left:
            self.decode_left = left

    def advance(self, until: float, done: list[Group], itl: list[StepSample]) -> None:
        """Run the engine until its clock reaches ``until`` (the step running then completes) or it
        idles; finished groups go to ``done``, step runs to ``itl``."""
        p = self.profile
        while True:
            if self.clock >= until:
                return
            if not self.running and not self.waiting:
                self.clock = until
                return
            self._admit()
            decoding = self.decoding
            prefilling = self.prefilling
            d = self.decode_seqs
            ctx = self.decode_ctx
            budget = max(0, p.max_num_batched_tokens - d)
            pf = min(budget, self.prefill_backlog)
            a = step_time_s(p, pf, d, ctx)
            growth = p.attention_s_per_ctx_token * d
            n = self.decode_left
            if pf > 0:
                # Whole steps of pf tokens until the head prompt completes (never more prefill
                # than is left: pf ≤ the backlog, so one step always fits).
                n = min(n, max(1, prefilling[0].prefill_left // pf))
            # Steps that start before ``until``: the smallest n with elapsed(n) ≥ until − clock.
            span = until - self.clock
            if growth > 0:
                half = a - growth / 2
                n_t = math.ceil((-half + math.sqrt(half * half + 2 * growth * span)) / growth)
            else:
                n_t = math.ceil(span / a)
            steps = int(max(1, min(n, n_t)))
            base = elapsed = steps * a + growth * steps * (steps - 1) / 2
            if self.jitter > 0:
                sigma = math.sqrt(math.log1p(self.jitter * self.jitter))
                elapsed *= self.rng.lognormvariate(-sigma * sigma / 2, sigma)
            end = self.clock + elapsed
            self.busy_s += elapsed
            self.last_step_end = end
            if d:
                itl.append(StepSample(end, elapsed / steps, d * steps))
            any_finished = False
            left_min = math.inf
            for g in decoding:
                g.generated += steps
                g.decode_s += elapsed
                left = g.output - g.generated
                if left <= 0:
                    any_finished = True
                elif left < left_min:
                    left_min = left
            self.decode_left = left_min
            self.decode_ctx += d * steps
            if pf > 0:
                any_finished |= self._prefill(prefilling, pf, steps, a, growth, elapsed / max(base, 1e-12))
            self.clock = end
            if any_finished:
                finished = [g for g in self.running if g.prefill_left == 0 and g.generated >= g.output]
                for g in finished:
                    g.finished = end
                    self.kv_reserved -= g.kv_final
                    self.seqs -= g.samples
                    self.decode_seqs -= g.samples
                    self.decode_ctx -= g.ctx
                    done.append(g)
                self.running = [g for g in self.running if g.finished is None]
                self.decoding = [g for g in self.decoding if g.finished is None]

    def _prefill(
        self, prefilling: list[Group], pf: int, steps: int, a: float, growth: float, stretch: float
    ) -> bool:
        """Hand ``pf`` prefill tokens a step, first come first served, for ``steps`` steps; a sample's
        first token comes at the end of the step that completes its prompt (exact step index).
        Groups whose prompt completes start decoding; returns whether one of them is already done
        (a one-token critique)."""
        start = self.clock

        def at(tokens: int) -> float:
            s = math.ceil(tokens / pf)
            return start + (s * a + growth * s * (s - 1) / 2) * stretch

        total = pf * steps
        offset = 0
        completed = 0
        finished = False
        for g in prefilling:
            if offset >= total:
                break
            if g.first_token is None:
                need = g.prompt - (g.prompt_tokens - g.prefill_left)
                if offset + need <= total:
                    g.first_token = at(offset + need)
            used = min(total - offset, g.prefill_left)
            g.prefill_left -= used
            self.prefill_backlog -= used
            offset += used
            if g.prefill_left == 0:
                g.last_first_token = at(offset)
                g.generated = 1
                completed += 1
                self._start_decoding(g)
                finished |= g.generated >= g.output
        if completed:
            # FCFS: the completed prompts are the head of the list.
            del prefilling[:completed]
        return finished
