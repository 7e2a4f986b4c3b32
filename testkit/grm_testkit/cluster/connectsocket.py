"""`connect.sock`: how the host reaches addresses inside the local cluster's network namespace.

The socket is a unix socket in the state directory — it belongs to the file system, not to a
network namespace — served by the supervisor inside. A connection's first line
`CONNECT ip:port` names the target; the supervisor connects to it *inside* and splices the
bytes both ways (`serve_connect`). Only addresses of the namespace's own ranges are accepted,
so this never opens a way out. On the host, `Forwarder` opens a loopback port per target whose
connections it carries over the socket. (The supervisor also answers one-line control commands
on the same socket: `PROMETHEUS STOP|START`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from grm_testkit.cluster import netns

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


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


async def serve_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> None:
    """One forwarded connection: `line` was `CONNECT ip:port`, then bytes both ways to that address."""
    try:
        verb, _, target = line.partition(" ")
        host, _, port = target.rpartition(":")
        if verb != "CONNECT" or not port.isdigit() or not netns.in_local_ranges(host):
            raise ValueError(f"refused: {line!r}")
        upstream = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    except (OSError, ValueError, TimeoutError) as exc:
        # A client of the forwarder sees this as a connection closed without a response: say why.
        log.warning("connect socket: %s: %r", line, exc)
        writer.close()
        return
    await splice((reader, writer), upstream)


class Forwarder:
    """Host loopback ports whose connections are carried into the namespace over connect.sock."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.loop = asyncio.new_event_loop()
        self._ports: dict[tuple[str, int], int] = {}
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="grm-forwarder", daemon=True)
        self._thread.start()

    def port(self, host: str, port: int) -> int:
        """A host loopback port for `host:port` inside the namespace (one per target)."""
        key = (host, port)
        if key not in self._ports:
            future = asyncio.run_coroutine_threadsafe(self._listen(host, port), self.loop)
            self._ports[key] = future.result(timeout=10)
        return self._ports[key]

    async def _listen(self, host: str, port: int) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                inner = await asyncio.open_unix_connection(self.socket_path)
            except OSError as exc:
                log.warning("forwarder: %s:%d: %r", host, port, exc)
                writer.close()
                return
            inner[1].write(f"CONNECT {host}:{port}\n".encode())
            await splice((reader, writer), inner)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
