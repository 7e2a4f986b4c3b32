"""The operator's Kubernetes API adapter: typed async helpers over plain REST, one HTTP session.

Handlers never talk HTTP themselves; they call this module, which is the only place that knows
URLs, content types and the API's error shapes. It is built on aiohttp (which kopf already uses)
rather than a generated client: the operator needs a dozen verbs (get, list, server-side apply,
merge-patch of status and replicas, delete with preconditions, events, discovery), and plain REST
keeps server-side apply and preconditions exactly as the API documents them. Credentials come
from the same source as kopf's (a kubeconfig via ``KUBECONFIG``, or the in-cluster service
account), handed in as :class:`Connection`.

API errors are translated at this boundary into :class:`KubeError` and its subclasses; every
request is reported to an optional ``observer`` (the operator's metrics count API requests and
writes by verb).
"""

from __future__ import annotations

import datetime
import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

Body = dict[str, Any]
WRITE_VERBS = frozenset({"create", "patch", "update", "delete"})


class KubeError(Exception):
    """An API request failed; ``status`` is the HTTP status (0 when no response came)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """True for errors worth retrying: conflicts, throttling, server errors, no response."""
        return self.status in (0, 409, 429) or self.status >= 500


class NotFound(KubeError):
    """404: the object (or its kind) does not exist."""


class Conflict(KubeError):
    """409: a precondition or resourceVersion did not match, or the object already exists."""


class Forbidden(KubeError):
    """403: RBAC denies the operator this verb on this resource."""


class Invalid(KubeError):
    """422: the API server rejected the object (schema, CEL rule, immutable field)."""


_ERRORS: dict[int, type[KubeError]] = {404: NotFound, 409: Conflict, 403: Forbidden, 422: Invalid}


@dataclass(frozen=True)
class Kind:
    """A resource type: where its REST path is and what it is called."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name)}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


DEPLOYMENTS = Kind("apps", "v1", "deployments", "Deployment")
CONFIGMAPS = Kind("", "v1", "configmaps", "ConfigMap")
SECRETS = Kind("", "v1", "secrets", "Secret")
SERVICES = Kind("", "v1", "services", "Service")
PDBS = Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
JOBS = Kind("batch", "v1", "jobs", "Job")
PODS = Kind("", "v1", "pods", "Pod")
PODMONITORS = Kind("monitoring.coreos.com", "v1", "podmonitors", "PodMonitor")
EVENTS = Kind("", "v1", "events", "Event")
GRMDEPLOYMENTS = Kind("grm.dev", "v1alpha1", "grmdeployments", "GRMDeployment")
LEASES = Kind("coordination.k8s.io", "v1", "leases", "Lease")
KINDS_BY_NAME = {
    k.kind: k for k in (DEPLOYMENTS, CONFIGMAPS, SERVICES, PDBS, PODMONITORS, EVENTS, GRMDEPLOYMENTS)
}


def kind_of(manifest: Mapping[str, Any]) -> Kind:
    """The :class:`Kind` of a manifest (one of the kinds the operator manages)."""
    try:
        return KINDS_BY_NAME[str(manifest["kind"])]
    except KeyError:
        raise ValueError(f"the operator does not manage kind {manifest.get('kind')!r}") from None


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate (what a kubeconfig or the pod's service
    account says)."""

    server: str
    ssl_context: ssl.SSLContext | bool
    headers: Mapping[str, str] = field(default_factory=dict)
    default_namespace: str | None = None


# observer(verb, kind, status): verb is get/list/create/patch/update/delete; status the HTTP code.
RequestObserver = Callable[[str, str, int], None]


class KubeClient:
    """Async helpers for the objects the operator reads and writes."""

    def __init__(
        self,
        connection: Connection,
        *,
        field_manager: str = "grm-operator",
        timeout_s: float = 30.0,
        observer: RequestObserver | None = None,
    ) -> None:
        self.connection = connection
        self.field_manager = field_manager
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.observer = observer
        self._session: aiohttp.ClientSession | None = None
        self._discovery: dict[str, frozenset[str]] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session belongs to the event loop it was created on.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self.connection.server.rstrip("/") + "/",
                headers=dict(self.connection.headers),
                connector=aiohttp.TCPConnector(ssl=self.connection.ssl_context, limit=32),
                timeout=self.timeout,
            )
        return self._session

    async def _request(
        self,
        verb: str,
        method: str,
        path: str,
        kind: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Body:
        url = path.lstrip("/") + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        try:
            async with self._get_session().request(method, url, data=data, headers=headers) as response:
                text = await response.text()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            if self.observer:
                self.observer(verb, kind, 0)
            raise KubeError(0, "ConnectionError", f"{method} {path}: {exc!r}") from exc
        if self.observer:
            self.observer(verb, kind, status)
        if status >= 400:
            reason, message = "Unknown", text[:2000]
            try:
                payload = json.loads(text)
                reason = str(payload.get("reason") or reason)
                message = str(payload.get("message") or message)
            except ValueError:
                pass
            raise _ERRORS.get(status, KubeError)(status, reason, f"{method} {path}: {message}")
        if not text:
            return {}
        result: Body = json.loads(text)
        return result

    # --- reads ----------------------------------------------------------------------------------
    async def get(self, kind: Kind, namespace: str | None, name: str) -> Body | None:
        """The object, or None when it does not exist."""
        try:
            return await self._request("get", "GET", kind.path(namespace, name), kind.kind)
        except NotFound:
            return None

    async def list(self, kind: Kind, namespace: str | None = None, *, label_selector: str = "") -> list[Body]:
        """Every object of ``kind`` (in ``namespace``, or all namespaces) matching the selector."""
        items: list[Body] = []
        params = {"labelSelector": label_selector} if label_selector else {}
        while True:
            page = await self._request(
                "list", "GET", kind.path(namespace), kind.kind, params={**params, "limit": "500"}
            )
            for item in page.get("items", []):
                # List items omit apiVersion/kind; restore them so callers handle one shape.
                item.setdefault("apiVersion", kind.api_version)
                item.setdefault("kind", kind.kind)
                items.append(item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {**params, "continue": token}

    async def has_kind(self, kind: Kind) -> bool:
        """Whether the API server serves ``kind`` (discovery, cached per group/version)."""
        key = kind.api_version
        if key not in self._discovery:
            path = f"/apis/{kind.api_version}" if kind.group else f"/api/{kind.version}"
            try:
                doc = await self._request("get", "GET", path, "discovery")
            except NotFound:
                self._discovery[key] = frozenset()
            else:
                self._discovery[key] = frozenset(str(r.get("name")) for r in doc.get("resources", []))
        return kind.plural in self._discovery[key]

    # --- writes ---------------------------------------------------------------------------------
    async def create(self, kind: Kind, namespace: str | None, body: Mapping[str, Any]) -> Body:
        """POST a new object; :class:`Conflict` when one of that name exists already."""
        return await self._request("create", "POST", kind.path(namespace), kind.kind, body=dict(body))

    async def replace(self, kind: Kind, namespace: str | None, name: str, body: Mapping[str, Any]) -> Body:
        """PUT the whole object. Its ``metadata.resourceVersion`` is the precondition: another
        writer in between makes it a :class:`Conflict` (optimistic concurrency)."""
        return await self._request("update", "PUT", kind.path(namespace, name), kind.kind, body=dict(body))

    async def apply(self, manifest: Mapping[str, Any]) -> Body:
        """Server-side apply of ``manifest`` as the operator's field manager (creates or updates;
        ``force`` takes ownership of fields another manager set, e.g. a hand edit of our labels)."""
        kind = kind_of(manifest)
        meta = manifest["metadata"]
        params = {"fieldManager": self.field_manager, "force": "true"}
        return await self._request(
            "patch",
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            kind.kind,
            params=params,
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    async def merge_patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> Body:
        """A JSON merge patch (e.g. ``{"spec": {"replicas": 3}}``) of the object or a subresource."""
        return await self._request(
            "patch",
            "PATCH",
            kind.path(namespace, name, subresource),
            kind.kind,
            params={"fieldManager": self.field_manager},
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]) -> Body:
        """Merge ``status`` into the object's status subresource."""
        return await self.merge_patch(kind, namespace, name, {"status": status}, subresource="status")

    async def scale(self, kind: Kind, namespace: str, name: str, replicas: int) -> Body:
        """Set spec.replicas of a Deployment (or any kind with replicas) with a merge patch."""
        return await self.merge_patch(kind, namespace, name, {"spec": {"replicas": replicas}})

    async def delete(self, kind: Kind, namespace: str, name: str, *, uid: str | None = None) -> bool:
        """Delete the object (only the one with ``uid`` when given); False when it was gone."""
        body: Body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request("delete", "DELETE", kind.path(namespace, name), kind.kind, body=body)
        except NotFound:
            return False
        return True

    async def post_event(
        self,
        involved: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        type_: str = "Normal",
        component: str = "grm-operator",
    ) -> Body:
        """Post a core/v1 Event about ``involved`` (a full object body: apiVersion, kind, metadata)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        return await self._request("create", "POST", EVENTS.path(meta["namespace"]), "Event", body=event)
