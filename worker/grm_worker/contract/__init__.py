"""The operator↔worker contract: everything the operator needs from the worker, and nothing more.

* :mod:`~grm_worker.contract.config`: :class:`~grm_worker.contract.config.WorkerConfig`, what one
  worker pod serves and how; the operator renders it into each variant's ConfigMap and the worker
  reads it at start.
* :mod:`~grm_worker.contract.admin`: the admin API's bearer token (the worker's environment
  variable, the operator's Secret key, the request header).
* :mod:`~grm_worker.contract.perfmodel`: the latency model of one vLLM replica; the sim engine
  times its steps with it, the operator's fleet simulator times its replicas with it and the
  policy takes its capacity prior from it.
* :mod:`~grm_worker.contract.shedding`: the sample-shedding rules (when the engine's batch is
  full, how many samples a score request then drops), applied by the worker's front and by the
  fleet simulator alike.

The rule: the operator (``grm_operator``) imports nothing of ``grm_worker`` but this package, and
this package imports nothing of ``grm_worker`` outside itself (no aiohttp, no Prometheus, no
vLLM: pydantic and PyYAML only). Changing a name here changes both sides.
"""
