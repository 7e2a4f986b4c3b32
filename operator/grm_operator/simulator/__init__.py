"""The fleet simulator: a GRMDeployment's replicas, metrics and controller loop in simulated time.

:mod:`.engine` times one replica with the worker's performance model, :mod:`.fleet` runs pods,
routing, metrics and a controller over a :mod:`.trace`, :mod:`.policies` holds our policy and the
baselines, :mod:`.report` the table, JSON and plot, :mod:`.cli` the ``simulate`` and ``demo``
commands.
"""
