"""Feeds :class:`grm_operator.telemetry.deployment_metrics.FleetMetrics` from GRMDeployment watch events.

Every status the operator writes comes back as a watch event, so observing events is enough to
keep the per-GRMDeployment series (conditions, replicas per variant, GPU-seconds, SLO targets;
what the Helm chart's alerts and dashboard read) current, without touching any write path. The
handler only reads the event: no API call, no status write, no finalizer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from grm_operator.api.models import GROUP, PLURAL, VERSION
from grm_operator.handlers.context import OperatorContext
from grm_operator.telemetry.deployment_metrics import FleetMetrics

EventHandler = Callable[..., Awaitable[None]]


def event_handler(fleet: FleetMetrics) -> EventHandler:
    """The kopf event handler: observe each GRMDeployment body, forget deleted ones."""

    async def on_event(event: Mapping[str, Any], **_: Any) -> None:
        body = event.get("object") or {}
        meta = body.get("metadata") or {}
        if event.get("type") == "DELETED":
            fleet.forget(str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        elif meta.get("name"):
            fleet.observe(body)

    return on_event


def register(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    """Add the event handler; the series go to the operator's metrics registry."""
    fleet = FleetMetrics(ctx.metrics.registry)
    ctx.extras["fleet_metrics"] = fleet
    kopf.on.event(GROUP, VERSION, PLURAL, id="fleetMetrics", registry=registry)(event_handler(fleet))
