"""The fleet simulator: a GRMDeployment's replicas, metrics and controller loop in simulated time.

:mod:`.engine` times one replica with the worker's performance model; :mod:`.fleet` runs pods
(:mod:`.pod`), routing, metrics (:mod:`.scrape`) and a controller (:mod:`.controller`) over a
:mod:`.trace` and yields a :mod:`.results`; :mod:`.policies` holds our policy and the baselines,
:mod:`.report` the table, JSON and plot, :mod:`.cli` the ``simulate`` command and :mod:`.demo` the
``demo`` command.
"""
