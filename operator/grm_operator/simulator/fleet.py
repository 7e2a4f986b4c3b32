"""The simulated fleet of one GRMDeployment: pods, GPUs, routing, metrics, and a controller's loop.

What the operator and the cluster do, in simulated time:

* **Pods.** A requested replica is scheduled when the GPU pool (``spec.max_gpus()``) has its
  ``gpusPerReplica`` free, else it stays Pending; a scheduled one becomes Ready after its
  variant's cold start. Its GPUs count (``gpu_hours``) from the request (from scheduling when it
  was Pending) until it is released; a removed Ready replica first drains (no new requests).
* **Routing.** Requests go round-robin to Ready replicas (a Kubernetes Service); while none is
  Ready they wait at the gateway and are rejected after ``gateway_timeout_s``.
* **Sample shedding** (spec.scoring.shedSamples OnQueue, the worker's behaviour): a request
  routed to a replica whose batch the worker last read as full runs at the variant's shed floor
  (the fewest admissible samples); the samples not drawn reach the policy as ``shed_sps``. The
  worker's own rule decides (``grm_worker.contract.shedding.queue_blocked`` on its reads, once a second, of
  the engine's waiting sequences and queue-time counters): requests wait, and those admitted
  since the last read waited ``shed_queue_s`` (0.25 s) or more on average, or none was admitted
  while some waited on both reads. A request that waits a step or two for the token budget
  (chunked prefill keeps a short queue at moderate load) does not shed.
* **Metrics.** Every ``scrape_interval_s`` the window's completed requests give rates and p50/p95
  latencies, the replicas' gauges give running/waiting/KV, busy time gives GPU utilisation; the
  controller sees the newest scrape (its age is ``sample_age_s``).
* **Switches** as the operator does them: the new variant's replicas are surged (cold start,
  GPUs of both variants count), the old variant drains once the new one is Ready (or after the
  switch timeout); when the new pods are Pending for lack of GPUs, one old replica drains per tick.
* **Model error.** Replicas run on the variant's profile ``model_error``× slower than the one the
  policies are given.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.metrics.signals import Signals
from grm_operator.policy.capacity import shed_floor, variant_profile, voting_accuracy
from grm_operator.policy.types import Observation
from grm_operator.simulator.engine import Group, Replica, StepSample
from grm_operator.simulator.trace import Trace
from grm_worker.contract.config import ScoringConfig
from grm_worker.contract.shedding import QueueReading, queue_blocked, shed_samples

SCRAPE_INTERVAL_S = 15.0
#: Scrapes happen half an interval before control ticks: the policy's data is 7.5 s old.
SCRAPE_PHASE_S = 7.5
GATEWAY_TIMEOUT_S = 60.0
#: The worker's shedding poll and full-batch threshold, as the operator deploys it (its defaults).
WORKER_SCORING = ScoringConfig()
#: After the last arrival, in-flight requests get this long to finish.
DRAIN_TAIL_S = 600.0


@dataclass(frozen=True)
class Command:
    """What a controller wants: variant, replicas and sample budget. With ``scale`` (replicas per
    variant, as the operator's actuation sets the variant Deployments) the fleet applies exactly
    that and takes ``variant`` as the active one; without it a new variant is surged and the old
    one drained once it is Ready (the baselines' simple switch)."""

    variant: str
    replicas: int
    samples: int
    scale: Mapping[str, int] | None = None


@dataclass
class FleetView:
    """What a controller may look at on a tick."""

    now: float
    observation: Observation
    #: Sequences in flight (running + queued) over Ready replicas, measured now (KPA's metric).
    concurrency: float


class Controller(Protocol):
    """A scaling policy driven by the simulator."""

    name: str
    period_s: float

    def start(self, fleet: Fleet) -> Command:
        """The fleet at time 0 (its replicas are Ready at once)."""
        ...

    def tick(self, view: FleetView) -> Command:
        """The command for this control period."""
        ...


@dataclass(frozen=True)
class SimConfig:
    """Everything a run depends on besides the controller."""

    spec: GRMDeploymentSpec
    trace: Trace
    model_error: float = 1.0
    seed: int = 0
    jitter: float = 0.05
    scrape_interval_s: float = SCRAPE_INTERVAL_S
    gateway_timeout_s: float = GATEWAY_TIMEOUT_S

    @property
    def samples_max(self) -> int:
        return self.spec.scoring.samples.max


@dataclass
class Pod:
    """One worker replica of a variant."""

    variant: str
    gpus: int
    engine: Replica
    requested: float
    cold_start_s: float
    scheduled: float | None = None
    ready_at: float | None = None
    draining_since: float | None = None
    released: float | None = None
    busy_marks: deque[tuple[float, float]] = field(default_factory=deque)
    #: The worker's shedding poll: its last read of the engine's queue, and whether that read
    #: found the batch full.
    queue_reading: QueueReading | None = None
    batch_full: bool = False

    def read_queue(self, now: float) -> bool:
        """The worker's poll: read the engine's queue at ``now`` (its engine advanced to ``now``)
        and judge it against the previous read as the worker does; the verdict stands until the
        next read."""
        e = self.engine
        reading = QueueReading(float(e.waiting_seqs()), float(e.admitted_seqs), e.queued_s)
        self.batch_full = bool(queue_blocked(self.queue_reading, reading, WORKER_SCORING.shed_queue_s))
        self.queue_reading = reading
        return self.batch_full

    def ready(self, now: float) -> bool:
        return self.ready_at is not None and self.ready_at <= now and self.released is None


@dataclass
class SeriesPoint:
    """One control tick of the time series (for the plot)."""

    time: float
    #: GPUs scheduled (held by pods, draining ones included).
    gpus: int
    replicas: dict[str, int]
    active: str
    samples: int
    ttft_p95: float | None
    e2e_p95: float | None


@dataclass
class RunResult:
    """A controller's run: the issue's JSON numbers and the series for the plot."""

    name: str
    slo_attainment: float
    gpu_hours: float
    mean_quality: float
    p95_ttft_s: float
    p95_e2e_s: float
    switches: int
    scale_events: int
    rejected: int
    served: int
    total: int
    series: list[SeriesPoint]

    def summary(self) -> dict[str, float | int]:
        """The per-policy object of ``--json``."""
        return {
            "slo_attainment": round(self.slo_attainment, 6),
            "gpu_hours": round(self.gpu_hours, 4),
            "mean_quality": round(self.mean_quality, 6),
            "p95_ttft_s": round(self.p95_ttft_s, 4),
            "p95_e2e_s": round(self.p95_e2e_s, 4),
            "switches": self.switches,
            "scale_events": self.scale_events,
            "rejected": self.rejected,
        }


def point_quality(spec: GRMDeploymentSpec, variant: str, samples: int) -> float:
    """Quality of a (variant, k) point, as :func:`grm_operator.policy.capacity.operating_points`."""
    ref = voting_accuracy(spec.scoring.samples.max)
    return spec.variant(variant).quality * voting_accuracy(samples) / ref


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _weighted_pct(samples: list[StepSample], q: float) -> float | None:
    if not samples:
        return None
    steps = np.array([s.step_s for s in samples])
    weights = np.array([s.tokens for s in samples], dtype=np.float64)
    order = np.argsort(steps)
    cum = np.cumsum(weights[order])
    idx = int(np.searchsorted(cum, q / 100.0 * cum[-1]))
    return float(steps[order][min(idx, len(steps) - 1)])


class Fleet:
    """One simulated run of a controller over the trace (see module doc)."""

    def __init__(self, config: SimConfig, controller: Controller, *, cold_start: bool = True) -> None:
        self.config = config
        self.spec = config.spec
        self.controller = controller
        self.cold_start = cold_start
        self.rng = random.Random(config.seed)
        self.pods: list[Pod] = []
        self.gateway: deque[Group] = deque()
        self.done: list[Group] = []
        self.rejected: list[Group] = []
        self.window_done: deque[Group] = deque()
        self.itl: dict[str, list[StepSample]] = {v.name: [] for v in self.spec.variants}
        self.active = self.spec.variants[0].name
        self.samples = config.samples_max
        self.switching_from: str | None = None
        self.switch_started = 0.0
        self.switches = 0
        self.scale_events = 0
        self.rr = 0
        self.latest: Signals | None = None
        self.latest_variants: dict[str, Signals] = {}
        self.latest_time = 0.0
        self.series: list[SeriesPoint] = []
        self.window_s = parse_duration(self.spec.metrics.window)
        #: The workers' shed floor per variant (spec.scoring.shedSamples): every policy runs the
        #: same workers, so the baselines shed too.
        self.shed_floor = {v.name: shed_floor(self.spec, v.name) for v in self.spec.variants}

    # --- pods ------------------------------------------------------------------------------------
    def _new_pod(self, variant: str, now: float, warm: bool) -> Pod:
        v = self.spec.variant(variant)
        prior = variant_profile(v)
        truth = prior.scaled(self.config.model_error) if self.config.model_error != 1.0 else prior
        engine = Replica(truth, random.Random(self.rng.random()), jitter=self.config.jitter, clock=now)
        cold = prior.cold_start_s if (self.cold_start and not warm) else 0.0
        pod = Pod(variant, v.gpus_per_replica, engine, now, cold)
        self.pods.append(pod)
        return pod

    def _gpus_used(self) -> int:
        return sum(p.gpus for p in self.pods if p.scheduled is not None and p.released is None)

    def _schedule(self, now: float) -> None:
        free = self.spec.max_gpus() - self._gpus_used()
        for pod in self.pods:
            if pod.scheduled is None and pod.released is None and pod.gpus <= free:
                pod.scheduled = now
                pod.ready_at = now + pod.cold_start_s
                free -= pod.gpus

    def live(self, variant: str) -> list[Pod]:
        """Pods of ``variant`` that count as desired (not draining, not released)."""
        return [
            p for p in self.pods if p.variant == variant and p.released is None and p.draining_since is None
        ]

    def _remove(self, pod: Pod, now: float) -> None:
        if pod.scheduled is None or not pod.ready(now):
            pod.released = now  # never served: the GPU (if any) frees at once
        else:
            pod.draining_since = now

    def _resize(self, variant: str, replicas: int, now: float) -> None:
        pods = self.live(variant)
        for _ in range(replicas - len(pods)):
            self._new_pod(variant, now, warm=False)
        if replicas < len(pods):
            # Cheapest first: Pending, then starting (newest first), then the least-loaded Ready.
            order = sorted(
                pods,
                key=lambda p: (
                    p.scheduled is not None,
                    p.ready(now),
                    -p.requested if not p.ready(now) else p.engine.outstanding(),
                ),
            )
            for pod in order[: len(pods) - replicas]:
                self._remove(pod, now)

    def apply(self, command: Command, now: float) -> None:
        """Carry out a controller's command (a switch surges the new variant)."""
        self.samples = command.samples
        replicas = max(0, command.replicas)
        if command.scale is not None:
            if command.variant != self.active:
                self.switches += 1
            elif command.scale.get(self.active, 0) != len(self.live(self.active)):
                self.scale_events += 1
            self.active = command.variant
            for variant, count in command.scale.items():
                if count != len(self.live(variant)):
                    self._resize(variant, max(0, count), now)
            self._schedule(now)
            return
        if command.variant != self.active:
            self.switches += 1
            self.switching_from = self.active
            self.switch_started = now
            self.active = command.variant
            self._resize(command.variant, replicas, now)
        else:
            if replicas != len(self.live(self.active)):
                self.scale_events += 1
            self._resize(self.active, replicas, now)
        self._schedule(now)

    def _progress_switch(self, now: float) -> None:
        old = self.switching_from
        if old is None:
            return
        new_pods = self.live(self.active)
        ready = sum(1 for p in new_pods if p.ready(now))
        timeout = parse_duration(self.spec.rollout.switch_timeout)
        if ready >= len(new_pods) or now - self.switch_started >= timeout:
            for pod in self.live(old):
                self._remove(pod, now)
            self.switching_from = None
        elif any(p.scheduled is None for p in new_pods):
            olds = [p for p in self.live(old) if p.ready(now)]
            if olds:
                self._remove(min(olds, key=lambda p: p.engine.outstanding()), now)

    # --- time -------------------------------------------------------------------------------------
    def _advance(self, pod: Pod, until: float) -> None:
        done: list[Group] = []
        pod.engine.advance(until, done, self.itl[pod.variant])
        if done:
            self.done.extend(done)
            self.window_done.extend(done)

    def _advance_all(self, now: float) -> None:
        for pod in self.pods:
            if pod.released is None and pod.scheduled is not None:
                self._advance(pod, now)
                if pod.draining_since is not None and not pod.engine.running and not pod.engine.waiting:
                    pod.released = max(pod.draining_since, min(now, pod.engine.last_step_end))

    def _routable(self, now: float) -> list[Pod]:
        return [p for p in self.pods if p.draining_since is None and p.ready(now)]

    def _dispatch(self, group: Group, pods: list[Pod], now: float) -> None:
        pod = pods[self.rr % len(pods)]
        self.rr += 1
        self._advance(pod, now)
        group.variant = pod.variant
        # The worker's own rule: its last read found the batch full, so this one runs at the floor.
        shed = shed_samples(group.samples, self.shed_floor.get(pod.variant), float(pod.batch_full))
        if shed:
            group.shed = shed
            group.samples -= shed
            group.prefill_left = group.prompt_tokens
        group.quality = point_quality(self.spec, pod.variant, group.samples)
        pod.engine.submit(group, now)

    def _flush_gateway(self, now: float) -> None:
        while self.gateway and now - self.gateway[0].arrival > self.config.gateway_timeout_s:
            self.rejected.append(self.gateway.popleft())
        if self.gateway:
            pods = self._routable(now)
            while pods and self.gateway:
                self._dispatch(self.gateway.popleft(), pods, now)

    # --- metrics ----------------------------------------------------------------------------------
    def _scrape(self, now: float) -> None:
        w = self.window_s
        while (
            self.window_done
            and self.window_done[0].finished is not None
            and self.window_done[0].finished < now - w - 60
        ):
            self.window_done.popleft()
        recent = [g for g in self.window_done if g.finished is not None and now - w < g.finished <= now]
        per_variant: dict[str, Signals] = {}
        for v in self.spec.variants:
            name = v.name
            pods = [p for p in self.pods if p.variant == name and p.ready(now)]
            groups = [g for g in recent if g.variant == name]
            steps = [s for s in self.itl[name] if s.time > now - w]
            self.itl[name] = steps
            if not pods and not groups:
                continue
            per_variant[name] = self._signals(groups, steps, pods, now)
        self.latest_variants = per_variant
        every = [p for p in self.pods if p.ready(now)]
        all_steps = [s for steps in self.itl.values() for s in steps]
        self.latest = self._signals(recent, all_steps, every, now)
        self.latest_time = now

    def _signals(self, groups: list[Group], steps: list[StepSample], pods: list[Pod], now: float) -> Signals:
        # Rates over the window, or over the time since the start when that is shorter (as
        # Prometheus' rate() extrapolates a partial window).
        w = min(self.window_s, max(now, 1.0))
        seqs = sum(g.samples for g in groups)
        # vLLM's TTFT histogram has one value per sequence: the k samples' first tokens are spread
        # from the first sample's to the last one's (their prompts prefill one after another).
        ttft: list[float] = []
        for g in groups:
            first = g.first_token if g.first_token is not None else g.arrival
            last = g.last_first_token if g.last_first_token is not None else first
            if g.samples == 1:
                ttft.append(first - g.arrival)
            else:
                step = (last - first) / (g.samples - 1)
                ttft.extend(first - g.arrival + j * step for j in range(g.samples))
        e2e = [g.finished - g.arrival for g in groups if g.finished is not None]
        queue = [g.admitted - g.arrival for g in groups if g.admitted is not None]
        utils: list[float] = []
        kv: list[float] = []
        running = waiting = 0
        for p in pods:
            e = p.engine
            p.busy_marks.append((now, e.busy_s))
            while len(p.busy_marks) > 1 and p.busy_marks[1][0] <= now - w:
                p.busy_marks.popleft()
            t0, b0 = p.busy_marks[0]
            span = now - t0 if now - t0 > 0 else w
            utils.append(min(1.0, (e.busy_s - b0) / span) if now > t0 else 0.0)
            used = sum(g.kv_now for g in e.running)
            kv.append(min(1.0, used / e.profile.kv_cache_tokens))
            running += e.seqs
            waiting += e.waiting_seqs()
        return Signals(
            rps=seqs / w if groups else (0.0 if pods else None),
            prompt_tps=sum(g.prompt_tokens for g in groups) / w,
            generation_tps=sum(g.output * g.samples for g in groups) / w,
            shed_sps=sum(g.shed for g in groups) / w,
            ttft_p50=_pct(ttft, 50),
            ttft_p95=_pct(ttft, 95),
            itl_p50=_weighted_pct(steps, 50),
            itl_p95=_weighted_pct(steps, 95),
            e2e_p50=_pct(e2e, 50),
            e2e_p95=_pct(e2e, 95),
            queue_time_p95=_pct(queue, 95),
            running=float(running),
            waiting=float(waiting),
            kv_cache_usage=float(np.mean(kv)) if kv else None,
            gpu_util=float(np.mean(utils)) if utils else None,
            pods_reporting=len(pods),
            sample_age_s=0.0,
        )

    def observation(self, now: float) -> Observation:
        """The Observation the operator would build now (newest scrape, pod counts)."""
        total = self.latest
        if total is not None:
            total = Signals(**{**total.__dict__, "sample_age_s": now - self.latest_time})
        ready: dict[str, int] = {}
        pending: dict[str, int] = {}
        desired: dict[str, int] = {}
        for v in self.spec.variants:
            live = self.live(v.name)
            desired[v.name] = len(live)
            ready[v.name] = sum(1 for p in live if p.ready(now))
            pending[v.name] = sum(1 for p in live if p.scheduled is None)
        return Observation(
            time=now,
            total=total,
            variants=dict(self.latest_variants),
            active_variant=self.active,
            samples=self.samples,
            ready=ready,
            pending=pending,
            desired=desired,
        )

    def concurrency(self, now: float) -> float:
        """Sequences running or queued on Ready replicas now."""
        return float(sum(p.engine.outstanding() for p in self._routable(now)))

    # --- the run ----------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None) -> RunResult:
        """Replay the trace under the controller; ``progress`` gets the fraction done."""
        trace = self.config.trace
        spec = self.spec
        shared = spec.scoring.sampling == "SharedPrefill"
        start = self.controller.start(self)
        self.active = start.variant
        self.samples = start.samples
        for _ in range(start.replicas):
            self._new_pod(start.variant, 0.0, warm=True)
        self._schedule(0.0)
        end = trace.duration_s
        period = self.controller.period_s
        next_tick = period
        next_scrape = SCRAPE_PHASE_S
        # The workers' shedding polls (every shed_poll_s, with or without traffic), when any
        # variant sheds.
        poll_s = WORKER_SCORING.shed_poll_s
        next_poll = poll_s if any(f is not None for f in self.shed_floor.values()) else math.inf
        n = len(trace)
        times = trace.times.tolist()
        prompts = trace.prompt.tolist()
        outputs = trace.output.tolist()
        i = 0
        next_progress = 0.0
        while True:
            t_arr = times[i] if i < n else math.inf
            t_evt = min(next_tick, next_scrape, next_poll)
            if t_arr <= t_evt:
                now = t_arr
                group = Group(i, now, prompts[i], outputs[i], self.samples, shared, 0.0)
                i += 1
                self._flush_gateway(now)
                pods = self._routable(now)
                if pods and not self.gateway:
                    self._dispatch(group, pods, now)
                else:
                    self.gateway.append(group)
                continue
            now = t_evt
            if now > end + DRAIN_TAIL_S:
                break
            if (
                i >= n
                and now > end
                and not self.gateway
                and all(
                    not p.engine.running and not p.engine.waiting for p in self.pods if p.released is None
                )
            ):
                break
            self._advance_all(now)
            if now == next_poll:
                next_poll += poll_s
                for pod in self._routable(now):
                    pod.read_queue(now)
                if now not in (next_tick, next_scrape):
                    continue
            self._schedule(now)
            self._progress_switch(now)
            self._flush_gateway(now)
            if now == next_scrape:
                self._scrape(now)
                next_scrape += self.config.scrape_interval_s
            if now == next_tick:
                view = FleetView(now, self.observation(now), self.concurrency(now))
                self.apply(self.controller.tick(view), now)
                self._flush_gateway(now)
                total = self.latest
                self.series.append(
                    SeriesPoint(
                        now,
                        self._gpus_used(),
                        {v.name: len(self.live(v.name)) for v in spec.variants},
                        self.active,
                        self.samples,
                        total.ttft_p95 if total else None,
                        total.e2e_p95 if total else None,
                    )
                )
                next_tick += period
            if progress is not None and now >= next_progress:
                progress(min(1.0, now / max(end, 1e-9)))
                next_progress = now + max(end / 50, 1.0)
        self.rejected.extend(self.gateway)
        self.gateway.clear()
        for pod in self.pods:
            self.rejected.extend(pod.engine.waiting)
            self.rejected.extend(g for g in pod.engine.running if g.finished is None)
        return self._result(end)

    def _result(self, end: float) -> RunResult:
        slo = self.spec.slo
        met = 0
        ttfts: list[float] = []
        e2es: list[float] = []
        quality = 0.0
        for g in self.done:
            assert g.first_token is not None and g.finished is not None
            ttft = g.first_token - g.arrival
            e2e = g.finished - g.arrival
            itl = g.decode_s / (g.output - 1) if g.output > 1 else 0.0
            ttfts.append(ttft)
            e2es.append(e2e)
            quality += g.quality
            if (
                (slo.ttft_p95_s is None or ttft <= slo.ttft_p95_s)
                and (slo.e2e_p95_s is None or e2e <= slo.e2e_p95_s)
                and (slo.itl_p95_s is None or itl <= slo.itl_p95_s)
            ):
                met += 1
        gpu_s = 0.0
        for pod in self.pods:
            if pod.scheduled is None:
                continue
            start = pod.requested if pod.scheduled == pod.requested else pod.scheduled
            stop = min(pod.released if pod.released is not None else end, end)
            gpu_s += pod.gpus * max(0.0, stop - start)
        total = len(self.config.trace)
        served = len(self.done)
        return RunResult(
            name=self.controller.name,
            slo_attainment=met / total if total else 1.0,
            gpu_hours=gpu_s / 3600.0,
            mean_quality=quality / served if served else 0.0,
            p95_ttft_s=_pct(ttfts, 95) or 0.0,
            p95_e2e_s=_pct(e2es, 95) or 0.0,
            switches=self.switches,
            scale_events=self.scale_events,
            rejected=len(self.rejected),
            served=served,
            total=total,
            series=self.series,
        )
