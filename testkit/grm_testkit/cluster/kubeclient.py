"""A small asyncio client of the Kubernetes REST API for the local cluster's supervisor (the
real nodes' GPU capacity, readiness checks): plain JSON dicts over aiohttp, credentials from a
kubeconfig with embedded data; and `json_exchange`, one blocking request, for callers without an
event loop (`LocalCluster.api`, the control plane, `RealCluster`).

The test kit keeps a client of its own because the supervisor needs raw-path requests (a Node's
status subresource) inside its one event loop, which neither the operator's client
(`grm_operator.kubeapi`: typed `Kind`s) nor the installed official `kubernetes` client
(synchronous: a thread per call) would give with less code.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml

Json = dict[str, Any]


class KubeError(RuntimeError):
    """A request to the API server failed with an HTTP status (kept in `status`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove an identity to it."""

    server: str
    ssl: ssl.SSLContext | None
    token: str | None = None


def json_exchange(
    conn: http.client.HTTPConnection, method: str, path: str, body: Mapping[str, Any] | None
) -> tuple[int, Any]:
    """One synchronous JSON request on ``conn`` (closed afterwards): (status, decoded JSON, or the
    text when the answer is not JSON). For the test harnesses' blocking calls; the supervisor
    uses :class:`KubeClient`."""
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw.decode(errors="replace")
    finally:
        conn.close()


def load_kubeconfig(path: Path) -> Credentials:
    """Credentials of the current context of a kubeconfig whose certificates are embedded
    (`*-data` fields, as `kubeconfig.render_kubeconfig` writes them) or given as files."""
    doc = yaml.safe_load(path.read_text())
    context_name = doc["current-context"]
    context = next(c["context"] for c in doc["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
    server: str = cluster["server"]
    ctx: ssl.SSLContext | None = None
    if server.startswith("https://"):
        if "certificate-authority-data" in cluster:
            ctx = ssl.create_default_context(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode("ascii")
            )
        else:
            ctx = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
        if "client-certificate-data" in user:
            # load_cert_chain reads files only: a private temp dir that lives for the call.
            with tempfile.TemporaryDirectory(prefix="grm-kc-") as tmp:
                cert, key = Path(tmp) / "c.crt", Path(tmp) / "c.key"
                cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
                key.write_bytes(base64.b64decode(user["client-key-data"]))
                ctx.load_cert_chain(cert, key)
        elif "client-certificate" in user:
            ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    return Credentials(server=server.rstrip("/"), ssl=ctx, token=user.get("token"))


class KubeClient:
    """JSON requests against one API server with one identity."""

    def __init__(self, credentials: Credentials, *, timeout_s: float = 30.0) -> None:
        self.credentials = credentials
        self._timeout_s = timeout_s
        headers = {"Accept": "application/json"}
        if credentials.token:
            headers["Authorization"] = f"Bearer {credentials.token}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=credentials.ssl if credentials.ssl is not None else False),
        )

    @classmethod
    def from_kubeconfig(cls, path: Path, **kwargs: Any) -> KubeClient:
        return cls(load_kubeconfig(path), **kwargs)

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        ok_missing: bool = False,
    ) -> Json:
        """One request; the decoded JSON answer. A 404 returns {} when `ok_missing`."""
        url = self.credentials.server + path
        if params:
            url += "?" + urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        async with self._session.request(method, url, data=data, headers=headers, timeout=timeout) as resp:
            raw = await resp.read()
            if resp.status == 404 and ok_missing:
                return {}
            if resp.status >= 400:
                raise KubeError(resp.status, _message(raw))
            decoded: Json = json.loads(raw) if raw else {}
            return decoded

    async def get(self, path: str, *, ok_missing: bool = False, **params: str) -> Json:
        return await self.request("GET", path, params=params or None, ok_missing=ok_missing)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> Json:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")


def _message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:500]
    if isinstance(body, dict):
        return str(body.get("message", body))
    return str(body)
