"""Tools the operator's Jobs run (and people on a workstation): ``grm-operator quantize`` builds a
compressed variant with llm-compressor, ``grm-operator evaluate`` measures it against the reference
on the real engine. They run beside the engine, not in the operator: they may use the worker's
engine and scoring code (an exception the import contracts name)."""
