"""Engines behind the worker's front: the real vLLM child process and the simulated engine.

Both speak vLLM's OpenAI-compatible API through :class:`~grm_worker.engines.base.Engine`, so the
front, the scoring and the tests do not care which one runs.
"""
