"""The simulated fleet of one GRMDeployment: pods, GPUs, routing, metrics, and a controller's loop.

What the operator and the cluster do, in simulated time:

* **Pods.** A requested replica is scheduled when the GPU pool (``spec.max_gpus()``, or fewer
  GPUs when the cluster has fewer: :mod:`.cluster`, with or without a node autoscaler) has its
  ``gpusPerReplica`` free, else it stays Pending; a scheduled one becomes Ready after its
  variant's cold start. Its GPUs count (``gpu_hours``) from the request (from scheduling when it
  was Pending) until it is released; a removed Ready replica first drains (no new requests).
  The policies see each Pending pod's age (``Observation.pending_since``: since its request, as
  the operator reads PodScheduled=False's lastTransitionTime), so ``spec.scaling.pendingGrace``
  acts here as in the operator.
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
* **Cold start.** A scheduled replica is Ready after the cold-start estimate the operator sizes
  its startup probe from (:func:`grm_operator.policy.coldstart.cold_start` without measurements:
  a declared ``profile.coldStart``, else 60 s + the checkpoint's GB ÷ 0.25 GB/s, else the
  precision's prior), or after ``SimConfig.cold_start_s`` when a run gives one (a cluster
  measured faster or slower). The policies see each Ready pod's scheduling-to-Ready time
  (``Observation.cold_starts``, as the operator measures its pods) and learn the cold start
  from it as the operator does, so a run whose replicas start in ``cold_start_s`` moves their
  forecast horizon there once two replicas of a variant have started.
* **Model error.** Replicas run on the variant's profile ``model_error``× slower than the one the
  policies are given.
* **Live agreement** (``live_agreement``: each variant's true share of verdicts agreeing with the
  reference's, default 1): a finished score request of a variant other than the reference is
  shadowed with probability ``spec.precision.shadow.fraction`` and agrees with that probability
  (a generator of its own, so runs without it draw the same numbers as before); each scrape
  reports the compared and agreeing counts over ``spec.precision.shadow.window``, as the
  workers' ``grm_shadow_*`` counters do. The comparison is counted at once (the workers' reservoir
  replays later when the reference is not running) and the reference's cost of 1 % more scores
  is not modelled.

This module is the event loop and the state its steps share (:class:`Fleet`); one replica and
the worker's shedding poll are :mod:`.pod`, the scrape's arithmetic :mod:`.scrape`, what a
controller says and sees :mod:`.controller`, and what a run yields :mod:`.results`.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GRMDeploymentSpec, Variant
from grm_operator.policy.capacity import shed_floor, variant_profile, voting_accuracy
from grm_operator.policy.coldstart import StartSample, cold_start
from grm_operator.policy.signals import Signals
from grm_operator.policy.types import Observation
from grm_operator.simulator.cluster import ClusterModel, ClusterState
from grm_operator.simulator.controller import Command, Controller, FleetView
from grm_operator.simulator.engine import Group, Replica, StepSample
from grm_operator.simulator.pod import WORKER_SCORING, Pod
from grm_operator.simulator.results import RunResult, SeriesPoint, run_result
from grm_operator.simulator.scrape import window_signals
from grm_operator.simulator.trace import Trace
from grm_worker.contract.shedding import shed_samples

SCRAPE_INTERVAL_S = 15.0
#: Scrapes happen half an interval before control ticks: the policy's data is 7.5 s old.
SCRAPE_PHASE_S = 7.5
GATEWAY_TIMEOUT_S = 60.0
#: After the last arrival, in-flight requests get this long to finish.
DRAIN_TAIL_S = 600.0


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
    #: Per variant: the share of its verdicts that agree with the reference's (absent: 1).
    live_agreement: Mapping[str, float] = field(default_factory=dict)
    #: The replicas' actual cold start, s, when it differs from the estimate (the report's replay
    #: of a cluster whose pods were measured to start faster or slower); the policies still
    #: estimate theirs (:func:`replica_cold_start_s`).
    cold_start_s: float | None = None
    #: The cluster's GPUs (None: maxGPUs at all times).
    cluster: ClusterModel | None = None

    @property
    def samples_max(self) -> int:
        return self.spec.scoring.samples.max

    def gpu_ceiling(self) -> int:
        """The most GPUs any controller can hold at once: maxGPUs, or the cluster's maximum."""
        ceiling = self.spec.max_gpus()
        return ceiling if self.cluster is None else min(ceiling, self.cluster.ceiling)


def replica_cold_start_s(spec: GRMDeploymentSpec, variant: Variant, given: float | None = None) -> float:
    """Seconds from scheduling to Ready of a replica of ``variant``: the run's cold start when it
    gives one (``SimConfig.cold_start_s``), else the operator's estimate (module doc)."""
    return given if given is not None else cold_start(spec, variant).seconds


def point_quality(spec: GRMDeploymentSpec, variant: str, samples: int) -> float:
    """Quality of a (variant, k) point, as :func:`grm_operator.policy.capacity.operating_points`."""
    ref = voting_accuracy(spec.scoring.samples.max)
    return spec.variant(variant).quality * voting_accuracy(samples) / ref


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
        #: Shadowed score requests per variant: (finished, agreed with the reference), oldest first.
        self.shadow_log: dict[str, deque[tuple[float, bool]]] = {v.name: deque() for v in self.spec.variants}
        self.shadow_rng = random.Random(config.seed + 0x5AD0)
        self.shadow_window_s = parse_duration(self.spec.precision.shadow.window)
        self.cluster = None if config.cluster is None else ClusterState(config.cluster, delayed=cold_start)

    # --- pods ------------------------------------------------------------------------------------
    def _new_pod(self, variant: str, now: float, warm: bool) -> Pod:
        v = self.spec.variant(variant)
        prior = variant_profile(v)
        truth = prior.scaled(self.config.model_error) if self.config.model_error != 1.0 else prior
        engine = Replica(truth, random.Random(self.rng.random()), jitter=self.config.jitter, clock=now)
        given = self.config.cold_start_s
        cold = replica_cold_start_s(self.spec, v, given) if (self.cold_start and not warm) else 0.0
        pod = Pod(variant, v.gpus_per_replica, engine, now, cold, name=f"{variant}-{len(self.pods)}")
        self.pods.append(pod)
        return pod

    def _gpus_used(self) -> int:
        return sum(p.gpus for p in self.pods if p.scheduled is not None and p.released is None)

    def _schedule(self, now: float) -> None:
        used = self._gpus_used()
        pool = self.spec.max_gpus()
        if self.cluster is not None:
            unscheduled = [p.gpus for p in self.pods if p.scheduled is None and p.released is None]
            self.cluster.step(now, used, unscheduled)
            pool = min(pool, self.cluster.gpus)
        free = pool - used
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
            self._shadow(done)

    def _shadow(self, done: list[Group]) -> None:
        """The workers' shadow scoring of finished requests (see the module doc)."""
        fraction = self.spec.precision.shadow.fraction
        reference = self.spec.variants[0].name
        if fraction <= 0.0:
            return
        for group in done:
            if group.variant == reference or group.finished is None or group.variant not in self.shadow_log:
                continue
            if self.shadow_rng.random() < fraction:
                agrees = self.shadow_rng.random() < self.config.live_agreement.get(group.variant, 1.0)
                self.shadow_log[group.variant].append((group.finished, agrees))

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
            per_variant[name] = window_signals(groups, steps, pods, now, self.window_s)
        for name, log in self.shadow_log.items():
            while log and log[0][0] < now - self.shadow_window_s:
                log.popleft()
            if name in per_variant and log:
                compared = [agreed for t, agreed in log if t <= now]
                per_variant[name] = replace(
                    per_variant[name],
                    shadow_verdicts=float(len(compared)),
                    shadow_agreements=float(sum(compared)),
                )
        self.latest_variants = per_variant
        every = [p for p in self.pods if p.ready(now)]
        all_steps = [s for steps in self.itl.values() for s in steps]
        self.latest = window_signals(recent, all_steps, every, now, self.window_s)
        self.latest_time = now

    def observation(self, now: float) -> Observation:
        """The Observation the operator would build now (newest scrape, pod counts)."""
        total = self.latest
        if total is not None:
            total = Signals(**{**total.__dict__, "sample_age_s": now - self.latest_time})
        ready: dict[str, int] = {}
        pending: dict[str, int] = {}
        pending_since: dict[str, tuple[float, ...]] = {}
        desired: dict[str, int] = {}
        cold_starts: dict[str, tuple[StartSample, ...]] = {}
        for v in self.spec.variants:
            live = self.live(v.name)
            desired[v.name] = len(live)
            ready[v.name] = sum(1 for p in live if p.ready(now))
            pending[v.name] = sum(1 for p in live if p.scheduled is None)
            since = tuple(p.requested for p in live if p.scheduled is None)
            if since:
                pending_since[v.name] = since
            # Scheduling to Ready of each Ready pod that had a cold start (not the warm initial
            # fleet), as the operator measures its pods (control.coldstarts).
            starts = tuple(
                StartSample(p.name, p.ready_at, p.ready_at - p.scheduled)
                for p in live
                if p.ready(now) and p.cold_start_s > 0 and p.ready_at is not None and p.scheduled is not None
            )
            if starts:
                cold_starts[v.name] = starts
        return Observation(
            time=now,
            total=total,
            variants=dict(self.latest_variants),
            active_variant=self.active,
            samples=self.samples,
            ready=ready,
            pending=pending,
            desired=desired,
            pending_since=pending_since,
            cold_starts=cold_starts,
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
        return run_result(
            self.controller.name,
            self.spec.slo,
            total=len(self.config.trace),
            done=self.done,
            rejected=len(self.rejected),
            pods=self.pods,
            switches=self.switches,
            scale_events=self.scale_events,
            series=self.series,
            end=end,
        )
