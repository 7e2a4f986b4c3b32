"""The variant-switch state machine (DESIGN §4), pure: progress and observations in, the next
progress and what to apply out.

A switch from variant ``A`` to ``B`` never drops requests because the Service selects the
Ready pods of every variant:

1. **Surging** — ``B`` is scaled to the target replica count while ``A`` keeps serving.
   When at least ``target`` pods of ``B`` are Ready the switch moves on; when the switch
   timeout passes first it rolls back.
2. **Draining** — ``B`` is the active variant; ``A`` is scaled to 0 and its pods drain
   (preStop hook, then the engine's graceful shutdown, ``rollout.drainSeconds``). The switch is
   complete when ``A`` has no pods left, or after drainSeconds plus a 60 s margin (a pod stuck
   terminating must not block the autoscaler forever).
3. **RollingBack** — ``B`` did not get Ready in time: it is scaled to 0 and marked unhealthy
   for ``rollout.unhealthyBackoff``; ``A`` stays active. Complete when ``B`` has no pods.

The whole state is :class:`Switch` (kept in ``status.switch``, times as RFC 3339 there), so a
restarted operator calls :func:`advance` with what it reads and continues: a Surging switch
whose timeout passed while the operator was down rolls back, one whose pods became Ready moves
to Draining. Example: timeout 10 m, switch started at 12:00:00, operator down from 12:03 to
12:12 — the first tick at 12:12 sees 1 of 2 Ready pods of ``B`` and rolls back.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from grm_operator.api.models import SwitchProgress

__all__ = [
    "DRAIN_MARGIN_S",
    "Observed",
    "Outcome",
    "Phase",
    "Step",
    "Switch",
    "advance",
    "from_rfc3339",
    "start",
    "to_rfc3339",
]

Phase = Literal["Surging", "Draining", "RollingBack"]
Outcome = Literal["InProgress", "Completed", "RolledBack"]

# Beyond drainSeconds, time for the kubelet to deliver SIGTERM and the container to exit.
DRAIN_MARGIN_S = 60.0


def to_rfc3339(t: float) -> str:
    """Epoch seconds as an RFC 3339 UTC timestamp (second precision, as Kubernetes writes)."""
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_rfc3339(text: str) -> float:
    """An RFC 3339 timestamp as epoch seconds."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Switch:
    """A switch in progress. ``started`` is when it began (epoch seconds)."""

    from_variant: str
    to_variant: str
    started: float
    target_replicas: int
    phase: Phase

    def to_status(self) -> SwitchProgress:
        """The ``status.switch`` form."""
        return SwitchProgress.model_validate(
            {
                "from": self.from_variant,
                "to": self.to_variant,
                "started": to_rfc3339(self.started),
                "targetReplicas": self.target_replicas,
                "phase": self.phase,
            }
        )

    @classmethod
    def from_status(cls, progress: SwitchProgress) -> Switch:
        """Read back a ``status.switch``."""
        return cls(
            from_variant=progress.from_variant,
            to_variant=progress.to_variant,
            started=from_rfc3339(progress.started),
            target_replicas=progress.target_replicas,
            phase=progress.phase,
        )


@dataclass(frozen=True)
class Observed:
    """One variant Deployment as read: pods that exist and pods that are Ready."""

    replicas: int = 0
    ready: int = 0


@dataclass(frozen=True)
class Step:
    """What to do now.

    ``replicas`` are the replica counts to set on variant Deployments (only those the switch
    controls); ``active`` is the variant serving traffic after this step; ``unhealthy`` maps a
    variant to the epoch second until which it must not be tried; ``message`` says what
    happened in a sentence, for an Event (empty when nothing changed).
    """

    switch: Switch | None
    outcome: Outcome
    active: str
    replicas: Mapping[str, int] = field(default_factory=dict)
    unhealthy: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""
    message: str = ""


def start(from_variant: str, to_variant: str, target_replicas: int, now: float, why: str) -> Step:
    """Begin a switch: surge ``to_variant`` to ``target_replicas`` (at least 1)."""
    target = max(1, target_replicas)
    switch = Switch(from_variant, to_variant, now, target, "Surging")
    return Step(
        switch=switch,
        outcome="InProgress",
        active=from_variant,
        replicas={to_variant: target},
        reason="SwitchStarted",
        message=f"Switching {from_variant} → {to_variant}: starting {target} replica(s) of "
        f"{to_variant} while {from_variant} keeps serving, because {why}",
    )


def advance(
    switch: Switch,
    observed: Mapping[str, Observed],
    now: float,
    *,
    timeout_s: float,
    drain_s: float,
    backoff_s: float,
    variants: frozenset[str] | None = None,
) -> Step:
    """The next step of ``switch`` given the variant Deployments ``observed`` at ``now``.

    ``variants`` are the names the spec still lists: a switch whose target was removed from the
    spec rolls back at once; one whose source was removed completes (nothing to return to).
    """
    a, b = switch.from_variant, switch.to_variant
    new = observed.get(b, Observed())
    old = observed.get(a, Observed())
    elapsed = now - switch.started
    if switch.phase == "Surging":
        if variants is not None and a not in variants:
            return _draining(switch, f"{a} was removed from the spec")
        if variants is not None and b not in variants:
            return _rolling_back(switch, now, backoff_s=0.0, why=f"{b} was removed from the spec")
        if new.ready >= switch.target_replicas:
            return _draining(switch, f"{new.ready}/{switch.target_replicas} {b} replicas are Ready")
        if elapsed > timeout_s:
            why = (
                f"only {new.ready}/{switch.target_replicas} {b} replicas became Ready within the "
                f"{timeout_s:.0f}s switch timeout"
            )
            return _rolling_back(switch, now, backoff_s=backoff_s, why=why)
        return Step(switch=switch, outcome="InProgress", active=a, replicas={b: switch.target_replicas})
    if switch.phase == "Draining":
        # drain_s counts from the moment the old pods were told to stop; the record of that is
        # the Surging end, which is not stored, so the bound is measured from the switch start
        # plus the longest Surging could have taken.
        if old.replicas == 0 or elapsed > timeout_s + drain_s + DRAIN_MARGIN_S:
            left = "" if old.replicas == 0 else f" ({old.replicas} pod(s) still terminating)"
            return Step(
                switch=None,
                outcome="Completed",
                active=b,
                replicas={a: 0},
                reason="SwitchCompleted",
                message=f"Switched {a} → {b}: {a} drained{left}",
            )
        return Step(switch=switch, outcome="InProgress", active=b, replicas={a: 0})
    # RollingBack
    if new.replicas == 0:
        return Step(
            switch=None,
            outcome="RolledBack",
            active=a,
            replicas={b: 0},
            reason="SwitchRolledBack",
            message=f"Switch {a} → {b} rolled back: {b} has no pods left, {a} keeps serving",
        )
    return Step(switch=switch, outcome="InProgress", active=a, replicas={b: 0})


def _draining(switch: Switch, why: str) -> Step:
    a, b = switch.from_variant, switch.to_variant
    return Step(
        switch=Switch(a, b, switch.started, switch.target_replicas, "Draining"),
        outcome="InProgress",
        active=b,
        replicas={a: 0, b: switch.target_replicas},
        reason="SwitchDraining",
        message=f"Switch {a} → {b}: {why}; {b} now serves and {a} is draining",
    )


def _rolling_back(switch: Switch, now: float, *, backoff_s: float, why: str) -> Step:
    a, b = switch.from_variant, switch.to_variant
    unhealthy = {b: now + backoff_s} if backoff_s > 0 else {}
    marked = f"; {b} is not tried again for {backoff_s:.0f}s" if backoff_s > 0 else ""
    return Step(
        switch=Switch(a, b, switch.started, switch.target_replicas, "RollingBack"),
        outcome="InProgress",
        active=a,
        replicas={b: 0},
        unhealthy=unhealthy,
        reason="SwitchRollingBack",
        message=f"Rolling back switch {a} → {b}: {why}{marked}",
    )
