"""The children that span every variant of a GRMDeployment: the Service ``<name>`` clients
connect to (a variant switch never changes where), and the PodDisruptionBudget and PodMonitor
that select the same worker pods; and the Service ``<name>-reference`` of the reference
variant's pods alone, which the other variants' workers shadow score requests to.
"""

from __future__ import annotations

from collections.abc import Mapping

from grm_operator.control.builders.layout import HTTP_PORT
from grm_operator.control.builders.metadata import (
    LABEL_DEPLOYMENT,
    LABEL_VARIANT,
    Manifest,
    Owner,
    child_metadata,
    reference_service_name,
    selector_labels,
    stamp,
)


def build_service(owner: Owner) -> Manifest:
    """The Service ``<name>``: every ready worker pod of the GRMDeployment, all variants."""
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": child_metadata(owner, owner.name, "service"),
            "spec": {
                "type": "ClusterIP",
                "selector": selector_labels(owner.name),
                "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )


def build_reference_service(owner: Owner, reference: str) -> Manifest:
    """The Service ``<name>-reference``: the Ready worker pods of the reference variant (the first
    in spec.variants) only. The other variants' workers re-score a sample of their score
    requests there (spec.precision.shadow); with no Ready reference pod it has no endpoints and
    the workers keep their samples to replay later."""
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": child_metadata(owner, reference_service_name(owner.name), "reference-service"),
            "spec": {
                "type": "ClusterIP",
                "selector": {**selector_labels(owner.name), LABEL_VARIANT: reference},
                "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )


def build_pdb(owner: Owner) -> Manifest:
    """At most one worker pod of the GRMDeployment voluntarily disrupted at a time; pods that are
    not Ready never block a node drain (AlwaysAllow)."""
    return stamp(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": child_metadata(owner, owner.name, "disruption-budget"),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels(owner.name)},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )


def build_pod_monitor(owner: Owner, extra_labels: Mapping[str, str] | None = None) -> Manifest:
    """A Prometheus Operator PodMonitor scraping every worker's /metrics every 15 s.

    ``extra_labels`` (the installation's ``GRM_PODMONITOR_LABELS``) are what a Prometheus'
    ``podMonitorSelector`` matches, e.g. kube-prometheus-stack's ``release: <release>``; without
    them such a Prometheus ignores the PodMonitor. The operator's own labels win over them.
    """
    metadata = child_metadata(owner, owner.name, "monitoring")
    metadata["labels"] = {**(extra_labels or {}), **metadata["labels"]}
    return stamp(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": metadata,
            "spec": {
                "selector": {"matchLabels": selector_labels(owner.name)},
                # Copied onto every series as grm_dev_deployment / grm_dev_variant: the
                # Prometheus metrics source selects and groups by them (docs/metrics.md).
                "podTargetLabels": [LABEL_DEPLOYMENT, LABEL_VARIANT],
                "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
            },
        }
    )
