"""Client traffic against a GRMDeployment's Service, and what the operator made of it.

Used by the live demo (`grm-operator live-demo`) and the e2e tests: :class:`LoadGenerator` sends
``/v1/grm/score`` requests open-loop at a rate that may change over time (arrivals spaced
``1/rate`` apart, so a slow server cannot slow the offered load) and records every request's
outcome, so a test can count them and assert that none failed; :func:`trace_rates` turns a slice of
an Azure LLM-inference trace into a per-second arrival-rate curve; :func:`snapshot` reads a
GRMDeployment's status into the few numbers the demo prints (replicas per variant, SLO and metrics
conditions, observed p95s, the decisions with their reasons).
"""

from __future__ import annotations

import csv
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

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
    """The directory holding the Azure LLM-inference traces (``AzureLLMInferenceTrace_*.csv`` of
    Azure/AzurePublicDataset, docs/benchmark.md), if there is one: ``../shared/traces`` beside
    the repository, else /work/shared/traces; None when neither exists."""
    for candidate in (repo.parent / "shared" / "traces", Path("/work/shared/traces")):
        if candidate.is_dir():
            return candidate
    return None


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
