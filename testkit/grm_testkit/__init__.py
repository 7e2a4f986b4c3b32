"""The test kit: everything that runs grm-elastic for tests, benchmarks and the demo.

Never imported by the product packages (``grm_operator``, ``grm_worker``) and never installed
in the operator or worker images; the ``dev`` setup installs it (``make venv``).

* :mod:`.cluster` — a real control plane built from the Kubernetes Go modules, run on loopback,
  and the local cluster made of it in a network namespace of its own (docs/local-cluster.md).
* :mod:`.operator_process` — ``grm-operator run`` as a subprocess against a test control plane.
* :mod:`.traffic` — trace replay against a Service, with per-request outcomes.
* :mod:`.livedemo` — ``make demo``: the local cluster, the Helm-installed operator, a live trace.
* :mod:`.pytest_plugin` — the control-plane fixtures (``control_plane``, ``namespace``, …).
"""
