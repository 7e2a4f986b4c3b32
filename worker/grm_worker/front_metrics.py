"""The front's metrics: the ``grm_*`` Prometheus series the worker adds to its engine's.

Scoring (samples drawn, early exits, samples saved, parse failures, latency, outcomes), requests
by endpoint and code, the sample budget, sample shedding (samples and requests shed, the shed
floor, the engine's queue as last read), connections recycled (age and request caps, drain),
requests abandoned by their clients, admin requests refused,
readiness and the variant's info: docs/worker.md
(Metrics) describes each; docs/metrics.md says which the operator reads (the samples shed count
as demand).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from grm_worker.contract.config import WorkerConfig

__all__ = ["SCORE_LATENCY_BUCKETS", "FrontMetrics"]

#: Bucket bounds (seconds) of ``grm_score_latency_seconds``, the latency of a whole GRM score (all
#: its critique samples), which the operator reads as the e2e signal against ``slo.e2eP95``.
#: histogram_quantile interpolates inside a bucket, so its error is at most the bucket's width:
#: 5 s around the usual 10–30 s targets (the earlier 10/20/40 bounds allowed 20 s), 0.25–0.5 s
#: below 2.5 s, where scores of small budgets on the sim land.
SCORE_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0,
                         25.0, 30.0, 40.0, 50.0, 60.0, 90.0, 120.0, 240.0, 480.0, 960.0)  # fmt: skip


class FrontMetrics:
    """The front's ``grm_*`` series in a registry of their own (the engine's are rendered apart)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        top = max(64, config.scoring.samples_max)
        buckets = tuple(float(b) for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if b <= top)
        self.samples = Histogram(
            "grm_score_samples", "Critique samples drawn per score request.", registry=r, buckets=buckets
        )
        self.early_exits = Counter(
            "grm_score_early_exits", "Score requests stopped early (winner could not change).", registry=r
        )
        self.parse_failures = Counter(
            "grm_score_parse_failures", "Critique samples whose scores could not be parsed.", registry=r
        )
        self.samples_saved = Counter(
            "grm_score_samples_saved", "Samples of the budget not drawn thanks to early exit.", registry=r
        )
        self.latency = Histogram(
            "grm_score_latency_seconds",
            "Wall-clock seconds of a successful score request, all its critique samples "
            "(what slo.e2eP95 bounds).",
            registry=r,
            buckets=SCORE_LATENCY_BUCKETS,
        )
        self.score_requests = Counter(
            "grm_score_requests", "Score requests by outcome.", ["outcome"], registry=r
        )
        for outcome in ("ok", "error", "rejected"):
            self.score_requests.labels(outcome=outcome)
        self.requests = Counter(
            "grm_requests",
            "Requests the front answered, by endpoint and status code.",
            ["endpoint", "code"],
            registry=r,
        )
        self.connections_recycled = Counter(
            "grm_connections_recycled",
            "Client connections the front closed after a response with `Connection: close`: "
            "max_age (connection_max_age_s), max_requests (connection_max_requests), draining.",
            ["reason"],
            registry=r,
        )
        for reason in ("max_age", "max_requests", "draining"):
            self.connections_recycled.labels(reason=reason)
        self.abandoned = Counter(
            "grm_requests_abandoned",
            "Requests whose client disconnected before the answer was complete (streamed or not): "
            "the work for them was stopped and the engine's requests aborted.",
            ["endpoint"],
            registry=r,
        )
        for endpoint in ("completions", "chat", "score"):
            self.abandoned.labels(endpoint=endpoint)
        self.admin_rejected = Counter(
            "grm_admin_requests_rejected",
            "Admin API requests refused with 401 (no or a wrong bearer token, or no token configured).",
            registry=r,
        )
        self.in_flight = Gauge("grm_requests_in_flight", "Requests the front is serving now.", registry=r)
        self.budget = Gauge(
            "grm_sample_budget", "Current GRM sample budget (samples per score request).", registry=r
        )
        self.ready = Gauge(
            "grm_worker_ready", "1 when the engine answers and the worker is not draining.", registry=r
        )
        info_labels = ["variant", "precision", "engine", "model_name"]
        self.info = Gauge("grm_worker_info", "The worker's variant (value 1).", info_labels, registry=r)
        # Unlabelled counters are exported at 0 from the start, so rate() exists before the first shed.
        self.samples_shed = Counter(
            "grm_score_samples_shed",
            "Samples of the budget not drawn because the engine had requests waiting "
            "(the operator counts them as demand).",
            registry=r,
        )
        self.requests_shed = Counter(
            "grm_score_requests_shed",
            "Score requests that ran at the shed floor because the engine had requests waiting.",
            registry=r,
        )
        self.shed_floor = Gauge(
            "grm_shed_floor",
            "Samples a new score request gets while the engine has requests waiting "
            "(scoring.shed_floor; 0: shedding off).",
            registry=r,
        )
        self.shed_floor.set(config.scoring.shed_floor or 0)
        self.engine_queue = Gauge(
            "grm_engine_queue",
            "Requests waiting in the engine's full batch as the front last read them (what shedding "
            "acts on; 0: the batch has room; -1: unknown or shedding off).",
            registry=r,
        )
        self.engine_queue.set(-1)
        self.info.labels(
            variant=config.variant,
            precision=config.precision,
            engine=config.engine,
            model_name=config.model.public_name,
        ).set(1)

    def render(self) -> str:
        """The exposition text of the front's series."""
        return generate_latest(self.registry).decode()
