"""Ports for the servers that test harnesses start as children, and the race a child can lose.

A harness picks a free port (binds port 0, reads the number, closes) and passes it to a child that
binds it later: ~0.1 s later for etcd, 1-3 s for the operator or kube-apiserver (imports, TLS,
login). In between the port is anybody's: another suite's harness that drew the same number, or
any outgoing connection, whose local port comes from the same ephemeral range (32768-60999 on
Linux, 28 232 ports). The child then fails with "address already in use" -- or, worse, does not
fail at once and a health probe on the port is answered by the squatter (another suite's etcd
answers ``/health`` just as well as ours).

What a harness needs to recover, and nothing else:

* :func:`free_port` -- the number to try.
* :func:`clash_line` (pure) -- the line of a child's log saying it could not bind one of *its*
  ports because the address is in use; None for every other failure, which must surface as is.
* :func:`holder` -- from ``/proc``, whether the process listening on a port is the child (or one
  of its descendants) or another process: a probe's answer proves nothing by itself.
* :class:`PortClash` and :func:`retry_on_clash` -- an attempt that lost its ports raises
  PortClash; the retry starts a new attempt on fresh ports, a bounded number of times.

Where a server binds port 0 itself and reports the port, there is no race at all (the fault proxy
and the local cluster's forwards do); the children here cannot report one: etcd, the Kubernetes
components, Prometheus and kopf's liveness endpoint have no way to, and the worker's config
requires a port of at least 1.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Collection
from typing import Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Attempts per start. A clash needs another process to take the port within the child's start-up
#: (~1-3 s); even with a few hundred ports changing hands per second among 28 232 ephemeral
#: ones, one attempt loses with p < 0.05 and three in a row with p < 1e-4.
PORT_ATTEMPTS = 3

# Go prints "listen tcp 127.0.0.1:2379: bind: address already in use", Python's asyncio "[Errno 98]
# error while attempting to bind on address ('127.0.0.1', 8080): address already in use", and
# socketserver (prometheus_client's metrics server) only "[Errno 98] Address already in use".
_IN_USE = re.compile(r"address already in use|EADDRINUSE", re.IGNORECASE)
# A port as part of an address in such a line: "127.0.0.1:2379", "[::1]:2379", "tcp :2379" (Go) or
# "('127.0.0.1', 8080)" (Python). A bare ":NN" counts only after a space or bracket, so the
# "21:06:17" of a log timestamp is no address.
_ADDRESS_PORT = re.compile(
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]*\]|localhost|(?<=[\s(\[]))"
    r":(\d{1,5})\b"
    r"|'\s*,\s*(\d{1,5})\s*[,)]"
)

_TCP_LISTEN = "0A"  # the `st` column of /proc/net/tcp for a listening socket

Holder = Literal["child", "other", "none"]


class PortClash(RuntimeError):
    """A child lost a port it was given to another process; fresh ports may succeed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ports_named(line: str) -> set[int]:
    """The ports of the addresses a log line names."""
    return {int(a or b) for a, b in _ADDRESS_PORT.findall(line)}


def clash_line(log_text: str, ports: Collection[int]) -> str | None:
    """The first line of `log_text` saying an address is in use on one of `ports`, else None.

    A line that names no address at all (socketserver's bare "[Errno 98] Address already in
    use") is attributed to `ports`: the child can only have meant one of them, and fresh ports
    are the only remedy either way. A line naming only other ports (say the fixed port of a
    vLLM child that the harness did not choose) is not: new ports for the harness's own servers
    would fail the same way.
    """
    wanted = set(ports)
    for line in log_text.splitlines():
        if not _IN_USE.search(line):
            continue
        named = ports_named(line)
        if not named or named & wanted:
            return line.strip()
    return None


def _listening_inodes(pid: int, port: int) -> set[int] | None:
    """Inodes of the sockets listening on `port` in `pid`'s network namespace; None: unreadable."""
    inodes: set[int] = set()
    readable = False
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(int(fields[9]))
    return inodes if readable else None


def _descendants(pid: int) -> set[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _socket_inodes(pids: Collection[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def holder(pid: int, port: int) -> Holder | None:
    """Who listens on TCP `port` in `pid`'s network namespace: `pid` or a descendant ("child"),
    only other processes ("other"), nobody ("none"); None where ``/proc`` cannot tell (not Linux,
    or `pid` is gone)."""
    listening = _listening_inodes(pid, port)
    if listening is None:
        return None
    if not listening:
        return "none"
    return "child" if listening & _socket_inodes(_descendants(pid)) else "other"


def check_holder(pid: int, ports: Collection[int], what: str) -> None:
    """After a probe on `ports` succeeded: PortClash when another process, not the child, listens
    on one of them (the probe was answered by the squatter)."""
    for port in ports:
        if holder(pid, port) == "other":
            raise PortClash(f"{what}: port {port} is held by another process, not by the child (pid {pid})")


def retry_on_clash(attempt: Callable[[], T], what: str, attempts: int = PORT_ATTEMPTS) -> T:
    """Run `attempt` until it returns, again after each PortClash, at most `attempts` times.

    `attempt` must choose fresh ports and clean up its own child before raising PortClash; any
    other exception passes through at once."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    number = 1
    while True:
        try:
            return attempt()
        except PortClash as clash:
            if number >= attempts:
                raise PortClash(
                    f"{what}: lost its ports in each of {attempts} attempts; last: {clash}"
                ) from clash
            number += 1
            log.warning(
                "%s: %s; starting again on fresh ports (attempt %d of %d)", what, clash, number, attempts
            )
