"""The local cluster's Service front: a userspace kube-proxy.

For every Service with a ClusterIP (allocated by the real API server from 10.96.0.0/12) it
listens on each `ClusterIP:port` (TCP) and splices each accepted connection to one of the
Service's *ready* endpoints, as kept in its EndpointSlices by the real endpointslice controller
(from pod readiness; a pod being deleted is marked not ready at once). Choice: the endpoint with
the fewest open connections, ties broken round-robin — so a pod that stops being ready gets no
new connection while open ones finish, and clients keep one URL while pods come and go. A
connect that fails (the pod just died) is retried on the next endpoint before the client's first
byte is read, so it costs the client nothing.

TCP splicing is protocol-agnostic (HTTP/1.1 keep-alive, streaming, the API server's TLS) at the
price of per-connection, not per-request, balancing. It authenticates as `system:kube-proxy`,
whose bootstrap role (`system:node-proxier`) grants exactly these watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from grm_operator.cluster.kubeclient import Json, KubeClient

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_CONNECT_TIMEOUT_S = 2.0
_MAX_TRIES = 3
_CHUNK = 64 * 1024

Backend = tuple[str, int]


def ready_backends(slices: Iterable[Mapping[str, Any]], port_name: str) -> list[Backend]:
    """The ready endpoints of a Service port over its EndpointSlices, sorted.

    A slice port matches by name (an unnamed Service port is "" in the Service and null in the
    slice); an endpoint counts unless `conditions.ready` is false (the API: nil means ready)."""
    found: set[Backend] = set()
    for s in slices:
        if s.get("addressType", "IPv4") != "IPv4":
            continue
        ports = [p for p in s.get("ports") or [] if (p.get("name") or "") == port_name and p.get("port")]
        for endpoint in s.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                for p in ports:
                    found.add((address, int(p["port"])))
    return sorted(found)


@dataclass
class Balancer:
    """Least-outstanding choice among backends, round-robin among equals."""

    outstanding: dict[Backend, int] = field(default_factory=dict)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(
        self, backends: list[Backend], exclude: set[Backend] | frozenset[Backend] = frozenset()
    ) -> Backend | None:
        candidates = [b for b in backends if b not in exclude]
        if not candidates:
            return None
        low = min(self.outstanding.get(b, 0) for b in candidates)
        tied = [b for b in candidates if self.outstanding.get(b, 0) == low]
        return tied[next(self._turn) % len(tied)]

    def opened(self, backend: Backend) -> None:
        self.outstanding[backend] = self.outstanding.get(backend, 0) + 1

    def closed(self, backend: Backend) -> None:
        left = self.outstanding.get(backend, 0) - 1
        if left > 0:
            self.outstanding[backend] = left
        else:
            self.outstanding.pop(backend, None)


@dataclass(frozen=True)
class Frontend:
    """One listening address of a Service port."""

    ip: str
    port: int
    namespace: str
    service: str
    port_name: str


def frontends(services: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], Frontend]:
    """`(clusterIP, port)` → what it serves, for every TCP port of every non-headless Service."""
    out: dict[tuple[str, int], Frontend] = {}
    for svc in services:
        spec = svc.get("spec") or {}
        ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        for ip in ips:
            if ip in ("", "None") or ":" in ip:
                continue
            for p in spec.get("ports") or []:
                if p.get("protocol", "TCP") != "TCP":
                    continue
                meta = svc["metadata"]
                out[(ip, int(p["port"]))] = Frontend(
                    ip, int(p["port"]), meta["namespace"], meta["name"], p.get("name") or ""
                )
    return out


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Copies both ways until both directions reached EOF, then closes both."""
    try:
        await asyncio.gather(_pump(a[0], b[1]), _pump(b[0], a[1]))
    except asyncio.CancelledError:
        # Shutdown: a stream callback's task that ends cancelled is logged as an error by asyncio
        # (3.11), so a cancelled splice ends normally after closing both sides.
        pass
    finally:
        # No await here: a splice still open when its loop shuts down is closed by the garbage
        # collector, and a coroutine that awaits inside `finally` then cannot finish.
        for w in (a[1], b[1]):
            w.close()


class ServiceProxy:
    """Follows Services and EndpointSlices and serves every ClusterIP:port."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.balancer = Balancer()
        self._services: dict[tuple[str, str], Json] = {}
        self._slices: dict[tuple[str, str], Json] = {}
        self._servers: dict[tuple[str, int], tuple[Frontend, asyncio.Server]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: set[asyncio.Task[None]] = set()
        self._synced = asyncio.Event()
        self._sync_lock = asyncio.Lock()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow("/api/v1/services", self._services), name="proxy services"),
            asyncio.create_task(
                self._follow("/apis/discovery.k8s.io/v1/endpointslices", self._slices), name="proxy slices"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for _, server in self._servers.values():
            server.close()
        for task in [*self._tasks, *self._conns]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._servers.clear()

    def backends(self, namespace: str, service: str, port_name: str) -> list[Backend]:
        slices = [
            s
            for (ns, _), s in self._slices.items()
            if ns == namespace and (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == service
        ]
        return ready_backends(slices, port_name)

    def listening(self) -> list[tuple[str, int]]:
        return sorted(self._servers)

    async def _follow(self, path: str, store: dict[tuple[str, str], Json]) -> None:
        async for kind, obj in self.client.watch(path):
            if kind == "SYNC":
                store.clear()
                for item in obj["items"]:
                    store[(item["metadata"]["namespace"], item["metadata"]["name"])] = item
            else:
                key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                if kind == "DELETED":
                    store.pop(key, None)
                else:
                    store[key] = obj
            if store is self._services and kind in ("SYNC", "ADDED", "MODIFIED", "DELETED"):
                await self._sync_listeners()

    async def _sync_listeners(self) -> None:
        async with self._sync_lock:
            wanted = frontends(self._services.values())
            for key in [k for k, (fe, _) in self._servers.items() if wanted.get(k) != fe]:
                fe, server = self._servers.pop(key)
                server.close()
                log.info("service front closed %s:%d (%s/%s)", fe.ip, fe.port, fe.namespace, fe.service)
            for key, fe in wanted.items():
                if key in self._servers:
                    continue
                try:
                    server = await asyncio.start_server(
                        self._acceptor(fe), fe.ip, fe.port, reuse_address=True
                    )
                except OSError as exc:
                    log.warning(
                        "cannot listen on %s:%d for %s/%s: %s", fe.ip, fe.port, fe.namespace, fe.service, exc
                    )
                    continue
                self._servers[key] = (fe, server)
                log.info("service front on %s:%d → %s/%s", fe.ip, fe.port, fe.namespace, fe.service)

    def _acceptor(
        self, fe: Frontend
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        return lambda reader, writer: self._accept(fe, reader, writer)

    async def _accept(self, fe: Frontend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await self._serve(fe, reader, writer)
        finally:
            if task is not None:
                self._conns.discard(task)

    async def _serve(self, fe: Frontend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tried: set[Backend] = set()
        for _ in range(_MAX_TRIES):
            backend = self.balancer.pick(self.backends(fe.namespace, fe.service, fe.port_name), tried)
            if backend is None:
                break
            tried.add(backend)
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(*backend), _CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                log.debug("%s/%s: %s:%d refused (%s); next endpoint", fe.namespace, fe.service, *backend, exc)
                continue
            self.balancer.opened(backend)
            try:
                await splice((reader, writer), upstream)
            finally:
                self.balancer.closed(backend)
            return
        log.debug("%s/%s:%s: no ready endpoint", fe.namespace, fe.service, fe.port_name)
        writer.close()
