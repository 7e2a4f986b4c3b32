"""The metadata of every child object: names, labels, the owner reference, the applied hash.

The operator finds, selects and skips writing its children through these: the Service and PDB
select worker pods by :func:`selector_labels`, the reconciler's watches select children by
:data:`LABEL_MANAGED_BY`, and a child whose stored :data:`ANNOTATION_APPLIED_HASH` matches the
built one is not written again (:func:`applied_hash`, :func:`stamp`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grm_operator.api.models import API_VERSION, KIND, GRMDeployment

Manifest = dict[str, Any]

# Names of labels and annotations (the operator's selectors depend on them).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = "grm.dev/deployment"
LABEL_VARIANT = "grm.dev/variant"
WORKER_APP = "grm-worker"
MANAGED_BY = "grm-operator"
ANNOTATION_CONFIG_HASH = "grm.dev/config-hash"
ANNOTATION_APPLIED_HASH = "grm.dev/applied-hash"


@dataclass(frozen=True)
class Owner:
    """The parent GRMDeployment as its children refer to it."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, grmd: GRMDeployment) -> Owner:
        meta = grmd.metadata
        if not meta.uid or not meta.namespace:
            raise ValueError(
                f"GRMDeployment {meta.name} has no uid/namespace yet (not stored by the API server)"
            )
        return cls(name=meta.name, namespace=meta.namespace, uid=meta.uid)

    def reference(self) -> Manifest:
        """A controller owner reference: garbage collection deletes the child with its parent, and
        blockOwnerDeletion keeps a foreground deletion of the parent waiting for it."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def deployment_name(name: str, variant: str) -> str:
    """``<name>-<variant>``: the worker Deployment of one variant."""
    return f"{name}-{variant}"


def reference_service_name(name: str) -> str:
    """``<name>-reference``: the Service of the reference variant's pods (shadow scoring)."""
    return f"{name}-reference"


def admin_token_secret_name(name: str) -> str:
    """``<name>-admin-token``: the Secret with the bearer token of the workers' admin API."""
    return f"{name}-admin-token"


def config_map_name(name: str, variant: str) -> str:
    """``<name>-<variant>-config``: the worker config of one variant."""
    return f"{name}-{variant}-config"


def selector_labels(name: str) -> dict[str, str]:
    """Labels every worker pod of the GRMDeployment has: the Service's and the PDB's selector."""
    return {LABEL_NAME: WORKER_APP, LABEL_DEPLOYMENT: name}


def selector_string(name: str) -> str:
    """:func:`selector_labels` as a label-selector string (status.selector, the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def common_labels(name: str, component: str) -> dict[str, str]:
    """Labels of every child object."""
    return {
        LABEL_NAME: WORKER_APP,
        LABEL_INSTANCE: name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_DEPLOYMENT: name,
    }


def content_hash(data: Any) -> str:
    """A short stable hash of JSON-able data (sorted keys): 16 hex digits of SHA-256."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def applied_hash(manifest: Manifest) -> str:
    """The hash of what the operator applies, ignoring spec.replicas (the policy changes replicas
    on its own; comparing them separately keeps a scale from looking like a template change)."""
    spec = (
        {k: v for k, v in manifest.get("spec", {}).items() if k != "replicas"} if "spec" in manifest else None
    )
    meta = dict(manifest["metadata"])
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != ANNOTATION_APPLIED_HASH}
    meta["annotations"] = annotations
    body = {k: v for k, v in manifest.items() if k not in ("spec", "metadata")}
    return content_hash({"metadata": meta, "spec": spec, "rest": body})


def stamp(manifest: Manifest) -> Manifest:
    """The manifest with its :data:`ANNOTATION_APPLIED_HASH` set."""
    manifest["metadata"].setdefault("annotations", {})[ANNOTATION_APPLIED_HASH] = applied_hash(manifest)
    return manifest


def child_metadata(
    owner: Owner, name: str, component: str, extra_labels: Mapping[str, str] | None = None
) -> Manifest:
    """The metadata of a child: its name, the common labels (plus ``extra_labels``), an empty
    annotation map for :func:`stamp`, and the controller owner reference."""
    labels = common_labels(owner.name, component)
    labels.update(extra_labels or {})
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "annotations": {},
        "ownerReferences": [owner.reference()],
    }
