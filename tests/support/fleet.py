"""A tiny closed-loop fleet for policy scenarios: steady-state latencies from the performance model.

Not the benchmark's simulator (that one batches request by request): here each tick turns the
offered score rate into the Signals a metrics source would report for a fleet at steady state, so
scenario tests read as "load does X → the policy does Y" and run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.policy import Decision, Observation, PolicyState, decide
from grm_operator.policy.capacity import variant_profile
from grm_operator.policy.signals import Signals
from grm_worker.contract.perfmodel import steady_state
from support.policy import OUTPUT, PROMPT, make_observation, make_signals

PolicyFn = Callable[[Observation, PolicyState, GRMDeploymentSpec, float], tuple[Decision, PolicyState]]
"""A decision function: the rules (``decide``) or the optimiser (``policy.mpc.decide_mpc``)."""


@dataclass
class Fleet:
    spec: GRMDeploymentSpec
    #: The truth is this much slower than the profile the policy knows.
    model_error: float = 1.0
    #: GPUs the cluster really has (None: as many as maxGPUs).
    cluster_gpus: int | None = None
    #: A node autoscaler: a pod unscheduled this long gets a new node with its GPUs (None: none).
    node_arrives_after: float | None = None
    active: str = ""
    samples: int = 0
    desired: dict[str, int] = field(default_factory=dict)
    #: (time the pod becomes Ready) per variant, one entry per pod.
    pods: dict[str, list[float]] = field(default_factory=dict)
    state: PolicyState = field(default_factory=PolicyState)
    decisions: list[Decision] = field(default_factory=list)
    metrics_up: bool = True
    #: The policy under test: the rules (``decide``) or the optimiser (``policy.mpc.decide_mpc``).
    policy: PolicyFn = decide

    def __post_init__(self) -> None:
        first = self.spec.admissible_variants()[0].name
        self.active = self.active or first
        self.samples = self.samples or self.spec.scoring.samples.max
        for v in self.spec.variants:
            n = self.spec.scaling.min_replicas if v.name == self.active else 0
            self.desired[v.name] = n
            self.pods[v.name] = [0.0] * n

    def _scheduled(self) -> dict[str, int]:
        """Pods that got GPUs, variant by variant in spec order (the rest stay Pending)."""
        free = self.cluster_gpus if self.cluster_gpus is not None else self.spec.max_gpus()
        out: dict[str, int] = {}
        for v in self.spec.variants:
            n = min(len(self.pods[v.name]), max(free, 0) // v.gpus_per_replica)
            out[v.name] = n
            free -= n * v.gpus_per_replica
        return out

    def observe(self, now: float, score_rate: float) -> Observation:
        scheduled = self._scheduled()
        if self.node_arrives_after is not None and self.cluster_gpus is not None:
            for v in self.spec.variants:
                cold = variant_profile(v).cold_start_s
                waiting = self.pods[v.name][scheduled[v.name] :]
                for i, ready_at in enumerate(waiting, start=scheduled[v.name]):
                    if now - (ready_at - cold) >= self.node_arrives_after:
                        # The node joined: the pod is scheduled now and Ready a cold start later.
                        self.cluster_gpus += v.gpus_per_replica
                        self.pods[v.name][i] = now + cold
            scheduled = self._scheduled()
        ready = {v: sum(1 for t in self.pods[v][: scheduled[v]] if t <= now) for v in self.pods}
        pending = {v: len(self.pods[v]) - scheduled[v] for v in self.pods}
        # A pod is created (and unscheduled from then on) a cold start before it would be Ready.
        cold_start = {v.name: variant_profile(v).cold_start_s for v in self.spec.variants}
        pending_since = {v: tuple(t - cold_start[v] for t in self.pods[v][scheduled[v] :]) for v in self.pods}
        serving = [v for v in self.pods if ready[v] > 0]
        seq_rate = score_rate * self.samples
        total = Signals()
        per_variant: dict[str, Signals] = {}
        if serving and self.metrics_up:
            replicas = sum(ready[v] for v in serving)
            for v in serving:
                share = seq_rate * ready[v] / replicas
                variant = self.spec.variant(v)
                profile = variant_profile(variant).scaled(self.model_error)
                s = steady_state(profile, share / ready[v], PROMPT, OUTPUT)
                if s.feasible and s.load < 0.97:
                    sig = make_signals(
                        share,
                        pods=ready[v],
                        ttft_p50=s.ttft_s,
                        ttft_p95=s.ttft_s * 2.0,
                        itl_p50=s.step_s,
                        itl_p95=s.step_s * 1.2,
                        e2e_p50=s.e2e_s,
                        e2e_p95=s.e2e_s * 1.3,
                        running=s.running_seqs * ready[v],
                        waiting=0.0,
                        sample_age_s=1.0,
                    )
                else:  # overloaded: completions capped, a queue builds, latencies explode
                    served = share * 0.9 / max(s.load, 0.9) if s.load > 0 else share
                    sig = make_signals(
                        served,
                        pods=ready[v],
                        ttft_p50=5.0,
                        ttft_p95=30.0,
                        itl_p50=0.2,
                        itl_p95=0.4,
                        e2e_p50=60.0,
                        e2e_p95=120.0,
                        waiting=(share - served) * 30,
                        running=50.0 * ready[v],
                        sample_age_s=1.0,
                    )
                per_variant[v] = sig
            total = _sum(list(per_variant.values()))
        return make_observation(
            self.active,
            total if self.metrics_up else None,
            now=now,
            ready=ready,
            samples=self.samples,
            desired=self.desired,
            pending=pending,
            pending_since=pending_since,
            variants=per_variant,
            metrics_error=None if self.metrics_up else "connection refused",
        )

    def tick(self, now: float, score_rate: float) -> Decision:
        obs = self.observe(now, score_rate)
        decision, self.state = self.policy(obs, self.state, self.spec, now)
        self.decisions.append(decision)
        self.samples = decision.samples
        if decision.variant != self.active:
            cold = variant_profile(self.spec.variant(decision.variant)).cold_start_s
            # The rollout surges the new variant and drains the old one once it is Ready; the
            # harness models the end state with the new pods' cold start.
            old = self.active
            self.pods[decision.variant] = [now + cold] * decision.replicas
            self.desired[decision.variant] = decision.replicas
            self.desired[old] = 0
            self.pods[old] = []
            self.active = decision.variant
        else:
            have = self.pods[self.active]
            cold = variant_profile(self.spec.variant(self.active)).cold_start_s
            if decision.replicas > len(have):
                have.extend([now + cold] * (decision.replicas - len(have)))
            else:
                del have[decision.replicas :]
            self.desired[self.active] = decision.replicas
        return decision

    def run(self, load: list[tuple[float, float]], period: float) -> None:
        """Ticks every ``period`` s; ``load`` is (until_time, score_rate) segments."""
        now = 0.0
        for until, rate in load:
            while now < until:
                self.tick(now, rate)
                now += period

    def replicas(self) -> int:
        return self.desired[self.active]


def _sum(parts: list[Signals]) -> Signals:
    def add(name: str) -> float | None:
        vals = [getattr(p, name) for p in parts if getattr(p, name) is not None]
        return sum(vals) if vals else None

    def worst(name: str) -> float | None:
        vals = [getattr(p, name) for p in parts if getattr(p, name) is not None]
        return max(vals) if vals else None

    return Signals(
        rps=add("rps"),
        prompt_tps=add("prompt_tps"),
        generation_tps=add("generation_tps"),
        ttft_p50=worst("ttft_p50"),
        ttft_p95=worst("ttft_p95"),
        itl_p50=worst("itl_p50"),
        itl_p95=worst("itl_p95"),
        e2e_p50=worst("e2e_p50"),
        e2e_p95=worst("e2e_p95"),
        running=add("running"),
        waiting=add("waiting"),
        pods_reporting=sum(p.pods_reporting for p in parts),
        sample_age_s=1.0,
    )
