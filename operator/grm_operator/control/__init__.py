"""Control: what the operator makes of a GRMDeployment and a policy decision, without I/O.

* :mod:`.builders` — the child objects (worker ConfigMaps, Deployments, Service, PDB, PodMonitor).
* :mod:`.status` — folding the children's state into ``status`` and its conditions.
* :mod:`.rollout` — the variant switch as a state machine recorded in ``status.switch``.
* :mod:`.actuation` — a policy decision turned into replica counts, a switch step and status.

Layer: above :mod:`grm_operator.policy` and :mod:`grm_operator.api`, below the edges
(metrics sources, the API client, telemetry) and the kopf handlers that call them.
"""
