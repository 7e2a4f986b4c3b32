"""The admin API's credential: where the worker finds its bearer token and how a client sends it.

The operator creates one random token per GRMDeployment in a Secret (``<name>-admin-token``, key
:data:`ADMIN_TOKEN_KEY`), hands it to each worker container as the environment variable
:data:`ADMIN_TOKEN_ENV` (a ``secretKeyRef``: never in the ConfigMap nor in the arguments), and
sends it as ``Authorization: Bearer <token>`` (:func:`bearer_header`) with every ``/admin/*``
request; the worker answers 401 to any other.
"""

from __future__ import annotations

__all__ = ["ADMIN_TOKEN_ENV", "ADMIN_TOKEN_KEY", "bearer_header"]

#: The worker's environment variable holding the admin API's bearer token.
ADMIN_TOKEN_ENV = "GRM_ADMIN_TOKEN"
#: The key of the token in the operator's Secret.
ADMIN_TOKEN_KEY = "token"


def bearer_header(token: str) -> dict[str, str]:
    """The request header that authenticates an admin request with ``token``."""
    return {"Authorization": f"Bearer {token}"}
