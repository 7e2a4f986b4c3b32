"""The fault proxy's plan: which requests get a fault and what it is — `FaultRule`s matched on
method, path and query, each firing at most N times and/or with a probability (seeded, so a run
repeats), adding latency and/or answering an error status, and the Kubernetes `Status` body
such an answer carries (`status_body`). Pure and thread-safe, unit-tested alone; the proxy that
consults it for each request is `faultproxy`.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

# Kubernetes `Status.reason` for the codes a test is likely to inject.
_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class FaultRule:
    """Inject a fault into the requests that match.

    `method` (None: any) and the regular expressions `path` and `query` (searched in the
    request path and raw query string) select requests. A matching rule fires with
    `probability`, at most `times` times (None: without limit). When it fires it adds
    `latency_s` before the request goes on, and if `status` is set, the proxy answers that
    status (with a Kubernetes Status body and `message`) instead of forwarding.
    """

    method: str | None = None
    path: str = ""
    query: str = ""
    status: int | None = None
    latency_s: float = 0.0
    times: int | None = None
    probability: float = 1.0
    message: str = "injected by the fault proxy"
    # How often this rule has fired.
    fired: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability} not in [0, 1]")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0")
        if self.latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"status {self.status} is not an error status")
        self._path_re = re.compile(self.path)
        self._query_re = re.compile(self.query)

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return bool(self._path_re.search(path)) and bool(self._query_re.search(query))

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


@dataclass(frozen=True)
class Decision:
    """What to do with one request: wait `latency_s`, then answer `status` or forward."""

    latency_s: float = 0.0
    status: int | None = None
    message: str = ""

    @property
    def injected(self) -> bool:
        return self.status is not None or self.latency_s > 0


class FaultPlan:
    """The rules and the seeded randomness that decide each request; pure and thread-safe."""

    def __init__(self, rules: Iterable[FaultRule] = (), seed: int = 0) -> None:
        self._rules = list(rules)
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def decide(self, method: str, path: str, query: str) -> Decision:
        """Latencies of all firing rules add up; the first firing rule with a status answers."""
        latency = 0.0
        with self._lock:
            for rule in self._rules:
                if rule.exhausted or not rule.matches(method, path, query):
                    continue
                # Draw only for rules that can fire, so a seed gives the same sequence of
                # decisions whatever unrelated traffic passes.
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                rule.fired += 1
                latency += rule.latency_s
                if rule.status is not None:
                    return Decision(latency_s=latency, status=rule.status, message=rule.message)
        return Decision(latency_s=latency)


def status_body(code: int, message: str, method: str, path: str) -> dict[str, object]:
    """A `meta/v1 Status` failure as the API server itself would answer it."""
    reason = _REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")
    text = f"{message} ({method} {path})"
    if code == 409:
        # The wording of a real optimistic-concurrency conflict, for clients that inspect it.
        text = (
            f"Operation cannot be fulfilled on {path}: the object has been modified; please apply "
            f"your changes to the latest version and try again ({message})"
        )
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": text,
        "reason": reason,
        "code": code,
    }
