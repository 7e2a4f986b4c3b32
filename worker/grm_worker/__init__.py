"""grm-elastic worker: a vLLM (or simulated) engine behind a GRM scoring front.

``config`` and ``perfmodel`` are the contract modules the operator may import; the server and
engines are private to the worker.
"""

__version__ = "0.1.0"
