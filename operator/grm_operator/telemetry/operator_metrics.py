"""The operator's own Prometheus metrics (prometheus_client): reconciles, errors, decisions, API
requests and writes, and the reconcile queue.

One :class:`OperatorMetrics` per process, registered on a registry that the ``/metrics`` endpoint
serves; tests pass a fresh ``CollectorRegistry`` so that counts start at zero. The autoscaler
counts its decisions with :attr:`OperatorMetrics.decisions`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from grm_operator.kubeapi import WRITE_VERBS


class OperatorMetrics:
    """Counters and gauges named ``grm_operator_*``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.reconciles = Counter(
            "grm_operator_reconciles_total",
            "Reconciles of a GRMDeployment, by result (ok, error, invalid).",
            ["result"],
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "grm_operator_reconcile_errors_total",
            "Failed reconciles, by error class (e.g. Conflict, Forbidden, KubeError).",
            ["error"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "grm_operator_reconcile_duration_seconds",
            "Wall time of one reconcile (reads from the cache, writes to the API).",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
            registry=registry,
        )
        self.decisions = Counter(
            "grm_operator_decisions_total",
            "Policy decisions applied, by action (ScaleUp, ScaleDown, SwitchVariant, SetSamples, Hold).",
            ["action"],
            registry=registry,
        )
        self.api_requests = Counter(
            "grm_operator_api_requests_total",
            "Requests the operator's client sent to the API server, by verb, kind and HTTP code.",
            ["verb", "kind", "code"],
            registry=registry,
        )
        self.api_writes = Counter(
            "grm_operator_api_writes_total",
            "Write requests (create, patch, update, delete) the operator's client sent, by kind.",
            ["kind"],
            registry=registry,
        )
        self.events_posted = Counter(
            "grm_operator_events_total", "Kubernetes Events posted, by reason.", ["reason"], registry=registry
        )
        self.sample_pushes = Counter(
            "grm_operator_sample_pushes_total",
            "Sample budgets pushed to worker pods (POST /admin/samples), by result: ok, "
            "unauthorized (the worker refused the admin token: a Secret replaced by hand), "
            "no_token (the Secret is not there yet), error (unreachable, other HTTP errors).",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "unauthorized", "no_token", "error"):
            self.sample_pushes.labels(result=result)
        self.queue_depth = Gauge(
            "grm_operator_queue_depth", "GRMDeployments waiting for or in a reconcile.", registry=registry
        )
        self.leader = Gauge(
            "grm_operator_leader",
            "1 while this replica holds the leader-election Lease and acts, 0 while it waits "
            "(absent without leader election).",
            registry=registry,
        )
        self.managed = Gauge(
            "grm_operator_grmdeployments", "GRMDeployments the operator currently knows.", registry=registry
        )

    def observe_request(self, verb: str, kind: str, status: int) -> None:
        """The :class:`~grm_operator.kubeapi.KubeClient` observer: count every request."""
        self.api_requests.labels(verb=verb, kind=kind, code=str(status)).inc()
        if verb in WRITE_VERBS:
            self.api_writes.labels(kind=kind).inc()
