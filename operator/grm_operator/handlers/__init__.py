"""The operator's kopf side: thin handlers over the pure builders, status folding and policy.

* :mod:`.reconcile` — watch events → store → per-object queue → apply children, fold status;
  :mod:`.store` — the newest body of every watched object it reads.
* :mod:`.autoscale` — the per-GRMDeployment control loop (observe, decide, apply);
  :mod:`.policy_adapter` — its entry to the policy: status, metrics and pod counts in, an
  Intent out.
* :mod:`.fleetmetrics` — the per-GRMDeployment Prometheus series, fed by watch events.
* :mod:`.context` — what handler modules share; :mod:`.runtime` — kopf settings, login, run.

The API client is :mod:`grm_operator.kubeapi` (the only module speaking to the API server), the
operator's metrics :mod:`grm_operator.telemetry`.

Each handler module (reconcile, autoscale, fleetmetrics) has a ``register(registry, ctx)`` and is
listed in :data:`grm_operator.handlers.runtime.HANDLER_MODULES`; a further one joins the same way.
"""
