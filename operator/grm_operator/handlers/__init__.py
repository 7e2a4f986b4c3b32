"""The operator's kopf side: thin handlers over the pure builders, status folding and policy.

* :mod:`.kube` — the Kubernetes API adapter (the only module speaking to the API server).
* :mod:`.reconcile` — watch events → store → per-object queue → apply children, fold status.
* :mod:`.telemetry` — the operator's Prometheus metrics.
* :mod:`.context` — what handler modules share; :mod:`.runtime` — kopf settings, login, run.

A further handler module (e.g. the autoscaler's timer) has a ``register(registry, ctx)`` and is
listed in :data:`grm_operator.handlers.runtime.HANDLER_MODULES`.
"""
