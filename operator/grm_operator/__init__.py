"""grm-elastic operator: elastic, SLO-driven serving of generative reward models on Kubernetes.

Layers import only downward (``tests/unit/architecture/test_layers.py`` checks it):

==============  =====================================================================
``cli``         the ``grm-operator`` command line
``simulator``   the fleet simulator: drives the same policy adapter as the operator
``handlers``    kopf glue: reconcile, the autoscaler's timer, the policy adapter, runtime
edges           ``metrics`` (sources), ``kubeapi`` (the API client), ``telemetry``
``control``     builders, status folding, the switch rollout, actuation (pure)
``policy``      ``decide(observation, state, spec, now)`` and its types (pure)
``api``         the GRMDeployment models, CRD and API reference; ``settings``, ``rbac``
==============  =====================================================================

Below them all, the only worker modules the operator imports: :mod:`grm_worker.contract`.
"""

__version__ = "0.1.0"
