"""Reconciliation of GRMDeployments into their children, level-triggered and write-free when idle.

One concept, the reconciler: its per-object queue with retries, one reconcile, and the kopf
handlers that feed it (a little over 400 lines; the store it reads is :mod:`.store`).

Kopf delivers watch events (of GRMDeployments and of the children the operator labels as its
own); :class:`Reconciler` keeps the newest body of each in the store
(:class:`grm_operator.handlers.store.Store`) and queues the affected GRMDeployment. One reconcile
is: read (the store, no API call) → parse the spec → pure build
(:mod:`grm_operator.control.builders`) → apply what differs → prune removed variants → pure status
fold (:mod:`grm_operator.control.status`) → write status if it changed → post an Event per
condition transition.

Why no writes happen when nothing changed: every applied manifest carries its own hash
(``grm.dev/applied-hash``); a child whose stored hash and replica count match the built one is
not written. Our own writes go into the store at once (write-through), and a restarted operator
primes the store with one LIST per child kind before the first reconcile, so neither a burst of
watch events nor a restart re-applies anything.

Why not kopf's create/update/resume handlers: they persist progress and a diff base on the object
(extra writes per change, and on resume), and only fire on spec changes, not on child drift.
Events plus a per-object queue give the same create/update/resume semantics (the initial listing
is the resume) with retries of our own: a failed reconcile is retried with exponential backoff
(``retry_initial_s`` doubling up to ``retry_max_s``); a newer event retries it at once.

Invalid specs (the operator's models reject what the CRD schema let through, e.g. an object stored
under an older CRD) are reported with ``SpecValid=False``/``InvalidSpec`` and an Event; nothing is
applied or deleted and nothing is retried until the object changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import kopf
from pydantic import ValidationError

from grm_operator import kubeapi
from grm_operator.api.models import GROUP, PLURAL, VERSION, GRMDeployment
from grm_operator.control.builders import Children, build_children
from grm_operator.control.builders.metadata import (
    ANNOTATION_APPLIED_HASH,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_VARIANT,
    MANAGED_BY,
    Owner,
)
from grm_operator.control.builders.replicas import replicas_from_status
from grm_operator.control.gate import (
    GateEvent,
    GatePlan,
    JobView,
    jobs_needing_results,
    plan_gate,
)
from grm_operator.control.qualityjobs import JobPodDefaults, evaluation_args, re_evaluation_request
from grm_operator.control.status import ChildDeployment, FoldResult, Transition, fold_invalid, fold_status
from grm_operator.handlers.admintokens import AdminTokens
from grm_operator.handlers.store import Key, Store, key_of
from grm_operator.kubeapi import Body, Conflict, KubeClient, KubeError
from grm_operator.settings import OperatorSettings
from grm_operator.telemetry.operator_metrics import OperatorMetrics

if TYPE_CHECKING:
    from grm_operator.handlers.context import OperatorContext

log = logging.getLogger(__name__)

CHILD_KINDS = (kubeapi.DEPLOYMENTS, kubeapi.CONFIGMAPS, kubeapi.SERVICES, kubeapi.PDBS, kubeapi.JOBS)
# Variant-scoped kinds: pruned when the spec no longer lists their variant.
PRUNED_KINDS = (kubeapi.DEPLOYMENTS, kubeapi.CONFIGMAPS)
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


def utc_now() -> str:
    """RFC 3339 UTC time with second precision (metav1.Time's wire format)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OwnershipError(KubeError):
    """A child's name is taken by an object this GRMDeployment does not own."""

    def __init__(self, message: str) -> None:
        super().__init__(409, "AlreadyOwned", message)


def _owned_by(body: Mapping[str, Any], uid: str) -> bool:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    refs = meta.get("ownerReferences") or []
    return labels.get(LABEL_MANAGED_BY) == MANAGED_BY and any(r.get("uid") == uid for r in refs)


def _variant_of(body: Mapping[str, Any]) -> str | None:
    variant = ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_VARIANT)
    return None if variant is None else str(variant)


def _unchanged(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    if live is None:
        return False
    want = desired["metadata"]["annotations"].get(ANNOTATION_APPLIED_HASH)
    have = ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_APPLIED_HASH)
    if want != have:
        return False
    if desired.get("kind") == "Deployment":
        return bool((live.get("spec") or {}).get("replicas") == desired["spec"]["replicas"])
    return True


class Reconciler:
    """The operator's controller: a store of watched objects and a per-object work queue."""

    def __init__(
        self,
        client: KubeClient,
        settings: OperatorSettings,
        metrics: OperatorMetrics,
        *,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.kube = client
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.store = Store()
        #: Each GRMDeployment's worker admin token (its Secret created before its Deployments).
        self.admin_tokens = AdminTokens(client)
        self.pod_monitors = False
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._dirty: set[Key] = set()
        self._attempts: dict[Key, int] = {}
        self._retry_handles: dict[Key, asyncio.TimerHandle] = {}
        self._closing = False

    # --- start-up ---------------------------------------------------------------------------------
    def _scopes(self) -> Iterable[str | None]:
        return self.settings.namespaces or (None,)

    async def prime(self) -> None:
        """Fill the store with every managed child (one LIST per kind and namespace) so that the
        first reconciles after a restart compare against reality instead of re-applying."""
        if self.settings.podmonitor_enabled:
            self.pod_monitors = await self.kube.has_kind(kubeapi.PODMONITORS)
        kinds = [*CHILD_KINDS, kubeapi.PODMONITORS] if self.pod_monitors else list(CHILD_KINDS)
        for kind in kinds:
            for namespace in self._scopes():
                for body in await self.kube.list(kind, namespace, label_selector=MANAGED_SELECTOR):
                    self.store.put_child(body)
        log.info("primed the store: pod_monitors=%s", self.pod_monitors)

    async def shutdown(self) -> None:
        """Cancel queued retries and running reconciles; close the HTTP session."""
        self._closing = True
        for handle in self._retry_handles.values():
            handle.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.kube.close()

    # --- events -------------------------------------------------------------------------------------
    def observe_parent(self, event_type: str | None, body: Body) -> None:
        """A GRMDeployment watch event (None is kopf's initial listing: the resume)."""
        key = key_of(body)
        if event_type == "DELETED":
            self.store.drop_parent(key)
            self.admin_tokens.forget(*key)
            self.metrics.managed.set(len(self.store.parents))
            return
        if self.store.put_parent(body):
            self.metrics.managed.set(len(self.store.parents))
            self.enqueue(key)

    def observe_child(self, event_type: str | None, body: Body) -> None:
        """A watch event of a managed child: update the store, reconcile its GRMDeployment."""
        kind = str(body.get("kind"))
        if event_type == "DELETED":
            self.store.drop_child(kind, body)
        elif not self.store.put_child(body):
            return
        meta = body.get("metadata") or {}
        parent = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
        if parent and (str(meta.get("namespace")), str(parent)) in self.store.parents:
            self.enqueue((str(meta.get("namespace")), str(parent)))

    # --- the queue --------------------------------------------------------------------------------------
    def enqueue(self, key: Key) -> None:
        """Reconcile ``key`` now, or once more right after the reconcile that is running."""
        if self._closing:
            return
        self._cancel_retry(key)
        if key in self._tasks:
            self._dirty.add(key)
            return
        self._tasks[key] = asyncio.get_running_loop().create_task(self._work(key), name=f"reconcile {key}")
        self.metrics.queue_depth.set(len(self._tasks))

    @property
    def queue_depth(self) -> int:
        """GRMDeployments being reconciled right now (each with at most one rerun pending)."""
        return len(self._tasks)

    async def idle(self, timeout_s: float = 30.0) -> None:
        """Wait until no reconcile runs (retries may still be scheduled); for tests and benchmarks."""
        deadline = time.monotonic() + timeout_s
        while self._tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reconciles still running after {timeout_s} s: {sorted(self._tasks)}")
            await asyncio.sleep(0.01)

    async def _work(self, key: Key) -> None:
        try:
            while True:
                self._dirty.discard(key)
                started = time.perf_counter()
                try:
                    await self.reconcile(key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._schedule_retry(key, exc)
                else:
                    self._attempts.pop(key, None)
                    self._cancel_retry(key)
                finally:
                    self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
                if key not in self._dirty or self._closing:
                    return
        finally:
            self._tasks.pop(key, None)
            self.metrics.queue_depth.set(len(self._tasks))

    def _schedule_retry(self, key: Key, exc: Exception) -> None:
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        delay = min(self.settings.retry_initial_s * 2 ** (attempt - 1), self.settings.retry_max_s)
        self.metrics.reconciles.labels(result="error").inc()
        self.metrics.reconcile_errors.labels(error=type(exc).__name__).inc()
        log.warning("reconcile of %s/%s failed (attempt %d, retry in %.1f s): %s", *key, attempt, delay, exc)
        if not isinstance(exc, KubeError):
            log.exception("unexpected reconcile error", exc_info=exc)
        if self._closing:
            return
        self._cancel_retry(key)
        self._retry_handles[key] = asyncio.get_running_loop().call_later(delay, self._retry, key)

    def _cancel_retry(self, key: Key) -> None:
        handle = self._retry_handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _retry(self, key: Key) -> None:
        self._retry_handles.pop(key, None)
        if key in self.store.parents:
            self.enqueue(key)

    # --- one reconcile --------------------------------------------------------------------------------
    async def reconcile(self, key: Key) -> None:
        """Bring the children and the status of one GRMDeployment in line with its spec."""
        body = self.store.parents.get(key)
        if body is None:
            return
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return  # the garbage collector removes the children through their owner references
        generation = int(meta.get("generation", 0))
        current: Mapping[str, Any] = body.get("status") or {}
        try:
            grmd = GRMDeployment.model_validate(
                {
                    "apiVersion": body.get("apiVersion"),
                    "kind": body.get("kind"),
                    "metadata": meta,
                    "spec": body.get("spec"),
                }
            )
            children = self._build(grmd, current)
            evaluation_args(grmd)  # a malformed annotation is an invalid spec, not a failed reconcile
            re_evaluation_request(grmd)
        except (ValidationError, ValueError) as exc:
            message = _short_error(exc)
            await self._write_status(
                body, fold_invalid(generation=generation, current=current, message=message, now=self.clock())
            )
            self.metrics.reconciles.labels(result="invalid").inc()
            return
        uid = str(meta.get("uid"))
        error: KubeError | None = None
        gate: GatePlan | None = None
        try:
            # Before the Deployments: their pods read the token from the Secret at start.
            await self.admin_tokens.ensure(Owner.of(grmd))
            for manifest in children.all():
                await self._ensure(manifest, key, uid)
            await self._prune(key, uid, {v.name for v in grmd.spec.variants})
            gate = await self._gate(grmd, key, uid, current)
        except KubeError as exc:
            error = exc
        deployments = {
            variant: ChildDeployment.from_body(variant, d)
            for d in self.store.children_of("Deployment", key)
            if _owned_by(d, uid) and (variant := _variant_of(d)) is not None
        }
        result = fold_status(
            name=key[1],
            generation=generation,
            spec=grmd.spec,
            current=current,
            children=deployments,
            now=self.clock(),
            reconcile_error=str(error) if error else None,
            gate=gate.variants if gate else None,
            gate_condition=gate.condition if gate else None,
        )
        await self._write_status(body, result)
        for event in gate.events if gate else []:
            await self._post_gate_event(body, event)
        if error is not None:
            raise error
        self.metrics.reconciles.labels(result="ok").inc()

    def _build(self, grmd: GRMDeployment, current: Mapping[str, Any]) -> Children:
        key = (str(grmd.metadata.namespace), grmd.metadata.name)
        uid = str(grmd.metadata.uid)
        live = {
            variant: int((d.get("spec") or {}).get("replicas", 0))
            for d in self.store.children_of("Deployment", key)
            if _owned_by(d, uid) and (variant := _variant_of(d)) is not None
        }
        replicas = replicas_from_status(grmd.spec, current, live)
        return build_children(
            grmd, replicas, self.settings, pod_monitor=self.pod_monitors and self.settings.podmonitor_enabled
        )

    async def _ensure(self, manifest: Body, key: Key, uid: str) -> None:
        """Apply ``manifest`` unless the stored child already matches it."""
        kind = str(manifest["kind"])
        name = str(manifest["metadata"]["name"])
        live = self.store.child(kind, key[0], name, key[1])
        if live is not None and not _owned_by(live, uid):
            raise OwnershipError(f"{kind} {key[0]}/{name} exists and is not owned by GRMDeployment {key[1]}")
        if _unchanged(manifest, live):
            return
        log.info("applying %s %s/%s", kind, key[0], name)
        result = await self.kube.apply(manifest)
        self.store.put_child(result)

    async def _prune(self, key: Key, uid: str, variants: set[str]) -> None:
        """Delete the variant Deployments and ConfigMaps this GRMDeployment owns whose variant the
        spec no longer lists (never anything another owner or a person created)."""
        for kind in PRUNED_KINDS:
            for body in self.store.children_of(kind.kind, key):
                meta = body["metadata"]
                variant = _variant_of(body)
                if variant is None or variant in variants or not _owned_by(body, uid):
                    continue
                log.info(
                    "deleting %s %s/%s: variant %s is no longer in the spec",
                    kind.kind,
                    key[0],
                    meta["name"],
                    variant,
                )
                await self.kube.delete(kind, key[0], meta["name"], uid=meta.get("uid"))
                self.store.drop_child(kind.kind, body)

    # --- the quality gate -----------------------------------------------------------------------------
    async def _gate(self, grmd: GRMDeployment, key: Key, uid: str, current: Mapping[str, Any]) -> GatePlan:
        """One step of the quality gate (:mod:`grm_operator.control.gate`): read the reports of
        finished Jobs and the evaluation set, create and delete Jobs."""
        namespace = key[0]
        jobs = [
            view
            for body in self.store.children_of("Job", key)
            if _owned_by(body, uid) and (view := JobView.from_body(body)) is not None
        ]
        reports = {
            job.name: await self._job_report(namespace, job) for job in jobs_needing_results(current, jobs)
        }
        identity, problem = await self._dataset_identity(grmd)
        plan = plan_gate(
            grmd,
            Owner.of(grmd),
            current,
            jobs,
            reports,
            dataset_identity=identity,
            dataset_problem=problem,
            image=self.settings.quality_job_image or grmd.spec.template.image or self.settings.worker_image,
            image_pull_policy=self.settings.quality_job_image_pull_policy
            or grmd.spec.template.image_pull_policy
            or self.settings.worker_image_pull_policy,
            now=self.clock(),
            pod_defaults=JobPodDefaults(
                resources=self.settings.quality_job_resources,
                node_selector=self.settings.quality_job_node_selector or None,
                tolerations=tuple(self.settings.quality_job_tolerations) or None,
            ),
        )
        for manifest in plan.create:
            name = manifest["metadata"]["name"]
            log.info("creating Job %s/%s", namespace, name)
            try:
                created = await self.kube.create(kubeapi.JOBS, namespace, manifest)
            except Conflict:
                # Created before (a restart between the create and its watch event): the same name
                # is the same inputs, so the Job there is the one wanted.
                existing = await self.kube.get(kubeapi.JOBS, namespace, name)
                if existing is None:
                    raise
                created = existing
            self.store.put_child(created)
        for name, job_uid in plan.delete:
            log.info("deleting Job %s/%s: its inputs are no longer the spec's", namespace, name)
            await self.kube.delete(kubeapi.JOBS, namespace, name, uid=job_uid)
            stale = self.store.child("Job", namespace, name, key[1])
            if stale is not None:
                self.store.drop_child("Job", stale)
        return plan

    async def _job_report(self, namespace: str, job: JobView) -> str | None:
        """The termination message of the Job's succeeded pod (its report), None when none has one."""
        pods = await self.kube.list(kubeapi.PODS, namespace, label_selector=f"job-name={job.name}")
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (cs.get("state") or {}).get("terminated") or {}
                if terminated.get("exitCode") == 0 and terminated.get("message"):
                    return str(terminated["message"])
        return None

    async def _dataset_identity(self, grmd: GRMDeployment) -> tuple[str | None, str | None]:
        """What the evaluation set is known by: the content hash of its ConfigMap key, its uri, or
        ``default`` (the shipped set); (None, why) when the ConfigMap cannot be read."""
        evalset = grmd.spec.precision.evaluation_set
        if grmd.spec.precision.quality_policy != "Measured" or evalset is None:
            return "default", None
        if evalset.uri is not None:
            return evalset.uri, None
        ref = evalset.config_map_ref
        assert ref is not None  # the models require one of the two
        cm = await self.kube.get(kubeapi.CONFIGMAPS, str(grmd.metadata.namespace), ref.name)
        if cm is None:
            return None, f"ConfigMap {ref.name} not found"
        text = (cm.get("data") or {}).get(ref.key)
        if text is None:
            return None, f"ConfigMap {ref.name} has no key {ref.key}"
        return "sha256:" + hashlib.sha256(str(text).encode()).hexdigest(), None

    async def _post_gate_event(self, body: Body, event: GateEvent) -> None:
        log.info("%s/%s %s: %s", *key_of(body), event.reason, event.message)
        try:
            await self.kube.post_event(
                body, reason=event.reason, message=event.message[:1024], type_=event.type
            )
        except KubeError as exc:
            log.warning("could not post event %s: %s", event.reason, exc)
            return
        self.metrics.events_posted.labels(reason=event.reason).inc()

    async def _write_status(self, body: Body, result: FoldResult) -> None:
        """Write the status fields that changed (none: no request) and post the transitions."""
        current = body.get("status") or {}
        changes = result.changes(current)
        if not changes:
            return
        namespace, name = key_of(body)
        updated = await self.kube.patch_status(kubeapi.GRMDEPLOYMENTS, namespace, name, changes)
        self.store.put_parent(updated)
        for transition in result.transitions:
            await self._post(updated, transition)

    async def _post(self, body: Body, transition: Transition) -> None:
        message = f"{transition.type}={transition.status}: {transition.message}"
        log.info("%s/%s %s (%s)", *key_of(body), message, transition.reason)
        try:
            await self.kube.post_event(
                body, reason=transition.reason, message=message, type_=transition.event_type
            )
        except KubeError as exc:
            # An Event is informational: losing one must not fail (and repeat) the reconcile.
            log.warning("could not post event %s: %s", transition.reason, exc)
            return
        self.metrics.events_posted.labels(reason=transition.reason).inc()


def _short_error(exc: Exception) -> str:
    """A one-line message for an invalid spec (pydantic's first errors, with their paths)."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:3]:
            where = ".".join(str(p) for p in err["loc"])
            parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
        return "; ".join(parts)
    return str(exc)


def register(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    """The reconcile module's kopf handlers: prime at start-up, feed watch events to the
    reconciler, stop it at clean-up. Handlers only pass raw bodies on; the work is queued."""
    reconciler = ctx.reconciler

    @kopf.on.startup(registry=registry)
    async def prime_store(**_: Any) -> None:
        await reconciler.prime()

    @kopf.on.cleanup(registry=registry)
    async def stop_reconciler(**_: Any) -> None:
        await reconciler.shutdown()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def grmdeployment_event(event: Mapping[str, Any], **_: Any) -> None:
        reconciler.observe_parent(event.get("type"), dict(event["object"]))

    for kind in CHILD_KINDS:

        async def child_event(event: Mapping[str, Any], _kind: kubeapi.Kind = kind, **_: Any) -> None:
            body = dict(event["object"])
            body.setdefault("kind", _kind.kind)
            body.setdefault("apiVersion", _kind.api_version)
            reconciler.observe_child(event.get("type"), body)

        kopf.on.event(
            kind.group,
            kind.version,
            kind.plural,
            id=f"child-{kind.plural}",
            labels={LABEL_MANAGED_BY: MANAGED_BY},
            registry=registry,
        )(child_event)

    @kopf.on.probe(id="reconcileQueue", registry=registry)
    def queue_probe(**_: Any) -> int:
        return reconciler.queue_depth
