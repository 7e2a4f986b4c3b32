"""The engine interface the front talks to: OpenAI-style calls, readiness, metrics, death.

An engine answers ``POST /v1/completions`` and ``/v1/chat/completions`` (JSON or an SSE byte
stream), ``GET /v1/models``, renders its Prometheus metrics, and reports when it has died (the
worker then exits non-zero so Kubernetes restarts the pod). :meth:`Engine.sample` is what the GRM
scoring uses: k critiques for a list of prompts through the completions API.
"""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from grm_worker.contract.shedding import QueueReading
from grm_worker.queue import engine_queue

__all__ = ["Engine", "EngineError", "EngineReply"]


class EngineError(RuntimeError):
    """The engine failed a call (HTTP status kept for the front's answer)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class EngineReply:
    """An engine's answer: a JSON body, or an SSE stream of already-framed ``data: …`` bytes."""

    status: int
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None


class Engine(abc.ABC):
    """An OpenAI-compatible inference engine owned by the worker."""

    model_name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin starting (returns before the engine is ready)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the engine and release its resources."""

    @abc.abstractmethod
    async def ready(self) -> bool:
        """True once the engine answers requests."""

    @abc.abstractmethod
    async def wait_dead(self) -> str:
        """Return (with a reason) when the engine died unexpectedly; never returns otherwise."""

    @abc.abstractmethod
    async def call(self, path: str, body: dict[str, Any]) -> EngineReply:
        """``POST path`` with a JSON body (``/v1/completions`` or ``/v1/chat/completions``)."""

    @abc.abstractmethod
    async def models(self) -> EngineReply:
        """``GET /v1/models``."""

    @abc.abstractmethod
    async def metrics_text(self) -> str:
        """The engine's Prometheus exposition text (``vllm:*`` families, plus GPU gauges if any)."""

    async def queue_reading(self) -> QueueReading | None:
        """The engine's queue now (waiting requests, cumulative queue-time histogram), None when
        its metrics do not say; read from :meth:`metrics_text`."""
        return engine_queue(await self.metrics_text())

    async def sample(
        self, prompts: list[str], n: int, *, max_tokens: int, temperature: float, seed: int | None = None
    ) -> list[str]:
        """``n`` completions of each prompt, grouped by prompt (OpenAI orders choices that way)."""
        body: dict[str, Any] = {
            "model": self.model_name,
            "prompt": prompts,
            "n": n,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if seed is not None:
            body["seed"] = seed
        reply = await self.call("/v1/completions", body)
        if reply.body is None or reply.status != 200:
            detail = json.dumps(reply.body)[:300] if reply.body else ""
            raise EngineError(f"engine answered {reply.status} to a scoring request {detail}", reply.status)
        choices = sorted(reply.body.get("choices", []), key=lambda c: int(c.get("index", 0)))
        if len(choices) != len(prompts) * n:
            raise EngineError(f"engine returned {len(choices)} choices, expected {len(prompts) * n}")
        return [str(c.get("text") or "") for c in choices]
