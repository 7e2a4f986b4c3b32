"""The operator's own Prometheus series (prometheus_client), at the edge of the package.

* :mod:`.operator_metrics` — process-wide counters: reconciles, decisions, API requests, queue.
* :mod:`.deployment_metrics` — one set of series per GRMDeployment, derived from its spec and
  status (conditions, replicas and GPUs per variant, GPU-seconds, SLO and observed latency).
"""
