"""The local cluster's Service front: a userspace kube-proxy.

For every Service with a ClusterIP (allocated by the real API server from 10.96.0.0/12) it
listens on each `ClusterIP:port` (TCP) and sends traffic to the Service's *ready* endpoints, as
kept in its EndpointSlices by the real endpointslice controller (from pod readiness; a pod being
deleted is marked not ready at once). Choice: the endpoint with the fewest outstanding
connections or requests, ties broken round-robin — so a pod that stops being ready gets nothing
new while what it has finishes, and clients keep one URL while pods come and go.

Two modes per Service port:
* **TCP** (default): each accepted connection is spliced to one endpoint — protocol-agnostic
  (the API server's TLS, anything). A connect that fails (the pod just died) is retried on the
  next endpoint before the client's first byte is read.
* **HTTP** (`appProtocol: http`, or a port named `http`/`http-*`, as the worker Service's is):
  balanced per *request*, like an L7 Service proxy (Envoy, a mesh sidecar). A client that keeps
  one keep-alive connection still spreads its requests, and never sends one to a pod after it
  left the endpoints — which TCP splicing cannot promise (the pinned connection would reach the
  draining worker and get its 503). A refused connect or a 503 answer (the worker refuses while
  draining, before doing any work) is retried on another endpoint; responses stream through.

It authenticates as `system:kube-proxy`, whose bootstrap role (`system:node-proxier`) grants
exactly these watches.

One concept, kept whole: a stand-in for kube-proxy, which the issue "The local cluster becomes a
real Kubernetes node" replaces with the real kube-proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from grm_testkit.cluster.kubeclient import Json, KubeClient

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_CONNECT_TIMEOUT_S = 2.0
_MAX_TRIES = 3
_CHUNK = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
# Headers of one hop only (RFC 9110 §7.6.1), never forwarded; Host is the backend's.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
)


def _response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}


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
    """One listening address of a Service port; `http`: balanced per request (see module doc)."""

    ip: str
    port: int
    namespace: str
    service: str
    port_name: str
    http: bool = False


def speaks_http(port: Mapping[str, Any]) -> bool:
    """A Service port served per HTTP request: `appProtocol: http`, or named `http`/`http-*`
    (Istio's naming convention). Everything else is spliced as TCP."""
    protocol = str(port.get("appProtocol") or "").lower()
    name = str(port.get("name") or "").lower()
    return protocol in ("http", "kubernetes.io/http") or name == "http" or name.startswith("http-")


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
                    ip, int(p["port"]), meta["namespace"], meta["name"], p.get("name") or "", speaks_http(p)
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
        self._servers: dict[tuple[str, int], tuple[Frontend, Callable[[], Awaitable[None]]]] = {}
        self._http: aiohttp.ClientSession | None = None
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
        for _, close in self._servers.values():
            with contextlib.suppress(Exception):
                await close()
        for task in [*self._tasks, *self._conns]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._servers.clear()
        if self._http is not None:
            await self._http.close()

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
                fe, close = self._servers.pop(key)
                await close()
                log.info("service front closed %s:%d (%s/%s)", fe.ip, fe.port, fe.namespace, fe.service)
            for key, fe in wanted.items():
                if key in self._servers:
                    continue
                try:
                    close = await (self._listen_http(fe) if fe.http else self._listen_tcp(fe))
                except OSError as exc:
                    log.warning(
                        "cannot listen on %s:%d for %s/%s: %s", fe.ip, fe.port, fe.namespace, fe.service, exc
                    )
                    continue
                self._servers[key] = (fe, close)
                log.info(
                    "service front on %s:%d → %s/%s (%s)",
                    fe.ip,
                    fe.port,
                    fe.namespace,
                    fe.service,
                    "http" if fe.http else "tcp",
                )

    async def _listen_tcp(self, fe: Frontend) -> Callable[[], Awaitable[None]]:
        server = await asyncio.start_server(self._acceptor(fe), fe.ip, fe.port, reuse_address=True)

        async def close() -> None:
            server.close()

        return close

    async def _listen_http(self, fe: Frontend) -> Callable[[], Awaitable[None]]:
        if self._http is None:
            # Raw bytes both ways (no decompression), unlimited pooled keep-alive connections.
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", lambda request: self._forward(fe, request))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, fe.ip, fe.port, reuse_address=True).start()
        except OSError:
            await runner.cleanup()
            raise
        return runner.cleanup

    async def _forward(self, fe: Frontend, request: web.Request) -> web.StreamResponse:
        """One HTTP request to the ready endpoint with the fewest requests in flight. A refused
        connect or a 503 (a draining worker refuses before doing any work) moves on to the next
        endpoint; the body is buffered, so the retry sends the same request."""
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        tried: set[Backend] = set()
        refused: web.Response | None = None
        for _ in range(_MAX_TRIES):
            backend = self.balancer.pick(self.backends(fe.namespace, fe.service, fe.port_name), tried)
            if backend is None:
                break
            tried.add(backend)
            self.balancer.opened(backend)
            try:
                async with self._http.request(
                    request.method,
                    f"http://{backend[0]}:{backend[1]}{request.rel_url}",
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT_S),
                ) as upstream:
                    if upstream.status == 503:
                        refused = web.Response(
                            status=503, body=await upstream.read(), headers=_response_headers(upstream)
                        )
                        continue
                    response = web.StreamResponse(
                        status=upstream.status, reason=upstream.reason, headers=_response_headers(upstream)
                    )
                    await response.prepare(request)
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
                # ServerDisconnected: a pooled connection the pod closed before answering.
                log.debug("%s/%s: %s:%d failed (%s); next endpoint", fe.namespace, fe.service, *backend, exc)
                continue
            finally:
                self.balancer.closed(backend)
        if refused is not None:
            return refused
        return web.Response(status=503, text=f"no ready endpoint for {fe.namespace}/{fe.service}\n")

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
