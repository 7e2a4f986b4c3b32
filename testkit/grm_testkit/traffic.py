"""Client traffic against a GRMDeployment's Service, and what the operator made of it.

Used by the live demo (`grm-live-demo`) and the e2e tests: :class:`LoadGenerator` sends
``/v1/grm/score`` requests open-loop at a rate that may change over time (arrivals spaced
``1/rate`` apart, so a slow server cannot slow the offered load) and records every request's
outcome, so a test can count them and assert that none failed — one connection per request;
:class:`KeepAliveLoad` sends the same requests the way RL trainers and gateways do, over pooled
keep-alive connections (which kube-proxy balances per *connection*, not per request), with the
clients users run: the official ``openai`` client (``AsyncOpenAI``, its pooled httpx client), an
``httpx.AsyncClient`` pool, and a reward client shaped like slime's ``remote_rm`` (an
``aiohttp.ClientSession`` with ``TCPConnector(limit=64)``, batches of concurrent score requests
gathered as ``batched_async_rm`` does); :func:`trace_rates` turns a slice of
an Azure LLM-inference trace into a per-second arrival-rate curve; :func:`snapshot` reads a
GRMDeployment's status into the few numbers the demo prints (replicas per variant, SLO and metrics
conditions, observed p95s, the decisions with their reasons).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import importlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

SCORE_BODY: dict[str, Any] = {
    "query": "Which answer explains why the sky is blue?",
    "responses": [
        "Rayleigh scattering: shorter wavelengths scatter more in the atmosphere.",
        "Because it reflects the ocean.",
    ],
}
"""One pairwise score request (the samples come from the deployment's budget)."""


@dataclass(frozen=True)
class Outcome:
    """One client request: when it was sent (seconds since the load began), how long it took, and
    its HTTP status (0 when no response came: refused, reset or timed out)."""

    sent: float
    latency: float
    status: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


def post_json(url: str, body: Mapping[str, Any], timeout_s: float = 60.0) -> tuple[int, Any]:
    """One POST with a JSON body: (status, decoded JSON or text); status 0 with the error text when
    no HTTP response came back."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ValueError) as exc:
        return 0, repr(exc)


class LoadGenerator:
    """Open-loop client load on one URL: ``rate(t)`` requests per second at ``t`` seconds after
    :meth:`start`, each request in a worker thread of its own (at most ``max_in_flight`` at once;
    beyond that arrivals wait client-side, and their latency counts from when they were due)."""

    def __init__(
        self,
        url: str,
        rate: Callable[[float], float],
        *,
        body: Mapping[str, Any] | None = None,
        max_in_flight: int = 64,
        timeout_s: float = 60.0,
    ) -> None:
        self.url = url
        self.rate = rate
        self.body = dict(body or SCORE_BODY)
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="load")
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._in_flight = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = 0.0

    def start(self) -> LoadGenerator:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._dispatch, name="load-dispatch", daemon=True)
        self._thread.start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _dispatch(self) -> None:
        due = 0.0
        while not self._stop.is_set():
            rate = self.rate(due)
            if rate <= 0:
                # No load now: look again in 0.2 s of load time.
                due += 0.2
            else:
                with self._lock:
                    self._in_flight += 1
                self._pool.submit(self._one, due)
                due += 1.0 / rate
            wait = self.t0 + due - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)

    def _one(self, due: float) -> None:
        status, answer = post_json(self.url, self.body, self.timeout_s)
        now = time.monotonic() - self.t0
        error = "" if status == 200 else str(answer)[:300]
        with self._lock:
            self._in_flight -= 1
            self._outcomes.append(Outcome(due, now - due, status, error))

    def stop(self, drain_timeout_s: float = 90.0) -> list[Outcome]:
        """Stops sending, waits for the requests in flight (up to the timeout) and returns every
        outcome so far."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        deadline = time.monotonic() + drain_timeout_s
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return self.outcomes()

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)


KeepAliveClient = Literal["openai", "httpx", "reward"]
_Send = Callable[[], Awaitable[tuple[int, str]]]  # one request: (status, error text; "" when 200)
_Close = Callable[[], Awaitable[None]]
KEEPALIVE_CLIENTS: tuple[KeepAliveClient, ...] = ("openai", "httpx", "reward")
_CLIENT_MODULES = {"openai": ("httpx", "openai"), "httpx": ("httpx",), "reward": ("aiohttp",)}

# slime's remote reward client (slime/rollout/rm_hub/__init__.py, 2025): one module-wide
# aiohttp.ClientSession with ClientTimeout(total=120, connect=10) and TCPConnector(limit=64), a
# semaphore of 64 concurrent requests, raise_for_status() then resp.json(). It retries transient
# errors (connection errors, 5xx, 429) with back-off; ours does not, so that every first answer
# counts: a drain that failed a request would hide behind slime's retry.
_REWARD_TIMEOUT_TOTAL_S = 120.0
_REWARD_TIMEOUT_CONNECT_S = 10.0
_REWARD_CONNECTIONS = 64
# Most requests per batch of the reward client (a rollout step's samples scored with
# asyncio.gather), and the arrivals of how many seconds one batch gathers: at 2 req/s and more a
# batch of 4 leaves every 2 s; at low rates single requests, so that a light phase of a scenario
# stays light (a batch of 4 every 32 s at 0.125 req/s would be a burst of 16 sequences the policy
# must provision for).
REWARD_BATCH = 4
REWARD_BATCH_WINDOW_S = 2.0


class KeepAliveLoad:
    """Open-loop ``/v1/grm/score`` load at ``rate(t)`` requests per second over one pooled client
    that keeps its connections alive, on an event loop of its own (a thread): the same interface
    as :class:`LoadGenerator` (start, stop, outcomes, in_flight, elapsed).

    ``client``: ``openai`` — ``AsyncOpenAI(base_url=URL/v1, max_retries=0)`` with its default
    pooled httpx client, the score request sent through ``client.post`` (the SDK's documented way to
    call an endpoint it has no method for); ``httpx`` — ``httpx.AsyncClient`` with its default pool
    (keep-alive, 5 s idle expiry); ``reward`` — slime-shaped (above), requests dispatched in batches
    of up to :data:`REWARD_BATCH` gathered together (:data:`REWARD_BATCH_WINDOW_S`). No client
    retries: every outcome is a first answer.
    ``url`` is the Service's base URL (``http://host:port``)."""

    def __init__(
        self,
        url: str,
        rate: Callable[[float], float],
        client: KeepAliveClient,
        *,
        body: Mapping[str, Any] | None = None,
        max_in_flight: int = 64,
        timeout_s: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.rate = rate
        self.client = client
        self.body = dict(body or SCORE_BODY)
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._in_flight = 0
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._prepared = threading.Event()
        self._go = threading.Event()
        self.t0 = 0.0

    def prepare(self) -> KeepAliveLoad:
        """Starts the client's thread and returns once its client exists (importing ``openai``
        alone takes seconds on a busy machine); the load begins at :meth:`go`."""
        # Imported here, in the caller's thread: two clients' threads importing openai and httpx at
        # once see each other's half-initialised modules.
        for module in _CLIENT_MODULES[self.client]:
            importlib.import_module(module)
        self._thread = threading.Thread(target=self._run, name=f"keepalive-{self.client}", daemon=True)
        self._thread.start()
        if not self._prepared.wait(120):
            raise RuntimeError(f"the {self.client} client did not start within 120 s")
        return self

    def go(self) -> KeepAliveLoad:
        """Begins the load (its clock starts now)."""
        self.t0 = time.monotonic()
        self._go.set()
        return self

    def start(self) -> KeepAliveLoad:
        """:meth:`prepare` then :meth:`go`."""
        return self.prepare().go()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def stop(self, drain_timeout_s: float = 90.0) -> list[Outcome]:
        """Stops sending, waits for the requests in flight (up to the timeout), closes the client
        and returns every outcome."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=drain_timeout_s + 15)
        return self.outcomes()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        send, close = await self._make_client()
        self._prepared.set()
        await asyncio.to_thread(self._go.wait)
        gate = asyncio.Semaphore(self.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()

        async def one(due: float) -> None:
            async with gate:
                status, error = await send()
            now = time.monotonic() - self.t0
            with self._lock:
                self._in_flight -= 1
                self._outcomes.append(Outcome(due, now - due, status, error[:300]))

        def launch(due: float) -> None:
            with self._lock:
                self._in_flight += 1
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:
            due = 0.0
            while not self._stop.is_set():
                rate = self.rate(due)
                if rate <= 0:
                    due += 0.2
                else:
                    batch = 1
                    if self.client == "reward":
                        batch = min(REWARD_BATCH, max(1, int(rate * REWARD_BATCH_WINDOW_S)))
                    for _ in range(batch):  # a batch's requests leave together (asyncio.gather)
                        launch(due)
                    due += batch / rate
                # In steps of at most 0.2 s, so that stop() is seen soon at low rates.
                while (wait := self.t0 + due - time.monotonic()) > 0 and not self._stop.is_set():
                    await asyncio.sleep(min(wait, 0.2))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await close()

    async def _make_client(self) -> tuple[_Send, _Close]:
        """(send one request → (status, error text), close the client)."""
        body = self.body
        if self.client == "openai":
            import openai

            api = openai.AsyncOpenAI(
                base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=self.timeout_s
            )

            async def send_openai() -> tuple[int, str]:
                try:
                    await api.post("/grm/score", cast_to=object, body=body)
                except openai.APIStatusError as exc:
                    return exc.status_code, str(exc)
                except openai.APIError as exc:  # connection errors, timeouts: no response
                    return 0, repr(exc)
                return 200, ""

            return send_openai, api.close
        if self.client == "httpx":
            import httpx

            pool = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s)

            async def send_httpx() -> tuple[int, str]:
                try:
                    response = await pool.post("/v1/grm/score", json=body)
                except httpx.HTTPError as exc:
                    return 0, repr(exc)
                return response.status_code, "" if response.status_code == 200 else response.text

            return send_httpx, pool.aclose
        import aiohttp

        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_REWARD_TIMEOUT_TOTAL_S, connect=_REWARD_TIMEOUT_CONNECT_S),
            connector=aiohttp.TCPConnector(limit=_REWARD_CONNECTIONS),
        )
        semaphore = asyncio.Semaphore(_REWARD_CONNECTIONS)

        async def send_reward() -> tuple[int, str]:
            async with semaphore:
                try:
                    async with session.post(f"{self.url}/v1/grm/score", json=body) as resp:
                        resp.raise_for_status()
                        await resp.json()
                        return resp.status, ""
                except aiohttp.ClientResponseError as exc:
                    return exc.status, str(exc)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    return 0, repr(exc)

        return send_reward, session.close


def keepalive_loads(
    url: str, rate: Callable[[float], float], *, max_in_flight: int = 64
) -> list[KeepAliveLoad]:
    """One :class:`KeepAliveLoad` per client users run (openai, httpx, reward), each at ``rate``."""
    return [KeepAliveLoad(url, rate, client, max_in_flight=max_in_flight) for client in KEEPALIVE_CLIENTS]


class ClientMix:
    """One Service's score load split evenly over a client that opens a connection per request
    (:class:`LoadGenerator`, urllib) and the keep-alive clients (openai, httpx, reward): the rate
    the scenario asks for, as a mix of the clients users run. Same interface as the loads, plus
    :meth:`by_client`, so a test can say which client saw a failure."""

    def __init__(self, url: str, rate: Callable[[float], float], *, max_in_flight: int = 64) -> None:
        share = 1 + len(KEEPALIVE_CLIENTS)

        def each(t: float) -> float:
            return rate(t) / share

        self.loads: dict[str, LoadGenerator | KeepAliveLoad] = {
            "urllib": LoadGenerator(f"{url.rstrip('/')}/v1/grm/score", each, max_in_flight=max_in_flight)
        }
        for client in KEEPALIVE_CLIENTS:
            self.loads[client] = KeepAliveLoad(url, each, client, max_in_flight=max_in_flight)
        self.t0 = 0.0

    def start(self) -> ClientMix:
        # The keep-alive clients are made first (seconds, for openai), then every load begins at once.
        keepalive = [load for load in self.loads.values() if isinstance(load, KeepAliveLoad)]
        for load in keepalive:
            load.prepare()
        self.t0 = time.monotonic()
        for load in keepalive:
            load.go()
        self.loads["urllib"].start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def in_flight(self) -> int:
        return sum(load.in_flight() for load in self.loads.values())

    def by_client(self) -> dict[str, list[Outcome]]:
        """Each client's outcomes, their ``sent`` relative to :meth:`start`."""
        out: dict[str, list[Outcome]] = {}
        for name, load in self.loads.items():
            shift = load.t0 - self.t0
            out[name] = [dataclasses.replace(o, sent=o.sent + shift) for o in load.outcomes()]
        return out

    def outcomes(self) -> list[Outcome]:
        return sorted((o for each in self.by_client().values() for o in each), key=lambda o: o.sent)

    def stop(self, drain_timeout_s: float = 90.0) -> list[Outcome]:
        for load in self.loads.values():
            load.stop(drain_timeout_s)
        return self.outcomes()


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile (nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(0.95 * len(ordered) + 0.5) - 1))]


def recent(outcomes: Sequence[Outcome], now: float, window_s: float) -> list[Outcome]:
    """The outcomes that finished within the last ``window_s`` seconds before ``now``."""
    return [o for o in outcomes if now - window_s <= o.sent + o.latency <= now]


def find_traces_dir(repo: Path) -> Path | None:
    """The directory of the Azure LLM-inference traces (Azure/AzurePublicDataset, 2023, committed
    with their sources in bench/traces/SOURCES.md); None when the checkout lacks it."""
    candidate = repo / "bench" / "traces"
    return candidate if candidate.is_dir() else None


def trace_rates(path: Path, *, start_s: float, span_s: float, buckets: int) -> list[float]:
    """Arrivals of the trace in ``[start_s, start_s + span_s)`` (seconds after its first request),
    counted into ``buckets`` equal bins, each divided by the bin's width: requests per second of
    trace time. The caller rescales the curve to the demo's duration and peak."""
    width = span_s / buckets
    counts = [0] * buckets
    first: datetime | None = None
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            stamp = datetime.fromisoformat(row["TIMESTAMP"][:26])
            first = first or stamp
            offset = (stamp - first).total_seconds() - start_s
            if offset >= span_s:
                break
            if offset >= 0:
                counts[int(offset // width)] += 1
    return [c / width for c in counts]


def rescaled(
    curve: Sequence[float], duration_s: float, peak_rps: float, floor_rps: float = 0.0
) -> Callable[[float], float]:
    """``curve`` stretched over ``duration_s`` and mapped linearly so that its minimum becomes
    ``floor_rps`` and its maximum ``peak_rps`` (a trace's minute-scale rate varies by less than 2×,
    e.g. 5.0–8.9 req/s in the conv trace's 20–40 min; the map keeps its shape but spans the range
    where the operator acts): a rate function for :class:`LoadGenerator`, 0 after the end."""
    low, high = min(curve), max(curve)
    span = (high - low) or 1.0
    scaled = [floor_rps + (peak_rps - floor_rps) * (c - low) / span for c in curve]
    step = duration_s / len(scaled)

    def rate(t: float) -> float:
        if t < 0 or t >= duration_s:
            return 0.0
        return scaled[min(len(scaled) - 1, int(t // step))]

    return rate


@dataclass
class Snapshot:
    """A GRMDeployment at one moment, as the demo shows it."""

    active: str | None = None
    ready: dict[str, int] = field(default_factory=dict)
    desired: dict[str, int] = field(default_factory=dict)
    switch: str | None = None
    conditions: dict[str, str] = field(default_factory=dict)
    observed: dict[str, Any] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    samples: int | None = None

    def gpus(self, per_replica: Mapping[str, int]) -> int:
        """GPUs held by ready pods."""
        return sum(n * per_replica.get(v, 1) for v, n in self.ready.items())

    def replicas_text(self) -> str:
        return " ".join(f"{v}={self.ready.get(v, 0)}/{self.desired.get(v, 0)}" for v in sorted(self.desired))


def snapshot(resource: Mapping[str, Any]) -> Snapshot:
    """The demo's view of one GRMDeployment object (as the API server returns it)."""
    status = resource.get("status") or {}
    snap = Snapshot(active=status.get("activeVariant"), samples=status.get("samples"))
    for variant in status.get("variants") or []:
        snap.ready[variant["name"]] = int(variant.get("readyReplicas", 0))
        snap.desired[variant["name"]] = int(variant.get("desiredReplicas", 0))
    switch = status.get("switch")
    if switch:
        snap.switch = f"{switch.get('from')}→{switch.get('to')} {switch.get('phase')}"
    for condition in status.get("conditions") or []:
        snap.conditions[condition["type"]] = condition["status"]
    snap.observed = dict(status.get("observed") or {})
    snap.decisions = list(status.get("decisions") or [])
    last = status.get("lastDecision")
    if last and last not in snap.decisions:
        snap.decisions.append(last)
    return snap


def decision_key(decision: Mapping[str, Any]) -> tuple[str, str, str]:
    """Identity of a decision, so one seen in two snapshots is shown once."""
    return (str(decision.get("time")), str(decision.get("action")), str(decision.get("reason")))
