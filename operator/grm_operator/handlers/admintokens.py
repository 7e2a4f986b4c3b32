"""The admin tokens the operator holds: each GRMDeployment's worker admin token, read or created
through the API server once and then served from memory.

:meth:`AdminTokens.ensure` (the reconciler, before any worker Deployment) reads the Secret
``<name>-admin-token`` and creates it with a new random token when it does not exist
(:mod:`grm_operator.control.admintoken`); :meth:`AdminTokens.token` (the autoscaler, before it
pushes a sample budget) reads it without creating. RBAC: ``get`` and ``create`` on Secrets, no
``list``/``watch`` (the operator never caches the cluster's other Secrets). A Secret of that name
that this GRMDeployment does not own, or without a usable token, is an error the reconcile
reports (Degraded) rather than a token the operator would trust. :meth:`AdminTokens.forget` drops
a cached token (a worker answered 401: the Secret was replaced by hand), so the next use reads it
again. No token value is ever logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from grm_operator import kubeapi
from grm_operator.control.admintoken import admin_token_secret, new_token, token_of
from grm_operator.control.builders.metadata import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Owner,
    admin_token_secret_name,
)
from grm_operator.kubeapi import Conflict, KubeClient, KubeError

__all__ = ["AdminTokenError", "AdminTokens"]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, GRMDeployment name)


class AdminTokenError(KubeError):
    """The admin token Secret exists but cannot be used (another owner, no token in it)."""

    def __init__(self, message: str) -> None:
        super().__init__(409, "AdminTokenUnusable", message)


def _owned_by(secret: Mapping[str, Any], uid: str) -> bool:
    meta = secret.get("metadata") or {}
    labels = meta.get("labels") or {}
    refs = meta.get("ownerReferences") or []
    return labels.get(LABEL_MANAGED_BY) == MANAGED_BY and any(r.get("uid") == uid for r in refs)


class AdminTokens:
    """Tokens by GRMDeployment, each with the uid of the GRMDeployment it belongs to (a
    GRMDeployment deleted and created again under the same name has a new Secret)."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._tokens: dict[Key, tuple[str, str]] = {}  # key -> (owner uid, token)

    def _usable(self, secret: Mapping[str, Any], owner: Owner) -> str:
        name = admin_token_secret_name(owner.name)
        if not _owned_by(secret, owner.uid):
            raise AdminTokenError(
                f"Secret {owner.namespace}/{name} exists and is not owned by GRMDeployment {owner.name}: "
                "delete or rename it, the operator creates its own"
            )
        token = token_of(secret)
        if token is None:
            raise AdminTokenError(f"Secret {owner.namespace}/{name} has no token in key 'token': delete it")
        return token

    async def ensure(self, owner: Owner) -> str:
        """The token of ``owner``'s workers, creating its Secret when there is none."""
        key = (owner.namespace, owner.name)
        cached = self._tokens.get(key)
        if cached is not None and cached[0] == owner.uid:
            return cached[1]
        name = admin_token_secret_name(owner.name)
        secret = await self.kube.get(kubeapi.SECRETS, owner.namespace, name)
        if secret is None:
            try:
                secret = await self.kube.create(
                    kubeapi.SECRETS, owner.namespace, admin_token_secret(owner, new_token())
                )
                log.info("created the admin token Secret %s/%s", owner.namespace, name)
            except Conflict:
                # Created meanwhile (another operator replica before a leadership change): use it.
                secret = await self.kube.get(kubeapi.SECRETS, owner.namespace, name)
                if secret is None:
                    raise
        token = self._usable(secret, owner)
        self._tokens[key] = (owner.uid, token)
        return token

    async def token(self, owner: Owner) -> str | None:
        """The token of ``owner``'s workers, None while its Secret does not exist or is unusable
        (the reconciler creates it, or reports why it cannot)."""
        key = (owner.namespace, owner.name)
        cached = self._tokens.get(key)
        if cached is not None and cached[0] == owner.uid:
            return cached[1]
        secret = await self.kube.get(kubeapi.SECRETS, owner.namespace, admin_token_secret_name(owner.name))
        if secret is None:
            return None
        try:
            token = self._usable(secret, owner)
        except AdminTokenError as error:
            log.warning("%s", error)
            return None
        self._tokens[key] = (owner.uid, token)
        return token

    def forget(self, namespace: str, name: str) -> None:
        """Drop the cached token of a GRMDeployment (deleted, or its workers refused the token)."""
        self._tokens.pop((namespace, name), None)
