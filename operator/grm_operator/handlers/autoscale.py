"""The autoscaler: a per-GRMDeployment control loop that observes, decides and applies.

One tick, every ``spec.scaling.controlPeriod`` (default 15 s): read the GRMDeployment and its
variant Deployments from the reconciler's store and its worker pods from a watched cache (their
readiness, Pending age and first-readiness cold start: :mod:`grm_operator.control.coldstarts`) →
observe a window of metrics (:mod:`grm_operator.metrics`, Direct or Prometheus) → the pure
``policy.decide`` → the pure :func:`grm_operator.control.actuation.plan` → apply: write the status
fields that changed, patch variant Deployments' replicas, push the sample budget to the
workers (``POST /admin/samples``, with the GRMDeployment's admin token as a bearer token:
:mod:`grm_operator.handlers.admintokens`), post an Event per scale, switch step and condition change.

Why not ``@kopf.timer``: kopf gives every object with a timer a finalizer, i.e. a metadata write
per object, the ``patch`` verb on GRMDeployments, and deletions that hang while the operator is
down — the reconciler avoids kopf's per-object persistence for the same reasons. Instead one
schedule task, started after the reconciler primed its store, wakes every
``settings.autoscale_tick_s`` (1 s) and runs at most one tick task per object whose control
period has elapsed (or whose generation changed). The first tick after an operator start runs
at once, so a restarted operator resumes a half-done switch within a second. Ticks wait until
the reconciler has observed the object's generation, so both never race on a fresh object. A
tick never raises: a failure is logged and the next period tries again.

Status is written only when a field changed: the last decision keeps its timestamp while the
policy says the same thing, so an idle GRMDeployment costs no writes.

With HA replicas only the holder of the leader-election Lease runs kopf and so this schedule; a
standby has no store and no schedule, and a leader that loses the Lease exits, taking its store
with it (:mod:`grm_operator.handlers.leadership`,
tests/integration/grm_operator/test_operator_leader_election.py).

One concept in one module (the autoscaler's tick: read pods and metrics, decide, actuate,
write status), kept whole because each step hands its results to the next within one tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiohttp
import kopf
from pydantic import ValidationError

from grm_operator import kubeapi
from grm_operator.api.durations import parse_duration
from grm_operator.api.models import GROUP, PLURAL, VERSION, GRMDeployment
from grm_operator.control.actuation import Intent, Plan, VariantDeployment, plan
from grm_operator.control.builders.layout import ADMIN_PORT, HTTP_PORT
from grm_operator.control.builders.metadata import LABEL_DEPLOYMENT, LABEL_VARIANT, Owner, deployment_name
from grm_operator.control.builders.modelload import startup_budget_s
from grm_operator.control.coldstarts import PodStart, epoch_seconds, first_readiness, pod_start
from grm_operator.control.podhealth import PodFailure, pod_failure
from grm_operator.control.qualityjobs import re_evaluation_request
from grm_operator.control.rollout import CRASH_LOOP_RESTARTS
from grm_operator.handlers.policy_adapter import PodCounts, decide_intent
from grm_operator.kubeapi import Body, KubeError
from grm_operator.metrics import (
    Direct,
    MetricsError,
    MetricsSource,
    MetricsTarget,
    PodEndpoint,
    Prometheus,
    Reading,
)
from grm_operator.policy.coldstart import StartSample
from grm_worker.contract.admin import bearer_header

if TYPE_CHECKING:
    from grm_operator.handlers.context import OperatorContext

log = logging.getLogger(__name__)

Key = tuple[str, str]
PODS = kubeapi.Kind("", "v1", "pods", "Pod")
# A sample-budget push is a tiny POST on loopback-close networks; 2 s bounds a dead pod's cost.
SAMPLES_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class PodView:
    """A worker pod as the autoscaler needs it."""

    namespace: str
    name: str
    variant: str
    ready: bool
    pending: bool
    ip: str | None
    #: When a pending pod became unscheduled (epoch seconds), None when not pending or unknown.
    pending_since: float | None = None
    #: Not Ready, and a container (init containers included) restarted CRASH_LOOP_RESTARTS times.
    crashing: bool = False
    #: Not Ready, and a container failed or is stuck (image, config): why, in one sentence.
    failure: PodFailure | None = None
    #: A Ready pod's binding to a node, start and readiness (its measured cold start).
    start: PodStart | None = None


def pod_view(body: Mapping[str, Any]) -> PodView | None:
    """A worker pod's name, variant, readiness and IP (None for a pod without a variant label
    or one being deleted)."""
    meta = body.get("metadata") or {}
    variant = (meta.get("labels") or {}).get(LABEL_VARIANT)
    if not variant or meta.get("deletionTimestamp"):
        return None
    status = body.get("status") or {}
    by_type = {str(c.get("type")): c for c in status.get("conditions") or []}
    conditions = {kind: c.get("status") for kind, c in by_type.items()}
    # Pending and not scheduled: no node (no free GPU) took it, yet (a node autoscaler may be
    # bringing one: the policy's spec.scaling.pendingGrace counts from ``pending_since``).
    pending = status.get("phase", "Pending") == "Pending" and conditions.get("PodScheduled") != "True"
    since: float | None = None
    if pending:
        # The scheduler's PodScheduled=False transition, else (not yet tried) the pod's creation.
        stamp = (by_type.get("PodScheduled") or {}).get("lastTransitionTime") or meta.get("creationTimestamp")
        # Unreadable: the policy treats the pod as long pending.
        since = epoch_seconds(stamp)
    ready = status.get("phase") == "Running" and conditions.get("Ready") == "True"
    containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    restarts = max((int(c.get("restartCount") or 0) for c in containers), default=0)
    return PodView(
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        variant=str(variant),
        ready=ready,
        pending=pending,
        ip=status.get("podIP"),
        pending_since=since,
        crashing=not ready and restarts >= CRASH_LOOP_RESTARTS,
        failure=None if ready else pod_failure(status),
        start=pod_start(body) if ready else None,
    )


def cold_starts_of(pods: list[PodView], budget_s: float) -> tuple[StartSample, ...]:
    """The cold starts of the Ready ``pods`` whose readiness is their first (control.coldstarts)."""
    samples = (first_readiness(p.start, budget_s) for p in pods if p.ready and p.start is not None)
    return tuple(s for s in samples if s is not None)


class Autoscaler:
    """Per-process autoscaler state: metric sources, per-object schedule."""

    def __init__(self, ctx: OperatorContext, *, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.kube = ctx.kube
        self.store = ctx.reconciler.store
        self.settings = ctx.settings
        self.clock = clock
        self.direct = Direct()
        self.prometheus: dict[str, Prometheus] = {}
        self.next_due: dict[Key, float] = {}
        # The sample budget each pod acknowledged, by GRMDeployment.
        self.pushed: dict[Key, dict[str, int]] = {}
        # Worker pods by GRMDeployment, from a watch (no LIST per tick).
        self.pods: dict[Key, dict[str, PodView]] = {}
        self.generation: dict[Key, Any] = {}
        # Unhealthy marks set by this process, re-asserted if a concurrent write dropped them.
        self.unhealthy: dict[Key, dict[str, float]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._ticks: dict[Key, asyncio.Task[None]] = {}

    # --- schedule -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduler (once, after the reconciler primed its store)."""
        if self._scheduler is None:
            self._scheduler = asyncio.create_task(self._schedule(), name="autoscale-schedule")

    async def _schedule(self) -> None:
        # One task per GRMDeployment at a time: a slow tick (a dead Prometheus, 5 s) delays only
        # its own object. Every tick_s each known object gets a chance to run (on_timer skips
        # until its control period elapsed).
        while True:
            for key in list(self.store.parents):
                task = self._ticks.get(key)
                if task is None or task.done():
                    self._ticks[key] = asyncio.create_task(
                        self.on_timer(key), name=f"autoscale-{key[0]}/{key[1]}"
                    )
            for key in [k for k, t in self._ticks.items() if t.done() and k not in self.store.parents]:
                del self._ticks[key]
            await asyncio.sleep(self.settings.autoscale_tick_s)  # the schedule's own period

    async def on_timer(self, key: Key) -> None:
        """Called every tick_s per object: run a tick when its control period has elapsed."""
        now = self.clock()
        body = self.store.parents.get(key)
        meta = (body or {}).get("metadata") or {}
        if body is None or meta.get("deletionTimestamp"):
            return
        # A new generation (spec change) is acted on at once, not a control period later.
        if now < self.next_due.get(key, 0.0) and meta.get("generation") == self.generation.get(key):
            return
        if (body.get("status") or {}).get("observedGeneration") != meta.get("generation"):
            # The reconciler has not yet applied this generation (children, its status): act on
            # what it built, and never race its first status write (both write conditions).
            return
        try:
            grmd = _parse(body)
            re_evaluation_request(grmd)  # a malformed annotation: invalid, as the reconciler says
        except (ValidationError, ValueError):
            # The reconciler reports the invalid spec; nothing to scale until it is fixed.
            self.next_due[key] = now + 15.0
            return
        self.next_due[key] = now + parse_duration(grmd.spec.scaling.control_period)
        self.generation[key] = meta.get("generation")
        try:
            await self.tick(key, body, grmd, now)
        except Exception as exc:  # a tick must never kill the timer: log, retry next period
            log.warning("autoscale tick of %s/%s failed: %s: %s", *key, type(exc).__name__, exc)
            log.debug("autoscale tick failure", exc_info=True)

    def observe_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a worker pod: keep the cache of each GRMDeployment's pods."""
        meta = body.get("metadata") or {}
        parent = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
        if not parent:
            return
        pods = self.pods.setdefault((str(meta.get("namespace")), str(parent)), {})
        view = pod_view(body)
        if event_type == "DELETED" or view is None:
            pods.pop(str(meta.get("name")), None)
        else:
            pods[view.name] = view

    def forget(self, key: Key) -> None:
        """Drop the state of a deleted GRMDeployment."""
        self.next_due.pop(key, None)
        self.pushed.pop(key, None)
        self.pods.pop(key, None)
        self.generation.pop(key, None)
        self.unhealthy.pop(key, None)
        self.direct.forget(*key)

    # --- one tick -------------------------------------------------------------------------------
    async def tick(self, key: Key, body: Body, grmd: GRMDeployment, now: float) -> Plan:
        """Observe → decide → plan → apply for one GRMDeployment."""
        namespace, name = key
        spec = grmd.spec
        status: Mapping[str, Any] = body.get("status") or {}
        uid = str(grmd.metadata.uid)
        pods = list(self.pods.get(key, {}).values())
        deployments = {}
        for variant, d in self._deployments(key, uid).items():
            failing = sorted((p for p in pods if p.variant == variant and p.failure), key=lambda p: p.name)
            deployments[variant] = replace(
                d,
                pending=sum(1 for p in pods if p.variant == variant and p.pending),
                crashing=sum(1 for p in pods if p.variant == variant and p.crashing),
                failed=len(failing),
                failure=failing[0].failure if failing else None,
            )
        target = MetricsTarget(
            namespace=namespace,
            name=name,
            variants=tuple(v.name for v in spec.variants),
            pods=tuple(
                PodEndpoint(p.name, p.variant, f"{base}/metrics")
                for p in pods
                if p.ready and (base := self._base_url(p)) is not None
            ),
            queries=spec.metrics.queries or {},
            shadow_window_s=parse_duration(spec.precision.shadow.window),
        )
        reading: Reading | None = None
        error: str | None = None
        try:
            reading = await self._source(grmd).observe(target, parse_duration(spec.metrics.window), now)
        except MetricsError as exc:
            error = str(exc)[:1000]
        counts = {
            v.name: PodCounts(
                ready=sum(1 for p in pods if p.variant == v.name and p.ready),
                pending=sum(1 for p in pods if p.variant == v.name and p.pending),
                pending_since=tuple(
                    p.pending_since
                    for p in pods
                    if p.variant == v.name and p.pending and p.pending_since is not None
                ),
                cold_starts=cold_starts_of(
                    [p for p in pods if p.variant == v.name], startup_budget_s(spec, v)
                ),
            )
            for v in spec.variants
        }
        intent: Intent | None = None
        if not status.get("switch"):
            intent = decide_intent(
                spec=spec,
                status=status,
                reading=reading,
                metrics_error=error,
                pods=counts,
                deployments=deployments,
                now=now,
                re_evaluate=re_evaluation_request(grmd),
            )
        result = plan(
            spec=spec,
            generation=int(grmd.metadata.generation or 0),
            status=status,
            deployments=deployments,
            observed=reading.total if reading else None,
            metrics_error=error,
            intent=intent,
            now=now,
            known_unhealthy=self.unhealthy.get(key),
        )
        self.unhealthy[key] = dict(result.unhealthy)
        await self._apply(key, body, result, pods)
        return result

    # --- reads ----------------------------------------------------------------------------------
    def _deployments(self, key: Key, uid: str) -> dict[str, VariantDeployment]:
        out: dict[str, VariantDeployment] = {}
        for d in self.store.children_of("Deployment", key):
            meta = d.get("metadata") or {}
            variant = (meta.get("labels") or {}).get(LABEL_VARIANT)
            if not variant or not any(r.get("uid") == uid for r in meta.get("ownerReferences") or []):
                continue
            st = d.get("status") or {}
            out[str(variant)] = VariantDeployment(
                desired=int((d.get("spec") or {}).get("replicas", 0)),
                replicas=int(st.get("replicas", 0)),
                ready=int(st.get("readyReplicas", 0)),
            )
        return out

    def _owner(self, key: Key) -> Owner | None:
        """The GRMDeployment ``key`` as its children refer to it (None once it is gone)."""
        uid = ((self.store.parents.get(key) or {}).get("metadata") or {}).get("uid")
        return None if not uid else Owner(name=key[1], namespace=key[0], uid=str(uid))

    def _base_url(self, pod: PodView) -> str | None:
        """The worker's front (``/metrics``): the port the Service forwards."""
        return self._pod_url(pod, self.settings.metrics_endpoints, HTTP_PORT)

    def _admin_url(self, pod: PodView) -> str | None:
        """The worker's admin API (``/admin/samples``): a port of its own the Service never lists."""
        return self._pod_url(pod, self.settings.admin_endpoints, ADMIN_PORT)

    @staticmethod
    def _pod_url(pod: PodView, overrides: Mapping[str, str], port: int) -> str | None:
        override = overrides.get(f"{pod.namespace}/{pod.name}")
        if override:
            return override.rstrip("/")
        if not pod.ip:
            return None
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        return f"http://{host}:{port}"

    def _source(self, grmd: GRMDeployment) -> MetricsSource:
        metrics = grmd.spec.metrics
        url = metrics.prometheus_url or self.settings.prometheus_url
        if metrics.source == "Direct" or (metrics.source is None and not url):
            return self.direct
        if not url:
            raise MetricsError("spec.metrics.source is Prometheus but no Prometheus URL is configured")
        if url not in self.prometheus:
            self.prometheus[url] = Prometheus(url)
        return self.prometheus[url]

    # --- writes ---------------------------------------------------------------------------------
    async def _apply(self, key: Key, body: Body, result: Plan, pods: list[PodView]) -> None:
        namespace, name = key
        current = body.get("status") or {}
        # A merge patch deletes null keys and leaves {} absent: compare with absent, null, {} and
        # [] all meaning "nothing", at every depth, or an unchanged status would be rewritten on
        # every tick (status.policyState holds nulls for values the policy does not have).
        changes = {k: v for k, v in result.status.items() if _meaningful(current.get(k)) != _meaningful(v)}
        if changes:
            updated = await self.kube.patch_status(kubeapi.GRMDEPLOYMENTS, namespace, name, changes)
            self.store.put_parent(updated)
            body = updated
        for variant, replicas in result.scale.items():
            updated = await self.kube.merge_patch(
                kubeapi.DEPLOYMENTS,
                namespace,
                deployment_name(name, variant),
                {"spec": {"replicas": replicas}},
            )
            updated.setdefault("kind", "Deployment")
            updated.setdefault("apiVersion", "apps/v1")
            self.store.put_child(updated)
            log.info("%s/%s: variant %s scaled to %d replicas", namespace, name, variant, replicas)
        budget = result.status.get("samples", (body.get("status") or {}).get("samples"))
        if isinstance(budget, int):
            pushed = self.pushed.setdefault(key, {})
            for gone in set(pushed) - {p.name for p in pods}:
                del pushed[gone]
            # Every Ready pod that has not got this budget yet: a change reaches all of them, a new
            # pod (which starts from its config's default) gets it on the next tick.
            stale = [p for p in pods if p.ready and pushed.get(p.name) != budget]
            if stale:
                await self._push_samples(key, budget, stale)
        decision = changes.get("lastDecision")
        if decision is not None:
            self.ctx.metrics.decisions.labels(action=str(decision.get("action"))).inc()
            log.debug(
                "%s/%s decision action=%s reason=%s", namespace, name, decision["action"], decision["reason"]
            )
        for event in result.events:
            log.info("%s/%s %s: %s", namespace, name, event.reason, event.message)
            try:
                await self.kube.post_event(body, reason=event.reason, message=event.message, type_=event.type)
                self.ctx.metrics.events_posted.labels(reason=event.reason).inc()
            except KubeError as exc:
                log.warning("could not post event %s: %s", event.reason, exc)

    async def _push_samples(self, key: Key, samples: int, pods: list[PodView]) -> None:
        """POST the sample budget to ``pods``; one that fails is tried again next tick."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SAMPLES_TIMEOUT_S))
        session = self._session

        tokens = self.ctx.reconciler.admin_tokens
        owner = self._owner(key)
        token = None if owner is None else await tokens.token(owner)
        if token is None:
            log.warning("%s/%s: no admin token yet; sample budget %d not pushed", *key, samples)
            self.ctx.metrics.sample_pushes.labels(result="no_token").inc(len(pods))
            return
        headers = bearer_header(token)

        async def push(pod: PodView) -> None:
            base = self._admin_url(pod)
            if base is None:
                return
            async with session.post(
                f"{base}/admin/samples", json={"samples": samples}, headers=headers
            ) as resp:
                if resp.status == 401:
                    # The Secret was replaced by hand (the operator never rotates it): read it
                    # again next tick; pods started before the change keep the old token.
                    tokens.forget(*key)
                resp.raise_for_status()

        results = await asyncio.gather(*(push(p) for p in pods), return_exceptions=True)
        pushed = self.pushed.setdefault(key, {})
        for pod, res in zip(pods, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("%s/%s: sample budget %d not set on pod %s: %s", *key, samples, pod.name, res)
                refused = isinstance(res, aiohttp.ClientResponseError) and res.status == 401
                self.ctx.metrics.sample_pushes.labels(result="unauthorized" if refused else "error").inc()
            else:
                pushed[pod.name] = samples
                self.ctx.metrics.sample_pushes.labels(result="ok").inc()

    async def close(self) -> None:
        """Stop the schedule and its ticks, close HTTP sessions."""
        tasks = [t for t in [self._scheduler, *self._ticks.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._scheduler = None
        self._ticks.clear()
        await self.direct.close()
        for source in self.prometheus.values():
            await source.close()
        if self._session is not None:
            await self._session.close()


def _parse(body: Mapping[str, Any]) -> GRMDeployment:
    return GRMDeployment.model_validate(
        {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": body.get("metadata"),
            "spec": body.get("spec"),
        }
    )


def register(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    """The autoscaler's kopf handlers: the schedule starts after the reconciler primed its store;
    worker pods are watched into a cache; everything stops at clean-up."""
    scaler = Autoscaler(ctx)
    ctx.extras["autoscaler"] = scaler

    @kopf.on.startup(registry=registry, id="autoscale-start")
    async def start(**_: Any) -> None:
        scaler.start()

    @kopf.on.event(PODS.group, PODS.version, PODS.plural, registry=registry, id="autoscale-pods")
    async def pod_event(event: Mapping[str, Any], **_: Any) -> None:
        scaler.observe_pod(event.get("type"), event["object"])

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="autoscale-forget")
    async def forget(event: Mapping[str, Any], **_: Any) -> None:
        if event.get("type") == "DELETED":
            meta = (event.get("object") or {}).get("metadata") or {}
            scaler.forget((str(meta.get("namespace")), str(meta.get("name"))))

    @kopf.on.cleanup(registry=registry, id="autoscale-close")
    async def close(**_: Any) -> None:
        await scaler.close()


def _meaningful(value: Any) -> Any:
    """``value`` without null, empty-dict and empty-list members, recursively (None when empty)."""
    if isinstance(value, Mapping):
        kept = {k: m for k, v in value.items() if (m := _meaningful(v)) is not None}
        return kept or None
    if isinstance(value, list):
        return [_meaningful(v) for v in value] or None
    return value
