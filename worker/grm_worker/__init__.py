"""grm-elastic worker: a vLLM (or simulated) engine behind a GRM scoring front.

:mod:`grm_worker.contract` is the only part the operator may import; the front, the scoring and
the engines are private to the worker.
"""

__version__ = "0.1.0"
