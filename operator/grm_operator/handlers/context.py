"""What the handler modules of one operator process share: settings, API client, metrics, the
reconciler (with its store of watched objects), and room for a later module's own state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grm_operator.handlers.reconcile import Reconciler
from grm_operator.kubeapi import KubeClient
from grm_operator.settings import OperatorSettings
from grm_operator.telemetry.operator_metrics import OperatorMetrics


@dataclass
class OperatorContext:
    """Shared by every ``register(registry, ctx)`` of :data:`grm_operator.handlers.runtime.HANDLER_MODULES`.

    ``reconciler.store`` holds the newest GRMDeployments and managed children seen; a module that
    writes through ``kube`` should put the API's response into the store (``store.put_child``,
    ``store.put_parent``) so that the reconciler does not re-apply what it already sees.
    ``extras`` is for a module's own process-wide state (e.g. the autoscaler's metric sources).
    """

    settings: OperatorSettings
    connection_info: Any  # kopf.ConnectionInfo
    kube: KubeClient
    metrics: OperatorMetrics
    reconciler: Reconciler
    extras: dict[str, Any] = field(default_factory=dict)
