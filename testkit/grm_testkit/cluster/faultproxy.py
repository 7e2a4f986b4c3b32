"""A fault-injecting HTTP(S) proxy in front of a Kubernetes API server, for testing how a client
(the operator) survives a misbehaving control plane.

It forwards every request to the API server and streams the response back (watches included),
except where a `FaultRule` matches the method, path and query: then it answers an error status
with a Kubernetes `Status` body (500, 409, 429, ...) instead of forwarding, or forwards after an
added latency, each rule for at most N times and/or with a probability. Open watch connections
can be dropped on demand (`drop_watches`), abruptly (connection reset) or gracefully (the watch
ends as when the API server's own timeout ends it). Every request is recorded for assertions
(`records`), e.g. counting writes in a steady state.

Identity: a request that carries a bearer token is forwarded with that token only (the API
server authenticates and authorises the caller, so RBAC tests can go through the proxy); any
other request is forwarded with the proxy's upstream client certificate (the control plane's
admin by default). Client certificates end at the proxy and cannot be passed through.

The proxy runs its own asyncio loop in a thread, so it serves a separate operator process as
well as the test's own clients. Which requests get which fault is decided by a `FaultPlan`, pure
and unit-tested alone (`faultplan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import aiohttp
from aiohttp import web

from grm_testkit.cluster.faultplan import FaultPlan, FaultRule, status_body
from grm_testkit.cluster.kubeconfig import render_kubeconfig, write_kubeconfig
from grm_testkit.cluster.pki import KeyPair

if TYPE_CHECKING:
    from grm_testkit.cluster.controlplane import ControlPlane

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Headers that describe one hop's connection, not the message (RFC 9110 §7.6.1), plus the ones
# the proxy sets itself.
_HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
_WATCH_QUERY = re.compile(r"(^|&)watch=(1|true)(&|$)", re.IGNORECASE)


def is_watch(path: str, query: str) -> bool:
    """Whether a request opens a watch (`?watch=true` or the legacy `/watch/` paths)."""
    return bool(_WATCH_QUERY.search(query)) or "/watch/" in path


@dataclass(frozen=True)
class RequestRecord:
    """One request seen by the proxy."""

    method: str
    path: str
    query: str
    status: int
    injected: bool
    watch: bool
    at: float = field(default_factory=time.monotonic)


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Watch:
    request: web.Request
    upstream: aiohttp.ClientResponse
    drop: str | None = None  # "abort" | "graceful" once dropped


class FaultProxy:
    """The proxy: start()/stop() or a context manager; `url` once started.

    `upstream` is the API server's URL, `upstream_ssl` the TLS context that trusts it and holds
    the proxy's own client certificate. With `serving` the proxy serves HTTPS with that key pair
    (one signed by a CA the clients trust: `ca_pem`), else plain HTTP on loopback.
    """

    def __init__(
        self,
        upstream: str,
        upstream_ssl: ssl.SSLContext,
        *,
        token_ssl: ssl.SSLContext | None = None,
        serving: KeyPair | None = None,
        ca_pem: bytes | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        plan: FaultPlan | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan = plan or FaultPlan()
        self._upstream_ssl = upstream_ssl
        # Requests with a bearer token go upstream without the proxy's client certificate:
        # kube-apiserver tries x509 before tokens, so the certificate would mask the caller.
        self._token_ssl = token_ssl
        self._serving = serving
        self._ca_pem = ca_pem
        self._host = host
        self._port = port
        self._records: list[RequestRecord] = []
        self._records_lock = threading.Lock()
        self._watches: set[_Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._url: str | None = None

    @classmethod
    def for_control_plane(cls, plane: ControlPlane, *, tls: bool = True, seed: int = 0) -> FaultProxy:
        """A proxy in front of `plane`: upstream identity its admin, and (with `tls`) a serving
        certificate from its CA, so kubeconfigs for the proxy use the same CA."""
        token_ctx = ssl.create_default_context(cadata=plane.ca_pem.decode("ascii"))
        return cls(
            plane.url,
            plane.ssl_context(),
            token_ssl=token_ctx,
            serving=plane.serving_cert(("127.0.0.1", "localhost")) if tls else None,
            ca_pem=plane.ca_pem if tls else None,
            plan=FaultPlan(seed=seed),
        )

    # --- control from the test's thread ----------------------------------------------------------
    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fault proxy is not started")
        return self._url

    def add_rule(self, rule: FaultRule) -> FaultRule:
        return self.plan.add(rule)

    def clear_rules(self) -> None:
        self.plan.clear()

    @property
    def records(self) -> list[RequestRecord]:
        with self._records_lock:
            return list(self._records)

    def clear_records(self) -> None:
        with self._records_lock:
            self._records.clear()

    @property
    def open_watches(self) -> int:
        return self._call(self._count_watches())

    def drop_watches(self, path: str = "", *, graceful: bool = False) -> int:
        """Ends the open watches whose path matches the regex `path`; returns how many.

        Abrupt (default): the client's connection is reset mid-stream. Graceful: the chunked
        response is ended cleanly, as when the API server's own watch timeout closes it."""
        return self._call(self._drop(re.compile(path), "graceful" if graceful else "abort"))

    def kubeconfig(self, path: Path, *, token: str | None = None, user: str = "via-fault-proxy") -> Path:
        """A kubeconfig pointing at the proxy: with `token` the caller's own identity, else the
        proxy's upstream identity (the admin)."""
        config = render_kubeconfig(self.url, ca_pem=self._ca_pem, user=user, token=token)
        return write_kubeconfig(path, config)

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout_s: float = 30.0) -> None:
        if self._thread is not None:
            raise RuntimeError("the fault proxy is already started")
        loop = asyncio.new_event_loop()
        started: asyncio.Future[str] = loop.create_future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve(started))
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not started.done():
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fault proxy did not start")
            time.sleep(0.01)
        self._url = started.result()
        log.info("fault proxy %s -> %s", self._url, self.upstream)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._loop = self._thread = None
        self._url = None

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the fault proxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    # --- inside the proxy's loop ---------------------------------------------------------------
    async def _serve(self, started: asyncio.Future[str]) -> None:
        try:
            for name, ctx in (("cert", self._upstream_ssl), ("token", self._token_ssl or self._upstream_ssl)):
                self._sessions[name] = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=ctx),
                    # Bytes go through as the server sent them, compressed or not.
                    auto_decompress=False,
                    skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                )
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # Cancel a handler when its client goes away, so an idle watch's upstream
            # connection is closed at once rather than at the API server's watch timeout.
            self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            await self._runner.setup()
            server_ssl: ssl.SSLContext | None = None
            if self._serving is not None:
                server_ssl = _server_context(self._serving)
            # Bind first to learn the port the kernel picked for port 0.
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            port = sock.getsockname()[1]
            site = web.SockSite(self._runner, sock, ssl_context=server_ssl)
            await site.start()
            scheme = "https" if server_ssl is not None else "http"
            host = f"[{self._host}]" if ":" in self._host else self._host
            started.set_result(f"{scheme}://{host}:{port}")
        except BaseException as exc:  # report to start() instead of dying silently in the thread
            started.set_exception(exc)

    async def _shutdown(self) -> None:
        await self._drop(re.compile(""), "abort")
        if self._runner is not None:
            await self._runner.cleanup()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def _count_watches(self) -> int:
        return len(self._watches)

    async def _drop(self, path: re.Pattern[str], how: str) -> int:
        dropped = 0
        for watch in list(self._watches):
            if watch.drop is None and path.search(watch.request.path):
                watch.drop = how
                if how == "abort" and watch.request.transport is not None:
                    watch.request.transport.abort()
                watch.upstream.close()
                dropped += 1
        return dropped

    def _record(self, request: web.Request, status: int, injected: bool, watch: bool) -> None:
        record = RequestRecord(request.method, request.path, request.query_string, status, injected, watch)
        with self._records_lock:
            self._records.append(record)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        watch = is_watch(request.path, request.query_string)
        decision = self.plan.decide(request.method, request.path, request.query_string)
        if decision.latency_s > 0:
            await asyncio.sleep(decision.latency_s)
        if decision.status is not None:
            self._record(request, decision.status, True, watch)
            headers = {"Retry-After": "1"} if decision.status == 429 else None
            return web.json_response(
                status_body(decision.status, decision.message, request.method, request.path),
                status=decision.status,
                headers=headers,
            )
        if request.headers.get("Upgrade"):
            self._record(request, 501, False, watch)
            return web.Response(
                status=501, text="the fault proxy does not forward upgrades (exec, port-forward)"
            )

        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        session = self._sessions["token" if "Authorization" in request.headers else "cert"]
        body = await request.read()
        try:
            upstream = await session.request(
                request.method,
                self.upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except aiohttp.ClientError as exc:
            self._record(request, 502, False, watch)
            return web.json_response(
                status_body(502, f"upstream unreachable: {exc}", request.method, request.path), status=502
            )
        self._record(request, upstream.status, decision.injected, watch)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in _HOP_HEADERS:
                response.headers.add(key, value)
        if upstream.content_length is not None and not watch:
            response.content_length = upstream.content_length
        tracked = _Watch(request, upstream) if watch else None
        if tracked is not None:
            self._watches.add(tracked)
        try:
            await response.prepare(request)
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            if tracked is not None and tracked.drop == "abort":
                return response
            await response.write_eof()
        finally:
            upstream.release()
            if tracked is not None:
                self._watches.discard(tracked)
        return response


def _server_context(pair: KeyPair) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain reads files only; the key pair lives in memory.
    with tempfile.TemporaryDirectory(prefix="grm-proxy-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        key.chmod(0o600)
        ctx.load_cert_chain(cert, key)
    return ctx
