"""The metrics-source interface: what the operator asks, and what every source answers.

A :class:`MetricsTarget` describes one GRMDeployment as Kubernetes sees it right now (its
variants, the Ready pods with their metrics URLs, the Pending pods); a source's
:meth:`MetricsSource.observe` turns it into a :class:`Reading` — one :class:`Signals` per
variant and one for the whole deployment — over a window ending at ``now``. Sources never raise
for missing data (that is a Reading with ``None`` signals); they raise :class:`MetricsError`
only when the backend itself failed (Prometheus unreachable, bad query), which the caller
reports as ``MetricsAvailable=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from grm_operator.policy.signals import Signals

__all__ = ["MetricsError", "MetricsSource", "MetricsTarget", "PodEndpoint", "Reading"]


class MetricsError(RuntimeError):
    """The metrics backend failed (unreachable, bad query, malformed answer)."""


@dataclass(frozen=True)
class PodEndpoint:
    """One Ready worker pod and where its ``/metrics`` is."""

    name: str
    variant: str
    metrics_url: str


@dataclass(frozen=True)
class MetricsTarget:
    """One GRMDeployment as the metrics sources see it."""

    namespace: str
    name: str
    variants: tuple[str, ...]
    pods: tuple[PodEndpoint, ...] = ()
    #: PromQL overrides by signal name (spec.metrics.queries).
    queries: Mapping[str, str] = field(default_factory=dict)
    #: The window the shadow verdict counts are read over (spec.precision.shadow.window); None:
    #: the metrics window.
    shadow_window_s: float | None = None

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Reading:
    """A window of signals: per variant (every variant of the target is present) and in total."""

    total: Signals
    variants: Mapping[str, Signals]
    #: Human-readable notes on what was missing or failed (e.g. "pod x: timeout"), for status.
    notes: tuple[str, ...] = ()


class MetricsSource(Protocol):
    """Anything that can observe a GRMDeployment's workers."""

    async def observe(self, target: MetricsTarget, window_s: float, now: float) -> Reading:
        """Signals of ``target`` over ``[now - window_s, now]``."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
