"""The part of the kubelet's HTTPS API the local cluster's node agent serves: container logs, so
`kubectl logs [-f] [--previous] [--tail N] [-c C]` works as on a real node (the API server
proxies `pods/log` to `https://<node InternalIP>:10250/containerLogs/...`).

Each container's log file holds every run, each after a `--- <time> start: <argv>` line the
agent writes; `Container.log_starts` remembers the offsets, so the current and the previous run
are exact slices. The API server is the only client: the namespace is sealed and kube-apiserver
presents no client certificate here (no `--kubelet-client-certificate`), so requests are not
authenticated — the real kubelet would check the API server's certificate and ask the
authorizer. `exec`, `attach` and `port-forward` (SPDY/WebSocket streams) are not served.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from aiohttp import web

_FOLLOW_POLL_S = 0.25


class LoggedPod(Protocol):
    """A pod on this node, as the API sees it (the node agent's `PodWorker`)."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def containers(self) -> Sequence[LoggedContainer]: ...


class LoggedContainer(Protocol):
    """A container whose log file holds every run (the node agent's `Container`)."""

    @property
    def name(self) -> str: ...

    @property
    def pod(self) -> LoggedPod: ...

    @property
    def log_path(self) -> Path: ...

    @property
    def log_starts(self) -> Sequence[int]: ...


class Node(Protocol):
    """What the API needs of the node (the node agent's `NodeAgent`): its pods by name."""

    def find(self, namespace: str, name: str) -> LoggedPod | None: ...


def run_output(data: bytes, starts: Sequence[int], *, previous: bool = False) -> bytes:
    """The output of the last run (or the one before, `previous`) without the agent's start line."""
    if not starts or (previous and len(starts) < 2):
        return b""
    index = len(starts) - (2 if previous else 1)
    begin = starts[index]
    end = starts[index + 1] if index + 1 < len(starts) else len(data)
    chunk = data[begin:end]
    newline = chunk.find(b"\n")
    return chunk[newline + 1 :] if newline >= 0 else b""


def tail(data: bytes, lines: int | None, limit_bytes: int | None = None) -> bytes:
    """The last `lines` lines of `data` (all when None), then at most its last `limit_bytes`."""
    if lines is not None:
        parts = data.splitlines(keepends=True)
        data = b"".join(parts[-lines:]) if lines > 0 else b""
    if limit_bytes is not None and len(data) > limit_bytes:
        data = data[-limit_bytes:]
    return data


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _container(agent: Node, request: web.Request) -> LoggedContainer:
    info = request.match_info
    pod = agent.find(info["namespace"], info["pod"])
    if pod is None:
        raise web.HTTPNotFound(text=f"pod {info['namespace']}/{info['pod']} is not on this node\n")
    for c in pod.containers:
        if c.name == info["container"]:
            return c
    raise web.HTTPNotFound(text=f"container {info['container']} is not in pod {info['pod']}\n")


async def _logs(agent: Node, request: web.Request) -> web.StreamResponse:
    c = _container(agent, request)
    query = request.query
    previous = query.get("previous") in ("true", "1")
    try:
        data = c.log_path.read_bytes()
    except OSError:
        data = b""
    body = tail(run_output(data, c.log_starts, previous=previous), _int(query.get("tailLines")),
                _int(query.get("limitBytes")))  # fmt: skip
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    await response.write(body)
    if query.get("follow") in ("true", "1") and not previous:
        # Follow the current run until the pod goes away or the client hangs up.
        runs, offset = len(c.log_starts), len(data)
        while agent.find(c.pod.namespace, c.pod.name) is c.pod and len(c.log_starts) == runs:
            await asyncio.sleep(_FOLLOW_POLL_S)
            try:
                with c.log_path.open("rb") as fh:
                    fh.seek(offset)
                    more = fh.read()
            except OSError:
                break
            if more:
                offset += len(more)
                await response.write(more)
    await response.write_eof()
    return response


async def serve(agent: Node, host: str, port: int, cert: Path, key: Path) -> Callable[[], Awaitable[None]]:
    """Starts the API on host:port (TLS); returns the coroutine function that stops it."""
    app = web.Application()
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", lambda request: _logs(agent, request))
    app.router.add_get("/healthz", lambda request: _ok())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ctx, reuse_address=True).start()
    return runner.cleanup


async def _ok() -> web.Response:
    return web.Response(text="ok")
