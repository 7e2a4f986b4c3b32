"""What a controller says and sees on each tick of the fleet simulation: the contract between
:class:`grm_operator.simulator.fleet.Fleet` and every policy of :mod:`grm_operator.simulator.policies`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from grm_operator.policy.types import Observation

if TYPE_CHECKING:
    # Only for the type of Controller.start's argument: the fleet imports this module.
    from grm_operator.simulator.fleet import Fleet


@dataclass(frozen=True)
class Command:
    """What a controller wants: variant, replicas and sample budget. With ``scale`` (replicas per
    variant, as the operator's actuation sets the variant Deployments) the fleet applies exactly
    that and takes ``variant`` as the active one; without it a new variant is surged and the old
    one drained once it is Ready (the baselines' simple switch)."""

    variant: str
    replicas: int
    samples: int
    scale: Mapping[str, int] | None = None


@dataclass
class FleetView:
    """What a controller may look at on a tick."""

    now: float
    observation: Observation
    #: Sequences in flight (running + queued) over Ready replicas, measured now (KPA's metric).
    concurrency: float


class Controller(Protocol):
    """A scaling policy driven by the simulator."""

    name: str
    period_s: float

    def start(self, fleet: Fleet) -> Command:
        """The fleet at time 0 (its replicas are Ready at once)."""
        ...

    def tick(self, view: FleetView) -> Command:
        """The command for this control period."""
        ...
