"""Kopf's peering resources, as data: what HA operator replicas need installed.

With ``GRM_PEERING_NAME`` set, every replica writes a keep-alive into a peering object of that
name and only the live replica with the highest ``GRM_PRIORITY`` processes events; the others
pause (kopf's leader election). Cluster-wide operators use a ``ClusterKopfPeering``, operators
restricted to namespaces a ``KopfPeering`` in each watched namespace. The Helm chart renders
:func:`crds` and :func:`peering_object`; the peering integration test installs the same.
A replica that stops gracefully removes itself from the object, so a standby takes over at
once; one that dies is presumed dead after kopf's peering lifetime (60 s).
"""

from __future__ import annotations

from typing import Any

GROUP = "kopf.dev"
VERSION = "v1"


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    free = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    # The status holds one entry per replica: {identity: {priority, lastseen, lifetime}}.
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"status": free}}},
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    """The ClusterKopfPeering and KopfPeering CRDs (as in kopf's documentation)."""
    return [
        _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        _crd("KopfPeering", "kopfpeerings", "Namespaced"),
    ]


def peering_object(name: str, namespace: str | None = None) -> dict[str, Any]:
    """The peering object replicas share: a KopfPeering in ``namespace``, else cluster-wide."""
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KopfPeering" if namespace is not None else "ClusterKopfPeering",
        "metadata": meta,
    }
