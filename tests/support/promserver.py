"""A real Prometheus (Debian's ``prometheus`` binary) run by a test as a subprocess.

Temporary TSDB directory, a free 127.0.0.1 port, a config written by the test. Readiness and
data are polled with a deadline (the first scrape becomes queryable ~5 s after start whatever
the interval). A Prometheus that lost its port to another process before binding it ("address
already in use", or another process answers on it) is started again on a fresh port
(``grm_testkit.cluster.ports``). ``prometheus_binary()`` is None when it is not installed, for
skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from grm_testkit.cluster import ports
from grm_testkit.cluster.ports import free_port as free_port

T = TypeVar("T")


def prometheus_binary() -> str | None:
    """Path of the prometheus binary, or None."""
    return shutil.which("prometheus")


def poll(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Call ``check`` until it returns something not None, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class PrometheusServer:
    """One Prometheus process with the given scrape config; `choose_port` picks its port (again
    for each start after it lost one, at most `port_attempts` starts)."""

    def __init__(
        self,
        config: dict[str, Any],
        choose_port: Callable[[], int] = free_port,
        port_attempts: int = ports.PORT_ATTEMPTS,
    ) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("prometheus is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="grm-prom-"))
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.choose_port = choose_port
        try:
            ports.retry_on_clash(lambda: self._start(binary), "prometheus", port_attempts)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _start(self, binary: str) -> None:
        self.port = self.choose_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A new start truncates the log: only its own lines can say why it failed.
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            poll(self._ready, 30, "Prometheus to become ready")
            if self.proc.poll() is None:
                # Another Prometheus on the same port answers /-/ready just as well.
                ports.check_holder(self.proc.pid, (self.port,), "prometheus")
            # Checked after the holder too: a process that died meanwhile has no sockets to show.
            self._ready()
        except BaseException:
            self._end_process()
            raise

    def _ready(self) -> bool | None:
        if self.proc.poll() is not None:
            text = (self.dir / "prometheus.log").read_text(errors="replace")
            if (line := ports.clash_line(text, (self.port,))) is not None:
                raise ports.PortClash(f"prometheus exited with {self.proc.returncode}: {line}")
            raise RuntimeError(f"prometheus exited: {text[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return True if resp.status == 200 else None
        except OSError:
            return None

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the vector result."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scrapes_on_time(
        self, window_s: float, interval_s: float, selector: str = "", prompt_s: float = 0.15
    ) -> bool:
        """Whether every target matching ``selector`` had every scrape of the last ``window_s``
        succeed, each answered within ``prompt_s``.

        ``rate()`` is only as exact as the scrapes it extrapolates from: a scrape dropped near an
        end of the window extends the covered span by half an interval instead of to the edge, and
        a late answer carries a counter read later than its timestamp. On a loaded 2-core CI
        machine that read every counter 12 % low once (26.3 for 30 /s); a test that checks our
        queries reads a window this returns True for.
        """
        window = f"[{int(window_s)}s]"
        scrapes = self.query(f"min(sum_over_time(up{selector}{window}))")
        slowest = self.query(f"max(max_over_time(scrape_duration_seconds{selector}{window}))")
        if not scrapes or not slowest:
            return False
        # One scrape fewer than window/interval: the window's edges fall between scrapes.
        return (
            float(scrapes[0]["value"][1]) >= window_s / interval_s - 1
            and float(slowest[0]["value"][1]) < prompt_s
        )

    def _end_process(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        self._end_process()
        shutil.rmtree(self.dir, ignore_errors=True)
