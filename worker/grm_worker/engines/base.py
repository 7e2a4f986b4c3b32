"""The engine interface the front talks to: OpenAI-style calls, readiness, metrics, death.

An engine answers ``POST /v1/completions`` and ``/v1/chat/completions`` (JSON or an SSE byte
stream), ``GET /v1/models``, renders its Prometheus metrics, and reports when it has died (the
worker then exits non-zero so Kubernetes restarts the pod). :meth:`Engine.sample` is what the GRM
scoring uses: k critiques for a list of prompts through the completions API.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["WAITING_METRIC", "Engine", "EngineError", "EngineReply", "engine_waiting"]

WAITING_METRIC = "vllm:num_requests_waiting"
# The family's own lines only (not vllm:num_requests_waiting_by_reason): vLLM 0.32's exposition
# is ~600 lines in ~90 families (tests/fixtures/vllm-0.32-metrics.txt), parsed per poll for one gauge.
_WAITING_LINE = re.compile(r"^(?:# (?:HELP|TYPE) )?" + re.escape(WAITING_METRIC) + r"[{ ]")


def engine_waiting(metrics_text: str) -> float | None:
    """Requests waiting in the engine's queue: ``vllm:num_requests_waiting`` summed over its label
    sets (one per engine, e.g. per data-parallel rank), or None when the text has no such gauge.

    Raises ``ValueError`` on lines of that family the Prometheus parser rejects.
    """
    lines = [line for line in metrics_text.splitlines() if _WAITING_LINE.match(line)]
    total, seen = 0.0, False
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            if sample.name == WAITING_METRIC:
                total += sample.value
                seen = True
    return total if seen else None


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

    async def waiting_requests(self) -> float | None:
        """Requests waiting for admission (``vllm:num_requests_waiting`` summed), None when the
        metrics do not say. Read from the metrics text; an engine that knows its queue answers
        without rendering them (the sim's text costs ~5 ms, read once a second per worker)."""
        return engine_waiting(await self.metrics_text())

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
