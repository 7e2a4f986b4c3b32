"""A Service's virtual IP over real worker processes, balanced per *connection* by nftables the way
kube-proxy's nftables mode does it, for keep-alive clients: drain and scale-up measured end to end.

Runs inside a network namespace of its own (``unshare --net python -m grm_testkit.l4path ...``,
root): ``lo`` up, the pod range 10.244.0.0/16 and the Service range 10.96.0.0/12 routed to it as
local addresses (:mod:`grm_testkit.cluster.netns`), ``grm-worker serve --engine sim`` processes
bound to pod IPs, and one nftables table in the image of kube-proxy's: a ``nat`` chain on the
``output`` hook sends a connection for ``VIP:8000`` through ``numgen random mod N vmap`` to one
endpoint chain, which DNATs it to a pod IP. conntrack keeps an established connection on its pod;
removing an endpoint (one atomic ``nft -f`` transaction, as kube-proxy rewrites the service's
chain) only changes where *new* connections go. Nothing retries, nothing looks at HTTP.

Scenarios (the result is one JSON object on stdout):

* ``drain``: two workers in the VIP, the keep-alive clients of :mod:`grm_testkit.traffic`
  (openai, httpx, slime-shaped reward) at a steady rate; worker A leaves the endpoints and gets
  SIGTERM at once (no preStop sleep: the worst case); the load goes on until A has exited and
  more requests were answered. Reports every client's outcomes, A's exit code, its drain log line.
* ``scaleup``: worker A alone in the VIP, the clients' pools connect to it; worker B starts, joins
  the endpoints, and the harness polls both workers' request counters (on their pod IPs) until B
  answers at least ``--share`` and then :data:`FAIR_SHARE` of the requests of a sliding window,
  or ``--limit`` seconds pass. Reports those times, and the reconnects the age cap cost (A's
  ``grm_connections_recycled_total``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from grm_testkit.cluster import netns
from grm_testkit.traffic import KEEPALIVE_CLIENTS, KeepAliveLoad, Outcome

VIP = "10.96.0.50"
PORT = 8000
POD_IPS = ("10.244.0.11", "10.244.0.12")
TABLE = "grm-l4"
# The sim engine 20× faster than real time with 40-token critiques and 4 samples: a score request
# takes ~0.1–0.3 s of wall time, so a few requests per second keep several connections busy.
SIM_SETTINGS = {"sim.time_scale": 20, "sim.output_tokens": 40, "scoring.samples_default": 4}
# Seconds over which the scale-up share is measured (requests answered by each worker).
SHARE_WINDOW_S = 2.0
# The scale-up's second mark: B answers 40 % of a window's requests (an even split is 50 %).
FAIR_SHARE = 0.4
_POLL_S = 0.25


class L4PathError(RuntimeError):
    """The namespace, the nftables rules or a worker could not be set up."""


def unavailable() -> str | None:
    """None when the harness can run here (root, nft, network namespaces), else why not."""
    if not netns.is_root():
        return "needs root (nftables in a network namespace)"
    if shutil.which("nft") is None:
        return "needs nft (Debian's nftables package)"
    return netns.probe_support()


def _nft(script: str) -> None:
    result = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise L4PathError(f"nft failed: {result.stderr.strip()}\n{script}")


def set_endpoints(pod_ips: Sequence[str]) -> None:
    """Point the VIP at ``pod_ips`` in one transaction, as kube-proxy's nftables mode does: the
    service chain picks an endpoint chain with ``numgen random mod N``; each DNATs to its pod."""
    lines = [f"flush chain ip {TABLE} svc"]
    for index, ip in enumerate(POD_IPS):
        lines.append(f"flush chain ip {TABLE} ep{index}")
        lines.append(f"add rule ip {TABLE} ep{index} meta l4proto tcp dnat to {ip}:{PORT}")
    chains = {POD_IPS.index(ip): ip for ip in pod_ips}
    if chains:
        vmap = ", ".join(f"{n} : goto ep{index}" for n, index in enumerate(sorted(chains)))
        lines.append(f"add rule ip {TABLE} svc numgen random mod {len(chains)} vmap {{ {vmap} }}")
    else:  # no endpoints: kube-proxy rejects the connection
        lines.append(f"add rule ip {TABLE} svc reject with tcp reset")
    _nft("\n".join(lines) + "\n")


def setup_table() -> None:
    chains = "\n".join(f"add chain ip {TABLE} ep{index}" for index in range(len(POD_IPS)))
    _nft(
        f"add table ip {TABLE}\n"
        f"add chain ip {TABLE} out {{ type nat hook output priority -100; }}\n"
        f"add chain ip {TABLE} svc\n{chains}\n"
        f"add rule ip {TABLE} out ip daddr {VIP} tcp dport {PORT} goto svc\n"
    )


class Worker:
    """``grm-worker serve --engine sim`` on one pod IP, its log in a temp file."""

    def __init__(self, ip: str, settings: dict[str, Any]) -> None:
        self.ip = ip
        self.url = f"http://{ip}:{PORT}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"grm-l4-{ip}-", suffix=".log")[1])
        argv = [sys.executable, "-c", "import sys; from grm_worker.cli import main; sys.exit(main())"]
        argv += ["serve", "--engine", "sim", "--host", ip, "--port", str(PORT), "--log-level", "INFO"]
        for key, value in settings.items():
            argv += ["--set", f"{key}={json.dumps(value)}"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.get("/ready")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise L4PathError(
                    f"worker {self.ip} not ready (exit {self.proc.poll()}):\n{self.log()[-3000:]}"
                )
            time.sleep(0.1)

    def counter(self, name: str, **labels: str) -> float:
        """The sum of a counter's samples matching ``labels`` on /metrics (0 when unreadable)."""
        status, text = self.get("/metrics")
        if status != 200:
            return 0.0
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def answered(self) -> float:
        return self.counter("grm_requests_total", endpoint="score", code="200")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def _loads(rate_each: float) -> Iterator[list[KeepAliveLoad]]:
    loads = [KeepAliveLoad(f"http://{VIP}:{PORT}", lambda t: rate_each, c).start() for c in KEEPALIVE_CLIENTS]
    try:
        yield loads
    finally:
        for load in loads:
            load.stop(30)


def _answered(loads: Sequence[KeepAliveLoad]) -> int:
    return sum(len(load.outcomes()) for load in loads)


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise L4PathError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    failed = [o for o in outcomes if not o.ok]
    return {
        "requests": len(outcomes),
        "failed": len(failed),
        "failures": [
            {"sent": round(o.sent, 3), "latency": round(o.latency, 3), "status": o.status, "error": o.error}
            for o in failed[:5]
        ],
    }


def drain(settings: dict[str, Any], rate_each: float, drain_timeout_s: float) -> dict[str, Any]:
    a, b = (Worker(ip, {**settings, "drain_timeout_s": drain_timeout_s}) for ip in POD_IPS)
    try:
        a.wait_ready(60)
        b.wait_ready(60)
        set_endpoints(POD_IPS)
        with _loads(rate_each) as loads:
            # Both workers hold keep-alive connections of the clients before A leaves.
            _wait(lambda: a.answered() >= 10 and b.answered() >= 10, 60, "both workers answering")
            set_endpoints(POD_IPS[1:])  # the endpoint leaves first, as on a pod's deletion
            a.proc.send_signal(signal.SIGTERM)
            sigterm = time.monotonic()
            sigterm_at = {load.client: round(sigterm - load.t0, 3) for load in loads}
            a.proc.wait(drain_timeout_s + 30)
            drained_s = time.monotonic() - sigterm
            after = _answered(loads)
            _wait(lambda: _answered(loads) >= after + 30, 60, "30 more answers after the drain")
            clients = {load.client: _summary(load.outcomes()) for load in loads}
        line = next((x for x in a.log().splitlines() if "draining in_flight=" in x), "")
        return {
            "clients": clients,
            "exit_code": a.proc.returncode,
            "drain_s": round(drained_s, 3),
            "sigterm_at": sigterm_at,
            "drain_log": line.split(" grm_worker.server ")[-1],
            "answered_by_a": a.answered() if a.proc.poll() is None else None,
        }
    finally:
        a.stop()
        b.stop()


def scaleup(settings: dict[str, Any], rate_each: float, share: float, limit_s: float) -> dict[str, Any]:
    a = Worker(POD_IPS[0], settings)
    b: Worker | None = None
    try:
        a.wait_ready(60)
        set_endpoints(POD_IPS[:1])
        with _loads(rate_each) as loads:
            # Steady state first: the pools' connections of every age up to the cap (two caps' time).
            warm_s = 2 * float(settings.get("connection_max_age_s") or 0)
            _wait(
                lambda: a.answered() >= 30 and loads[0].elapsed() >= warm_s,
                warm_s + 60,
                "the clients' pools on worker A",
            )
            b = Worker(POD_IPS[1], settings)
            b.wait_ready(60)
            set_endpoints(POD_IPS)  # the new replica joins the endpoints once Ready
            joined = time.monotonic()
            history: list[tuple[float, float, float]] = []  # (t, answered by A, by B)
            reached: float | None = None
            fair: float | None = None  # when B's share first reached 0.4 (fair: 0.5)
            while (now := time.monotonic() - joined) < limit_s and (reached is None or fair is None):
                history.append((now, a.answered(), b.answered()))
                old = next((h for h in history if h[0] >= now - SHARE_WINDOW_S), history[0])
                if now >= SHARE_WINDOW_S:
                    da, db = history[-1][1] - old[1], history[-1][2] - old[2]
                    b_share = db / (da + db) if da + db > 0 else 0.0
                    if reached is None and b_share >= share:
                        reached = now
                    if fair is None and b_share >= FAIR_SHARE:
                        fair = now
                time.sleep(_POLL_S)
            clients = {load.client: _summary(load.outcomes()) for load in loads}
            window_rps = _answered(loads) / max(loads[0].elapsed(), 1e-9)
        recycled = a.counter("grm_connections_recycled_total", reason="max_age")
        return {
            "clients": clients,
            "reached_s": None if reached is None else round(reached, 2),
            "fair_s": None if fair is None else round(fair, 2),
            "share": share,
            "limit_s": limit_s,
            "max_age_s": settings.get("connection_max_age_s"),
            "recycled_max_age_on_a": recycled,
            "load_rps": round(window_rps, 2),
        }
    finally:
        a.stop()
        if b is not None:
            b.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grm_testkit.l4path", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["drain", "scaleup"])
    parser.add_argument("--rate", type=float, default=4.0, help="requests/s of each of the 3 clients")
    parser.add_argument("--max-age", type=float, default=None, help="connection_max_age_s (0: none)")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--share", type=float, default=0.25, help="scaleup: B's share to reach")
    parser.add_argument("--limit", type=float, default=60.0, help="scaleup: seconds to give up after")
    args = parser.parse_args(argv)
    if os.environ.get("GRM_L4PATH_INSIDE") != "1":
        # Re-run this module in a network namespace of its own, then report what it reported.
        why = unavailable()
        if why is not None:
            print(json.dumps({"unavailable": why}))
            return 3
        inner = [sys.executable, "-m", "grm_testkit.l4path", *(argv if argv is not None else sys.argv[1:])]
        env = {**os.environ, "GRM_L4PATH_INSIDE": "1"}
        return subprocess.run(netns.unshare_argv(inner), env=env, check=False).returncode
    netns.setup_inside()
    setup_table()
    settings: dict[str, Any] = dict(SIM_SETTINGS)
    if args.max_age is not None:
        settings["connection_max_age_s"] = args.max_age
    if args.scenario == "drain":
        result = drain(settings, args.rate, args.drain_timeout)
    else:
        result = scaleup(settings, args.rate, args.share, args.limit)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
