"""The variant-switch state machine (docs/autoscaling.md, "Variant switches"), pure: progress and
observations in, the next progress and what to apply out.

A switch from variant ``A`` to ``B`` never drops requests because the Service selects the
Ready pods of every variant:

1. **Surging** — ``B`` is scaled to the target replica count while ``A`` keeps serving. When at
   least ``target`` pods of ``B`` are Ready the switch moves on; when the switch timeout passes
   first it rolls back, and so it does at once when pods of ``B`` crash-loop while none of them is
   Ready (a variant vLLM refuses, e.g. a dtype its architecture rejects, fails within a minute at
   every start: waiting out a 10-minute timeout would only keep the GPUs it took, in a rolling
   switch the old variant's, away from serving). **Rolling** when maxGPUs cannot hold both variants
   at full size (a full GPU budget, or a cluster without a spare GPU): the old variant gives up its
   GPUs in batches as the new one gets Ready, like a Deployment's RollingUpdate with maxUnavailable
   25 %. Each tick the old variant keeps ⌊(maxGPUs − GPUs of Ready new replicas − batch) ÷ its GPUs
   per replica⌋ replicas (batch = max(¼ maxGPUs, one replica of either)), never fewer than one Ready
   replica while the new variant has none, and the new variant grows into what is left (at least one
   replica). Removed old pods drain as in step 2, so no request is dropped; capacity dips by at most
   a batch for a cold start. Example: maxGPUs 16 full with 8 bf16 replicas of 2 GPUs, fp8 (1 GPU)
   wanted at 16: bf16 8 → 6 and fp8 → 4; when those 4 are Ready, bf16 → 4 and fp8 → 8; … 4 cold
   starts later fp8 serves with 16. Without rolling the surge would be one replica beyond the budget
   (Pending on a full cluster until the switch timeout rolls back), and the drain would leave that
   one replica alone with the load.
2. **Draining** — ``B`` is the active variant; ``A`` is scaled to 0 and its pods drain
   (preStop hook, then the engine's graceful shutdown, ``rollout.drainSeconds``). The switch is
   complete when ``A`` has no pods left, or after drainSeconds plus a 60 s margin (a pod stuck
   terminating must not block the autoscaler forever).
3. **RollingBack** — ``B`` did not get Ready in time, or crash-loops: it is scaled to 0 and
   marked unhealthy for ``rollout.unhealthyBackoff``; ``A`` stays active. Complete when ``B`` has no pods.

The whole state is :class:`Switch` (kept in ``status.switch``, times as RFC 3339 there), so a
restarted operator calls :func:`advance` with what it reads and continues: a Surging switch
whose timeout passed while the operator was down rolls back, one whose pods became Ready moves
to Draining. Example: timeout 10 m, switch started at 12:00:00, operator down from 12:03 to
12:12 — the first tick at 12:12 sees 1 of 2 Ready pods of ``B`` and rolls back.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from grm_operator.api.models import SwitchProgress

__all__ = [
    "CRASH_LOOP_RESTARTS",
    "DRAIN_MARGIN_S",
    "GPUBudget",
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
# A pod whose container restarted this often without getting Ready crash-loops: 3 failed starts in
# a row are a property of the variant (its image, dtype, model or startup budget), where one
# restart may be a node's hiccup. With the kubelet's backoff (10 s, 20 s) and a load that fails
# within a minute, a switch to such a variant rolls back ~2–3 minutes after it began.
CRASH_LOOP_RESTARTS = 2


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
    """One variant Deployment as read: pods that exist, pods that are Ready, pods the scheduler
    has not placed (no GPU free), the Deployment's desired replicas (None: unknown, taken as
    ``replicas``) and pods that crash-loop (not Ready, a container restarted
    :data:`CRASH_LOOP_RESTARTS` times)."""

    replicas: int = 0
    ready: int = 0
    pending: int = 0
    desired: int | None = None
    crashing: int = 0


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


def start(
    from_variant: str, to_variant: str, target_replicas: int, now: float, why: str, surge: int | None = None
) -> Step:
    """Begin a switch to ``target_replicas`` (at least 1) of ``to_variant``, starting ``surge`` of
    them now (default: all; fewer when the GPU budget is full and the switch rolls)."""
    target = max(1, target_replicas)
    first = target if surge is None else min(max(1, surge), target)
    switch = Switch(from_variant, to_variant, now, target, "Surging")
    return Step(
        switch=switch,
        outcome="InProgress",
        active=from_variant,
        replicas={to_variant: first},
        reason="SwitchStarted",
        message=f"Switching {from_variant} → {to_variant}: starting {first} of {target} replica(s) of "
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
    budget: GPUBudget | None = None,
) -> Step:
    """The next step of ``switch`` given the variant Deployments ``observed`` at ``now``.

    ``variants`` are the names the spec still lists: a switch whose target was removed from the
    spec rolls back at once; one whose source was removed completes (nothing to return to).
    ``budget`` is maxGPUs and the GPUs per replica of both variants: with it a switch that does
    not fit at full size rolls (module doc); without it the new variant surges at full size.
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
        if new.crashing > 0 and new.ready == 0:
            why = (
                f"{new.crashing} {b} pod(s) crash-loop (restarted {CRASH_LOOP_RESTARTS}+ times without "
                f"getting Ready) and none is Ready, {elapsed:.0f}s into the switch"
            )
            return _rolling_back(switch, now, backoff_s=backoff_s, why=why)
        if elapsed > timeout_s and budget is not None and new.ready > 0:
            # A rolling switch hands GPUs over one cold start at a time: replicas that got Ready
            # prove the variant works, and rolling back would drop them with the old variant
            # already shrunk. Finish with what is Ready; the policy scales it from there.
            return _draining(
                switch,
                f"the {timeout_s:.0f}s switch timeout passed with {new.ready}/{switch.target_replicas} "
                f"{b} replicas Ready; finishing with those",
            )
        if elapsed > timeout_s:
            why = (
                f"only {new.ready}/{switch.target_replicas} {b} replicas became Ready within the "
                f"{timeout_s:.0f}s switch timeout"
            )
            return _rolling_back(switch, now, backoff_s=backoff_s, why=why)
        if budget is not None:
            return _rolling(switch, old, new, budget)
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


@dataclass(frozen=True)
class GPUBudget:
    """maxGPUs and the GPUs one replica of the switch's old and new variant takes."""

    max_gpus: int
    old_gpus: int
    new_gpus: int

    @property
    def batch(self) -> int:
        """GPUs handed from the old variant to the new one per cold start: a quarter of the budget
        (Kubernetes' default maxUnavailable 25 %), at least one replica of either variant."""
        return max(math.ceil(self.max_gpus / 4), self.old_gpus, self.new_gpus)


def _rolling(switch: Switch, old: Observed, new: Observed, budget: GPUBudget) -> Step:
    """Surging within the budget: the old variant keeps what fits next to the new one's Ready
    replicas and one batch, and the new one grows into the rest. Stateless (a function of what
    is Ready), so a restarted operator, or a tick that sees freed GPUs still held by draining
    pods, computes the same targets."""
    a, b = switch.from_variant, switch.to_variant
    desired = old.replicas if old.desired is None else old.desired
    ready_gpus = new.ready * budget.new_gpus
    fits = (budget.max_gpus - ready_gpus - budget.batch) // budget.old_gpus
    if desired * budget.old_gpus + switch.target_replicas * budget.new_gpus <= budget.max_gpus:
        fits = desired  # both fit at full size: a plain surge
    keep = 1 if new.ready == 0 and old.ready > 0 else 0
    old_target = min(desired, max(fits, keep, 0))
    room = (budget.max_gpus - old_target * budget.old_gpus) // budget.new_gpus
    new_target = max(1, min(switch.target_replicas, room))
    replicas = {b: new_target}
    if old_target >= desired:
        return Step(switch=switch, outcome="InProgress", active=a, replicas=replicas)
    serving = max(old.ready - (desired - old_target), 0) + new.ready
    return Step(
        switch=switch,
        outcome="InProgress",
        active=a,
        replicas={**replicas, a: old_target},
        reason="SwitchRolling",
        message=f"Switch {a} → {b} rolls within maxGPUs {budget.max_gpus}: {new.ready}/"
        f"{switch.target_replicas} {b} Ready; {a} {desired} → {old_target} (its pods drain), {b} → "
        f"{new_target}; {serving} Ready replica(s) keep serving",
    )


def _draining(switch: Switch, why: str) -> Step:
    a, b = switch.from_variant, switch.to_variant
    return Step(
        switch=Switch(a, b, switch.started, switch.target_replicas, "Draining"),
        outcome="InProgress",
        active=b,
        replicas={a: 0},
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
