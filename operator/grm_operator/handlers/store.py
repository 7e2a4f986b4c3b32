"""The store: the newest body of every GRMDeployment and managed child the operator has seen.

Watch events fill it (:meth:`grm_operator.handlers.reconcile.Reconciler.observe_parent`,
``observe_child``), a LIST per child kind primes it at start-up, and the operator's own writes go
into it at once (write-through), so a reconcile reads the store instead of the API server.
Children are filed under their GRMDeployment by the ``grm.dev/deployment`` label. A body older
than the one stored (by resourceVersion) never replaces it: a late watch event cannot undo the
response of a later write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grm_operator.control.builders.metadata import LABEL_DEPLOYMENT
from grm_operator.kubeapi import Body

Key = tuple[str, str]  # (namespace, name)


def key_of(body: Mapping[str, Any]) -> Key:
    """``(namespace, name)`` of an object's body."""
    meta = body.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _rv(body: Mapping[str, Any]) -> int | None:
    text = (body.get("metadata") or {}).get("resourceVersion")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _newer_or_equal(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether ``candidate`` is at least as new as ``current``.

    resourceVersions are opaque by contract but etcd's are increasing integers; comparing them
    keeps a late watch event from replacing the response of our own later write. When either is
    not an integer the candidate wins (the last event is the newest one kopf saw).
    """
    if current is None:
        return True
    new, old = _rv(candidate), _rv(current)
    return new is None or old is None or new >= old


@dataclass
class Store:
    """The newest body of every GRMDeployment and managed child the operator has seen."""

    parents: dict[Key, Body] = field(default_factory=dict)
    # kind -> (namespace, parent name) -> child name -> body
    children: dict[str, dict[Key, dict[str, Body]]] = field(default_factory=dict)

    def put_parent(self, body: Body) -> bool:
        """Store a GRMDeployment's body; False (and nothing stored) when the stored one is newer."""
        key = key_of(body)
        if not _newer_or_equal(body, self.parents.get(key)):
            return False
        self.parents[key] = body
        return True

    def drop_parent(self, key: Key) -> None:
        """Forget a deleted GRMDeployment."""
        self.parents.pop(key, None)

    def _slot(self, kind: str, body: Mapping[str, Any]) -> tuple[dict[str, Body], str] | None:
        meta = body.get("metadata") or {}
        parent = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
        if not parent:
            return None
        by_parent = self.children.setdefault(kind, {})
        return by_parent.setdefault((str(meta.get("namespace", "")), str(parent)), {}), str(meta.get("name"))

    def put_child(self, body: Body) -> bool:
        """Store a child's body under its GRMDeployment; False (and nothing stored) when it has no
        ``grm.dev/deployment`` label or the stored one is newer."""
        slot = self._slot(str(body.get("kind")), body)
        if slot is None:
            return False
        objects, name = slot
        if not _newer_or_equal(body, objects.get(name)):
            return False
        objects[name] = body
        return True

    def drop_child(self, kind: str, body: Mapping[str, Any]) -> None:
        """Forget a deleted child, unless the stored body is newer than the deletion's."""
        slot = self._slot(kind, body)
        if slot is not None:
            objects, name = slot
            current = objects.get(name)
            if current is not None and _newer_or_equal(body, current):
                del objects[name]

    def child(self, kind: str, namespace: str, name: str, parent: str) -> Body | None:
        """The stored child ``name`` of GRMDeployment ``parent``, if any."""
        return self.children.get(kind, {}).get((namespace, parent), {}).get(name)

    def children_of(self, kind: str, key: Key) -> list[Body]:
        """Every stored child of one kind of the GRMDeployment ``key``."""
        return list(self.children.get(kind, {}).get(key, {}).values())
