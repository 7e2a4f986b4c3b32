"""The workers' admin token: one random bearer token per GRMDeployment, kept in a Secret it owns.

The worker's admin API (``/admin/samples``, where the operator pushes the sample budget) answers
only requests with ``Authorization: Bearer <token>``. The operator creates the Secret
``<name>-admin-token`` (key ``token``) once, before the first worker Deployment, with 32 random
bytes from :mod:`secrets` (43 URL-safe characters); the worker pods read it through a
``secretKeyRef`` (:func:`grm_operator.control.builders.deployment`'s environment), so it is never
in a ConfigMap, an argument or a log line. The operator never rotates it: a running pod keeps the
token its container started with, and a new one would lock the operator out of every running
worker. It is deleted with its GRMDeployment (owner reference).

Pure: the manifest and its parsing; :mod:`grm_operator.handlers.admintokens` does the API calls.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from typing import Any

from grm_operator.control.builders.metadata import Manifest, Owner, admin_token_secret_name, child_metadata
from grm_worker.contract.admin import ADMIN_TOKEN_KEY

__all__ = ["TOKEN_BYTES", "admin_token_secret", "new_token", "token_of"]

#: Random bytes of a token: 256 bits, what a bearer credential needs against guessing.
TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh random token (URL-safe base64, no padding)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def admin_token_secret(owner: Owner, token: str) -> Manifest:
    """The Secret holding ``token`` for ``owner``'s workers (immutable: it is never rotated)."""
    metadata = child_metadata(owner, admin_token_secret_name(owner.name), "admin-token")
    del metadata["annotations"]  # not applied, never compared: created once
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "immutable": True,
        "data": {ADMIN_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def token_of(secret: Mapping[str, Any]) -> str | None:
    """The token a Secret holds, None when it has none (no key, empty, not base64 of UTF-8)."""
    raw = (secret.get("data") or {}).get(ADMIN_TOKEN_KEY)
    if not isinstance(raw, str):
        return None
    try:
        token = base64.b64decode(raw, validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return token or None
