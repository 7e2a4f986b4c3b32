"""The local cluster's network namespace: an isolated network stack of its own in which pods get
real, distinct addresses and from which nothing can leave the machine.

Only `lo` exists inside; two ranges are routed to it as *local* addresses (`ip route add local
CIDR dev lo` makes every address of the range one the namespace owns, so a server can bind to
any of them without adding addresses one by one):

* 10.244.0.0/16 — the cluster's own addresses: the API server (10.244.255.2; it rejects a
  loopback address as the `kubernetes` Service's endpoint), Prometheus (10.244.255.1) and each
  node's IP; pods get theirs from their node's CNI bridge, 10.245.<node>.0/24 (`realnode`),
  which this route must not cover;
* 10.96.0.0/12 — Service ClusterIPs, served by the real kube-proxy (nftables DNAT in the
  `output` hook; the local route lets a connect reach that hook).

Each node's IP (10.244.<node>.1) is also put on `lo` (`add_addresses`), so that kube-proxy's
masquerade has a source address to choose.

Any other destination has no route: a connect fails at once with ENETUNREACH, before a packet
exists. The supervisor process *enters* the namespace by being started under `unshare`
(`unshare --net` as root, `unshare -rn` — a user namespace too — otherwise) and every process
it starts inherits it. Others get in with `nsenter` through /proc/<supervisor pid>/ns/net.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence

POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
LOCAL_ROUTES = (POD_CIDR, SERVICE_CIDR)
# An address of TEST-NET-1 (RFC 5737): never routed anywhere, used to prove isolation.
OUTSIDE_PROBE = ("192.0.2.1", 80)


class NetnsError(RuntimeError):
    """The namespace could not be created, set up or entered."""


def is_root() -> bool:
    return os.geteuid() == 0


def missing_tools() -> list[str]:
    """The programs this module needs that are not installed (util-linux, iproute2)."""
    return [name for name in ("unshare", "nsenter", "ip") if shutil.which(name) is None]


def unshare_argv(argv: Sequence[str], *, root: bool | None = None) -> list[str]:
    """`argv` run in a new network namespace (as root) or a new user + network namespace.

    `unshare` without --fork execs `argv` in place, so the started PID is `argv`'s process."""
    as_root = is_root() if root is None else root
    return ["unshare", "--net", *argv] if as_root else ["unshare", "--map-root-user", "--net", *argv]


def nsenter_argv(pid: int, argv: Sequence[str], *, root: bool | None = None) -> list[str]:
    """`argv` run inside the network namespace of process `pid`. Without root the namespace is
    owned by a user namespace of ours, which must be entered first (we own it, so we may)."""
    as_root = is_root() if root is None else root
    ns = ["--net"] if as_root else ["--user", "--preserve-credentials", "--net"]
    return ["nsenter", f"--target={pid}", *ns, "--", *argv]


def probe_support() -> str | None:
    """None when network namespaces can be made here, else why not."""
    absent = missing_tools()
    if absent:
        return f"missing programs: {', '.join(absent)} (util-linux, iproute2)"
    result = subprocess.run(unshare_argv(["true"]), capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    return None


def setup_inside(routes: Sequence[str] = LOCAL_ROUTES) -> None:
    """Run inside a fresh namespace: bring `lo` up and route `routes` to it as local addresses."""
    commands = [["ip", "link", "set", "lo", "up"]]
    commands += [["ip", "route", "add", "local", cidr, "dev", "lo"] for cidr in routes]
    for cmd in commands:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        if result.returncode != 0:
            raise NetnsError(f"{' '.join(cmd)}: {result.stderr.strip()}")


def add_addresses(addresses: Sequence[str]) -> None:
    """Run inside: puts each address on `lo` as a /32. A local route makes an address reachable,
    but only an address *on an interface* can be a source a kernel chooses: kube-proxy's
    masquerade (for a connection to a ClusterIP from a source outside the pod range, e.g. a
    process connecting from the ClusterIP itself) picks a global address of the outgoing
    interface, `lo` here, and drops the packet when there is none. The nodes' IPs are these
    addresses, as a real node's IP is on its interface."""
    for address in addresses:
        cmd = ["ip", "addr", "add", f"{address}/32", "dev", "lo"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        if result.returncode != 0:
            raise NetnsError(f"{' '.join(cmd)}: {result.stderr.strip()}")


def outside_is_unreachable(target: tuple[str, int] = OUTSIDE_PROBE) -> bool:
    """True when a connect to `target` fails with "network unreachable" (no route at all), as it
    must inside the namespace. Outside it this would send a SYN, so callers run it inside only."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(target)
        except OSError as exc:
            return exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)
    return False


def in_local_ranges(address: str, routes: Sequence[str] = LOCAL_ROUTES) -> bool:
    """Whether `address` belongs to the namespace (loopback or a local route)."""
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or any(ip in ipaddress.ip_network(cidr) for cidr in routes)


def same_namespace(pid: int) -> bool:
    """Whether this process already is in the network namespace of `pid`."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
