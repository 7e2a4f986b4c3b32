"""The Direct source: the operator scrapes each Ready worker's ``/metrics`` itself.

No Prometheus needed (the default when no Prometheus URL is configured). Every
:meth:`Direct.observe` scrapes all Ready pods of the target concurrently with a short timeout,
appends each scrape to that pod's ring buffer, forgets pods that are gone, and reduces the
window with :func:`grm_operator.metrics.window.summarize`. Rates need two scrapes of a pod in
the window, so with the default 15 s control period and 1 m window a new pod counts after its
second scrape (~15 s); gauges count at once.

A pod that fails to answer is left out of this tick (its earlier scrapes still count for rates)
and named in the reading's notes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from grm_operator.metrics.exposition import ExpositionError, parse_scrape
from grm_operator.metrics.source import MetricsTarget, PodEndpoint, Reading
from grm_operator.metrics.window import ScrapeStore, summarize
from grm_operator.policy.signals import SIGNAL_NAMES

__all__ = ["Direct"]

# A worker answers /metrics in milliseconds; 2 s is generous yet keeps one slow pod from
# delaying a 15 s control loop noticeably.
DEFAULT_TIMEOUT_S = 2.0
# 256 scrapes cover a 1 m window even when observe() runs every second (tests, fast loops), and
# the shadow verdicts' 1 h window (spec.precision.shadow.window) at the 15 s control period
# (240 scrapes). A scrape keeps only the ~20 numbers the signals need, so 256 cost ~100 KiB a pod.
DEFAULT_CAPACITY = 256


class Direct:
    """Scrapes workers directly; keeps per-pod scrape histories per GRMDeployment."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, capacity: int = DEFAULT_CAPACITY) -> None:
        self.timeout_s = timeout_s
        self.capacity = capacity
        self._stores: dict[str, ScrapeStore] = {}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def _scrape(self, pod: PodEndpoint) -> str:
        async with self._client().get(pod.metrics_url) as resp:
            resp.raise_for_status()
            return await resp.text()

    async def scrape(self, target: MetricsTarget, now: float) -> tuple[str, ...]:
        """Scrape every Ready pod of ``target`` once at ``now``; returns notes on failures."""
        store = self._stores.setdefault(target.key, ScrapeStore(self.capacity))
        store.retain(p.name for p in target.pods)
        results = await asyncio.gather(*(self._scrape(p) for p in target.pods), return_exceptions=True)
        notes: list[str] = []
        for pod, result in zip(target.pods, results, strict=True):
            if isinstance(result, BaseException):
                notes.append(f"pod {pod.name}: scrape failed ({type(result).__name__}: {result})"[:200])
                continue
            try:
                store.add(pod.name, parse_scrape(result, now, keep=SIGNAL_NAMES))
            except ExpositionError as exc:
                notes.append(f"pod {pod.name}: {exc}"[:200])
        return tuple(notes)

    def summarize(self, target: MetricsTarget, window_s: float, now: float) -> Reading:
        """The window ending at ``now`` from the scrapes kept so far (no I/O)."""
        store = self._stores.get(target.key) or ScrapeStore(self.capacity)

        def pods_of(variants: Sequence[str]) -> list[str]:
            return [p.name for p in target.pods if p.variant in variants]

        long = target.shadow_window_s
        per_variant = {
            v: summarize(store.histories(pods_of([v])), window_s, now, long) for v in target.variants
        }
        total = summarize(store.histories(pods_of(target.variants)), window_s, now, long)
        return Reading(total=total, variants=per_variant)

    async def observe(self, target: MetricsTarget, window_s: float, now: float) -> Reading:
        """Scrape now, then reduce the window ``[now - window_s, now]``."""
        notes = await self.scrape(target, now)
        reading = self.summarize(target, window_s, now)
        return Reading(total=reading.total, variants=reading.variants, notes=notes)

    def forget(self, namespace: str, name: str) -> None:
        """Drop the histories of a deleted GRMDeployment."""
        self._stores.pop(f"{namespace}/{name}", None)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
