"""Per-GRMDeployment operator metrics: the series the chart's alerts and Grafana dashboard read.

The operator-wide counters (reconciles, decisions, API requests) live in
:mod:`grm_operator.telemetry.operator_metrics`. This module adds one set of series per GRMDeployment,
derived from the object itself (spec + status), so whatever writes the status also feeds them:

===============================================  ==========================================
``grm_operator_condition{condition}``            1 True, 0 False (absent while Unknown)
``grm_operator_switch_in_progress``              1 while ``status.switch`` is set, else 0
``grm_operator_active_variant{variant}``         1 for the variant serving traffic
``grm_operator_variant_replicas{variant}``       pods of the variant (``status.variants``)
``grm_operator_variant_ready_replicas{variant}`` ready pods of the variant
``grm_operator_variant_desired_replicas{...}``   replicas the operator asked for
``grm_operator_variant_gpus{variant}``           pods × the variant's ``gpusPerReplica``
``grm_operator_variant_demoted{variant}``        1 while ``status.variants[].demoted`` is set
``grm_operator_max_gpus``                        the GPU budget (``GRMDeploymentSpec.max_gpus``)
``grm_operator_gpu_seconds_total{variant}``      ∫ variant_gpus dt since the operator started
``grm_operator_slo_seconds{objective}``          the SLO target (ttftP95, itlP95, e2eP95)
``grm_operator_observed_seconds{signal}``        ``status.observed`` p95s (same keys)
``grm_operator_observed_rps``                    ``status.observed.rps``
``grm_operator_sample_budget``                   ``status.samples``
===============================================  ==========================================

Every series carries ``namespace`` and ``grmdeployment``. Values are computed at scrape time
from the last body seen (a custom collector), so a GRMDeployment that was deleted disappears at
once and GPU-seconds are exact between updates: with 3 bf16 pods × 2 GPUs seen at t=100 s, a
scrape at t=160 s reads 0 + 6 × 60 = 360 GPU-seconds, without any update in between.

Use: ``FleetMetrics(registry)`` once per process; ``observe(body)`` on every GRMDeployment event
(or after each status write), ``forget(namespace, name)`` on deletion.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from grm_operator.api.durations import parse_duration
from grm_operator.api.models import Scaling

LABELS = ("namespace", "grmdeployment")
# spec.slo / status.observed keys, also the `objective` / `signal` label values.
LATENCY_KEYS = ("ttftP95", "itlP95", "e2eP95")


@dataclass(frozen=True)
class VariantSnapshot:
    """Replica counts and GPU size of one variant."""

    replicas: int = 0
    ready: int = 0
    desired: int = 0
    #: Demoted by its live agreement with the reference (status.variants[].demoted).
    demoted: bool = False
    gpus_per_replica: int = 1

    @property
    def gpus(self) -> int:
        return self.replicas * self.gpus_per_replica


@dataclass(frozen=True)
class Snapshot:
    """What the metrics say about one GRMDeployment, read from its body (pure)."""

    namespace: str
    name: str
    conditions: dict[str, bool] = field(default_factory=dict)
    switching: bool = False
    active_variant: str | None = None
    variants: dict[str, VariantSnapshot] = field(default_factory=dict)
    slo_seconds: dict[str, float] = field(default_factory=dict)
    observed_seconds: dict[str, float] = field(default_factory=dict)
    observed_rps: float | None = None
    samples: int | None = None
    max_gpus: int | None = None

    @property
    def gpus(self) -> dict[str, int]:
        return {name: v.gpus for name, v in self.variants.items()}


def _number(value: Any) -> float | None:
    # bool is an int subclass; a status never means True as 1 request per second.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _int(value: Any, default: int = 0) -> int:
    number = _number(value)
    return int(number) if number is not None else default


def snapshot(body: Mapping[str, Any]) -> Snapshot:
    """The snapshot of a GRMDeployment body; tolerant of a partial or older status.

    Nothing here raises on odd content (a metric endpoint must never fail a scrape): a field of
    the wrong type or an unparsable duration is left out.
    """
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}

    conditions = {
        str(c["type"]): c.get("status") == "True"
        for c in status.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type") and c.get("status") in ("True", "False")
    }
    gpus_per_replica = {
        str(v["name"]): _int(v.get("gpusPerReplica"), 1)
        for v in spec.get("variants") or []
        if isinstance(v, Mapping) and v.get("name")
    }
    variants = {name: VariantSnapshot(gpus_per_replica=size) for name, size in gpus_per_replica.items()}
    for v in status.get("variants") or []:
        if isinstance(v, Mapping) and v.get("name"):
            name = str(v["name"])
            variants[name] = VariantSnapshot(
                replicas=_int(v.get("replicas")),
                ready=_int(v.get("readyReplicas")),
                desired=_int(v.get("desiredReplicas")),
                gpus_per_replica=gpus_per_replica.get(name, 1),
                demoted=isinstance(v.get("demoted"), Mapping),
            )

    slo: dict[str, float] = {}
    for key in LATENCY_KEYS:
        raw = (spec.get("slo") or {}).get(key)
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):
                slo[key] = parse_duration(raw)
    observed_raw = status.get("observed") or {}
    observed = {key: v for key in LATENCY_KEYS if (v := _number(observed_raw.get(key))) is not None}
    samples = _number(status.get("samples"))
    active = status.get("activeVariant")
    max_gpus = None
    with contextlib.suppress(ValidationError, TypeError):
        scaling = Scaling.model_validate(spec.get("scaling") or {})
        # GRMDeploymentSpec.max_gpus(), from the scaling block alone: the alert "at maxGPUs with
        # pods not Ready" needs the budget even when another part of the spec is invalid.
        largest = max(gpus_per_replica.values(), default=1)
        max_gpus = scaling.max_gpus if scaling.max_gpus is not None else scaling.max_replicas * largest
    return Snapshot(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        conditions=conditions,
        switching=bool(status.get("switch")),
        active_variant=str(active) if active else None,
        variants=variants,
        slo_seconds=slo,
        observed_seconds=observed,
        observed_rps=_number(observed_raw.get("rps")),
        samples=int(samples) if samples is not None else None,
        max_gpus=max_gpus,
    )


@dataclass
class _Tracked:
    snapshot: Snapshot
    since: float  # when `snapshot` was seen: GPU-seconds accrue at its rate from then on
    gpu_seconds: dict[str, float] = field(default_factory=dict)  # accrued before `since`
    reported: dict[str, float] = field(default_factory=dict)  # highest value a scrape has seen

    def gpu_seconds_at(self, now: float) -> dict[str, float]:
        """The counters at ``now``, never below what was reported (a counter must not go back,
        even if the wall clock does)."""
        elapsed = max(0.0, now - self.since)
        totals = dict(self.gpu_seconds)
        for variant, gpus in self.snapshot.gpus.items():
            totals[variant] = totals.get(variant, 0.0) + gpus * elapsed
        for variant, value in totals.items():
            totals[variant] = max(value, self.reported.get(variant, 0.0))
        self.reported.update(totals)
        return totals


class FleetMetrics(Collector):
    """The per-GRMDeployment series, computed at scrape time from the last body seen."""

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._tracked: dict[tuple[str, str], _Tracked] = {}
        # observe() runs on the operator's event loop, collect() on the HTTP server's thread.
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe(self, body: Mapping[str, Any]) -> Snapshot:
        """Record the current state of one GRMDeployment; its snapshot."""
        snap = snapshot(body)
        now = self._clock()
        key = (snap.namespace, snap.name)
        with self._lock:
            old = self._tracked.get(key)
            accrued = old.gpu_seconds_at(now) if old is not None else {}
            self._tracked[key] = _Tracked(
                snapshot=snap, since=now, gpu_seconds=accrued, reported=dict(accrued)
            )
        return snap

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted GRMDeployment's series."""
        with self._lock:
            self._tracked.pop((namespace, name), None)

    def describe(self) -> list[Metric]:
        # No pre-registration describe: collect() may be empty and names are checked by tests.
        return []

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        with self._lock:
            tracked = [(t.snapshot, t.gpu_seconds_at(now)) for t in self._tracked.values()]

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*LABELS, *extra])

        condition = gauge("grm_operator_condition", "Status condition: 1 True, 0 False.", ("condition",))
        switching = gauge("grm_operator_switch_in_progress", "1 while a variant switch is in progress.")
        active = gauge("grm_operator_active_variant", "1 for the variant serving traffic.", ("variant",))
        replicas = gauge("grm_operator_variant_replicas", "Pods of the variant.", ("variant",))
        ready = gauge("grm_operator_variant_ready_replicas", "Ready pods of the variant.", ("variant",))
        desired = gauge(
            "grm_operator_variant_desired_replicas", "Replicas the operator asked for.", ("variant",)
        )
        gpus = gauge("grm_operator_variant_gpus", "GPUs held by the variant's pods.", ("variant",))
        demoted = gauge(
            "grm_operator_variant_demoted",
            "1 while the variant is demoted (live agreement with the reference below the floor).",
            ("variant",),
        )
        max_gpus = gauge(
            "grm_operator_max_gpus",
            "GPU budget: spec.scaling.maxGPUs, or maxReplicas x largest gpusPerReplica.",
        )
        gpu_seconds = CounterMetricFamily(
            "grm_operator_gpu_seconds",
            "GPU-seconds held by the variant's pods since the operator started.",
            labels=[*LABELS, "variant"],
        )
        slo = gauge("grm_operator_slo_seconds", "The SLO's p95 latency target.", ("objective",))
        observed = gauge("grm_operator_observed_seconds", "Observed p95 latency (status).", ("signal",))
        rps = gauge("grm_operator_observed_rps", "Observed requests per second (status).")
        samples = gauge("grm_operator_sample_budget", "GRM sample budget pushed to the workers.")

        for snap, accrued in tracked:
            ids = [snap.namespace, snap.name]
            for ctype, is_true in sorted(snap.conditions.items()):
                condition.add_metric([*ids, ctype], 1.0 if is_true else 0.0)
            switching.add_metric(ids, 1.0 if snap.switching else 0.0)
            if snap.active_variant:
                active.add_metric([*ids, snap.active_variant], 1.0)
            for vname, v in snap.variants.items():
                replicas.add_metric([*ids, vname], v.replicas)
                ready.add_metric([*ids, vname], v.ready)
                desired.add_metric([*ids, vname], v.desired)
                gpus.add_metric([*ids, vname], v.gpus)
                demoted.add_metric([*ids, vname], 1.0 if v.demoted else 0.0)
            for vname, total in sorted(accrued.items()):
                gpu_seconds.add_metric([*ids, vname], total)
            for key, value in snap.slo_seconds.items():
                slo.add_metric([*ids, key], value)
            for key, value in snap.observed_seconds.items():
                observed.add_metric([*ids, key], value)
            if snap.observed_rps is not None:
                rps.add_metric(ids, snap.observed_rps)
            if snap.samples is not None:
                samples.add_metric(ids, snap.samples)
            if snap.max_gpus is not None:
                max_gpus.add_metric(ids, snap.max_gpus)
        yield from (condition, switching, active, replicas, ready, desired, gpus, max_gpus, gpu_seconds)
        yield from (slo, observed, rps, samples, demoted)


# The names of every series above (a chart test checks that alerts and dashboard use only these
# and the operator-wide ones of grm_operator.telemetry.operator_metrics).
METRIC_NAMES = (
    "grm_operator_condition",
    "grm_operator_switch_in_progress",
    "grm_operator_active_variant",
    "grm_operator_variant_replicas",
    "grm_operator_variant_ready_replicas",
    "grm_operator_variant_desired_replicas",
    "grm_operator_variant_gpus",
    "grm_operator_variant_demoted",
    "grm_operator_max_gpus",
    "grm_operator_gpu_seconds_total",
    "grm_operator_slo_seconds",
    "grm_operator_observed_seconds",
    "grm_operator_observed_rps",
    "grm_operator_sample_budget",
)
