"""Shadow scoring: a variant's live verdicts compared with the reference variant's.

A worker of a variant that is not the reference (``shadow.reference_url`` set) takes a
``shadow.fraction`` of its successful ``/v1/grm/score`` requests and, after the user's response
is built, sends each again to the reference variant's Service with the header
``X-GRM-Shadow: <variant>``, the same responses, budget and seed (same shuffles). The two
verdicts (which response wins) are compared and counted per mode (``live``: sent at once;
``replay``: kept while the reference was down, sent once it answered):

* ``grm_shadow_verdicts_total{mode}`` — comparisons made (both sides gave a verdict);
* ``grm_shadow_agreements_total{mode}`` — of those, the same winner.

The operator reads them (their increase over ``precision.shadow.window``) and demotes a variant
whose agreement's lower confidence bound falls below ``precision.minQuality``.

Never delaying the user: :meth:`Shadow.offer` is synchronous and only samples and puts the
request into a bounded queue (``queue_size``; full: dropped and counted); ``concurrency``
tasks send queued requests, each with ``timeout_s``. A slow or dead reference therefore holds
at most ``concurrency`` connections and ``queue_size`` + ``reservoir_size`` small bodies.

The reference not running (connection refused, 502/503, which is what the reference's Service
answers with no Ready pod): sampled requests go into a reservoir of ``reservoir_size`` (Vitter's
algorithm R, a uniform sample of everything offered while down); every ``probe_interval_s`` the
worker asks the reference's ``/ready`` and, once it answers, replays the reservoir through the
same queue. A reference that answers but is slow is not down: a timed-out shadow is dropped.

Not demand on the reference: the reference's front (this module's :meth:`Shadow.served`)
counts a shadowed request in ``grm_shadow_served_total`` and the critique samples it drew in
``grm_shadow_served_samples_total`` instead of its score metrics (latency, outcomes, samples,
shed); its engine's ``vllm:request_success_total`` does count those samples, and the operator
subtracts ``grm_shadow_served_samples_total`` from it before it reads a request rate as demand
(docs/metrics.md). A reference whose engine has a queue refuses shadow requests (503), so
shadowing never queues a user's request there either.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from grm_worker.contract.config import ShadowConfig
from grm_worker.scoring import ScoreRequest, ScoreResult

__all__ = ["SHADOW_HEADER", "Reservoir", "Shadow", "ShadowItem", "busy_response"]

log = logging.getLogger("grm_worker.shadow")

#: The header a shadowed score request carries (value: the variant that sent it).
SHADOW_HEADER = "X-GRM-Shadow"

Mode = Literal["live", "replay"]

#: Why a sampled request was never compared (label ``reason`` of ``grm_shadow_dropped_total``).
DROP_REASONS = ("queue_full", "reservoir_full", "timeout", "reference_busy", "error", "no_verdict")

# Statuses meaning "no reference pod to answer": no endpoint behind the Service, or a draining pod.
_DOWN_STATUSES = frozenset({502, 503, 504})
# /ready of the reference must answer quickly; it is a probe, not a score.
_PROBE_TIMEOUT_S = 5.0


class ReferenceDown(Exception):
    """The reference could not be reached (refused, reset, 502/503/504)."""


@dataclass(frozen=True)
class ShadowItem:
    """A sampled score request and the verdict this variant gave it."""

    body: dict[str, Any]
    winner: int
    mode: Mode = "live"


class Reservoir:
    """A uniform sample of at most ``size`` items of a stream (Vitter's algorithm R).

    The i-th item offered (1-based) is kept with probability size/i, replacing a random kept
    one, so after n offers every one of them is kept with the same probability size/n: a long
    outage of the reference is represented evenly, not only by its first or last minutes.
    """

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.items: list[ShadowItem] = []
        self.seen = 0
        self._rng = rng

    def offer(self, item: ShadowItem) -> bool:
        """Offer one item; True when it (or, for a full reservoir, the one it replaced) was
        dropped, i.e. some item is lost."""
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return False
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item
        return True

    def take(self, count: int) -> list[ShadowItem]:
        """Remove and return up to ``count`` items; an emptied reservoir starts a new sample."""
        taken, self.items = self.items[:count], self.items[count:]
        if not self.items:
            self.seen = 0
        return taken

    def __len__(self) -> int:
        return len(self.items)


class ShadowMetrics:
    """The ``grm_shadow_*`` series (in the front's registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sampled = Counter(
            "grm_shadow_sampled", "Score requests sampled to be re-scored by the reference.", registry=r
        )
        self.verdicts = Counter(
            "grm_shadow_verdicts",
            "Verdicts compared with the reference's (both gave a winner), by mode (live, replay).",
            ["mode"],
            registry=r,
        )
        self.agreements = Counter(
            "grm_shadow_agreements",
            "Compared verdicts where the reference chose the same winner, by mode.",
            ["mode"],
            registry=r,
        )
        self.dropped = Counter(
            "grm_shadow_dropped",
            "Sampled requests never compared, by reason (queue_full, reservoir_full, timeout, "
            "reference_busy, error, no_verdict).",
            ["reason"],
            registry=r,
        )
        self.reservoir = Gauge(
            "grm_shadow_reservoir_requests",
            "Sampled requests waiting for the reference to answer again (replayed then).",
            registry=r,
        )
        self.reference_up = Gauge(
            "grm_shadow_reference_up",
            "1 while the reference answers shadow requests, 0 while it does not (-1: shadowing off).",
            registry=r,
        )
        self.served = Counter(
            "grm_shadow_served",
            "Shadow score requests this worker answered as the reference (not counted as demand).",
            registry=r,
        )
        self.served_samples = Counter(
            "grm_shadow_served_samples",
            "Critique samples (engine requests) drawn for shadow score requests this worker answered "
            "as the reference; the operator subtracts them from the engine's request rate.",
            registry=r,
        )
        # Exported at 0 from the start, so increase() and rate() exist before the first event.
        for mode in ("live", "replay"):
            self.verdicts.labels(mode=mode)
            self.agreements.labels(mode=mode)
        for reason in DROP_REASONS:
            self.dropped.labels(reason=reason)


class Shadow:
    """Sampling, queueing, sending and comparing of one worker's shadow requests."""

    def __init__(
        self,
        config: ShadowConfig,
        variant: str,
        registry: CollectorRegistry,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.variant = variant
        self.metrics = ShadowMetrics(registry)
        self._rng = rng or random.Random()
        self.enabled = config.reference_url is not None and config.fraction > 0.0
        self.reference_url = (config.reference_url or "").rstrip("/")
        self.reference_up = True
        self.queue: asyncio.Queue[ShadowItem] = asyncio.Queue(maxsize=config.queue_size)
        self.reservoir = Reservoir(config.reservoir_size, self._rng)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.metrics.reference_up.set(1 if self.enabled else -1)

    # --- the user's side: never awaits ------------------------------------------------------------
    def offer(self, request: ScoreRequest, result: ScoreResult) -> None:
        """Maybe shadow one answered score request. Synchronous and O(1): it samples, then puts
        the request into the queue (or, while the reference is down, the reservoir)."""
        if not self.enabled or result.winner is None:
            return
        if self._rng.random() >= self.config.fraction:
            return
        self.metrics.sampled.inc()
        body: dict[str, Any] = {
            "query": request.query,
            "responses": list(request.responses),
            "samples": request.samples,
            "sampling": request.sampling,
            "early_exit": "exact" if request.early_exit else "off",
            "seed": request.seed,
        }
        if request.principles is not None:
            body["principles"] = request.principles
        item = ShadowItem(body, result.winner)
        if not self.reference_up:
            self._keep(item)
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.dropped.labels(reason="queue_full").inc()

    def served(self, result: ScoreResult) -> None:
        """Count a shadow score this worker answered as the reference (instead of demand)."""
        self.metrics.served.inc()
        self.metrics.served_samples.inc(result.samples_used)

    def _keep(self, item: ShadowItem) -> None:
        if self.reservoir.offer(ShadowItem(item.body, item.winner, "replay")):
            self.metrics.dropped.labels(reason="reservoir_full").inc()
        self.metrics.reservoir.set(len(self.reservoir))

    # --- background: senders and the probe ---------------------------------------------------------
    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the senders and the probe run while the app does."""
        if self.enabled:
            self._session = aiohttp.ClientSession()
            self._tasks = [
                asyncio.create_task(self._sender(), name=f"grm-shadow-sender-{i}")
                for i in range(self.config.concurrency)
            ]
            self._tasks.append(asyncio.create_task(self._probe(), name="grm-shadow-probe"))
        yield
        await self.stop()

    async def stop(self) -> None:
        """Cancel the senders and the probe; what is queued is dropped (it is a sample)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _sender(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self.compare(item)
            except Exception:  # a sender must outlive any one request's failure
                log.exception("shadow compare failed")
                self.metrics.dropped.labels(reason="error").inc()
            finally:
                self.queue.task_done()

    async def compare(self, item: ShadowItem) -> bool | None:
        """Send one item to the reference and count the comparison; True/False: agreed or not,
        None: not compared (the reason counted, or kept for replay when the reference is down)."""
        try:
            winner = await self._reference_winner(item)
        except ReferenceDown as error:
            if self.reference_up:
                log.info(
                    "reference %s down (%s): keeping sampled requests to replay", self.reference_url, error
                )
            self._set_up(False)
            self._keep(item)
            return None
        except TimeoutError:
            self.metrics.dropped.labels(reason="timeout").inc()
            return None
        except _Busy:
            self.metrics.dropped.labels(reason="reference_busy").inc()
            return None
        if winner is None:
            self.metrics.dropped.labels(reason="no_verdict").inc()
            return None
        agreed = winner == item.winner
        self.metrics.verdicts.labels(mode=item.mode).inc()
        if agreed:
            self.metrics.agreements.labels(mode=item.mode).inc()
        return agreed

    async def _reference_winner(self, item: ShadowItem) -> int | None:
        assert self._session is not None
        url = f"{self.reference_url}/v1/grm/score"
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with self._session.post(
                    url, json=item.body, headers={SHADOW_HEADER: self.variant}
                ) as response:
                    if response.status in _DOWN_STATUSES:
                        if _is_busy(await response.json(content_type=None)):
                            raise _Busy
                        raise ReferenceDown(f"HTTP {response.status}")
                    if response.status != 200:
                        log.warning("reference answered a shadow score with HTTP %d", response.status)
                        return None
                    body = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
            # ServerTimeoutError is a ClientConnectionError but means slow, not down.
            if isinstance(error, aiohttp.ServerTimeoutError):
                raise TimeoutError from error
            raise ReferenceDown(f"{type(error).__name__}: {error}") from error
        except ValueError:
            return None
        winner = body.get("winner") if isinstance(body, dict) else None
        return winner if isinstance(winner, int) and not isinstance(winner, bool) else None

    def _set_up(self, up: bool) -> None:
        self.reference_up = up
        self.metrics.reference_up.set(1 if up else 0)

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval_s)
            if not self.reference_up and await self._answers():
                log.info(
                    "reference %s answers again: replaying %d kept requests",
                    self.reference_url,
                    len(self.reservoir),
                )
                self._set_up(True)
            if self.reference_up and len(self.reservoir):
                self._replay()

    def _replay(self) -> None:
        room = self.queue.maxsize - self.queue.qsize()
        for item in self.reservoir.take(room):
            self.queue.put_nowait(item)
        self.metrics.reservoir.set(len(self.reservoir))

    async def _answers(self) -> bool:
        assert self._session is not None
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                async with self._session.get(f"{self.reference_url}/ready") as response:
                    return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


def _is_busy(body: Any) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and error.get("code") == "shadow_busy"


class _Busy(Exception):
    """The reference refused the shadow request because its engine has a queue."""


def busy_response() -> web.Response:
    """What a reference whose engine has a queue answers a shadow request: 503, code shadow_busy
    (the sender drops the request instead of taking the reference for down)."""
    return web.json_response(
        {
            "error": {
                "message": "engine has a queue: shadow requests refused",
                "type": "ServiceUnavailableError",
                "param": None,
                "code": "shadow_busy",
            }
        },
        status=503,
    )
