"""Kubeconfig documents: the one file format every Kubernetes client (kubectl, helm, the Python
`kubernetes` client, kopf) reads to find a server and prove an identity.

Credentials are embedded (`*-data` fields, base64) so a kubeconfig is one self-contained file
that can be copied into a network namespace or handed to another process.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render_kubeconfig(
    server: str,
    *,
    ca_pem: bytes | None,
    user: str,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    token: str | None = None,
    cluster_name: str = "grm-test",
    namespace: str | None = None,
) -> dict[str, Any]:
    """A kubeconfig with one cluster, one user and one current context.

    Give either a client certificate and key, or a bearer token (or neither, for an anonymous
    client). `ca_pem` None means a plain-HTTP server (no TLS to verify).
    """
    if (client_cert_pem is None) != (client_key_pem is None):
        raise ValueError("a client certificate needs its key and vice versa")
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = _b64(ca_pem)
    creds: dict[str, Any] = {}
    if client_cert_pem is not None and client_key_pem is not None:
        creds["client-certificate-data"] = _b64(client_cert_pem)
        creds["client-key-data"] = _b64(client_key_pem)
    if token is not None:
        creds["token"] = token
    context: dict[str, Any] = {"cluster": cluster_name, "user": user}
    if namespace is not None:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": cluster}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": cluster_name, "context": context}],
        "current-context": cluster_name,
        "preferences": {},
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    """Writes `config` to `path` readable by its owner only (it holds private keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return path
