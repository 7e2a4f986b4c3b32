"""Real ``grm-worker serve --engine sim`` processes on loopback, for tests that need workers
exporting genuine vLLM 0.32 metrics (continuous batching, queueing, the performance model).

A worker that lost its port to another process before binding it is started again on a fresh
one (``grm_testkit.cluster.ports``)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from grm_testkit.cluster import ports
from support.promserver import free_port, poll


class SimWorker:
    """One sim worker process, started ready to serve (no simulated load time)."""

    def __init__(
        self,
        variant: str,
        time_scale: float = 10.0,
        extra: tuple[str, ...] = (),
        choose_port: Callable[[], int] = free_port,
    ) -> None:
        self.variant = variant
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix=f"grm-sim-{variant}-", suffix=".log", delete=False
        )
        self.choose_port = choose_port
        self.options = ["--variant", variant, "--time-scale", str(time_scale), "--startup-delay", "0"]
        self.options += ["--log-level", "WARNING", *extra]
        try:
            ports.retry_on_clash(self._start, f"sim worker {variant}")
        except BaseException:
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
            raise

    def _start(self) -> None:
        self.port = self.choose_port()
        # A new start truncates the log: only its own lines can say why it failed.
        self.log.seek(0)
        self.log.truncate()
        argv = [sys.executable, "-c", "import sys; from grm_worker.cli import main; sys.exit(main())"]
        argv += ["serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(self.port), *self.options]
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            poll(self._ready, 30, f"sim worker {self.variant} to become ready")
            if self.proc.poll() is None:
                # Another worker on the same port answers /ready just as well as this one would.
                ports.check_holder(self.proc.pid, (self.port,), f"sim worker {self.variant}")
            # Checked after the holder too: a worker that died meanwhile has no sockets to show.
            self._ready()
        except BaseException:
            self._end_process()
            raise

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ready(self) -> bool | None:
        if self.proc.poll() is not None:
            text = Path(self.log.name).read_text(errors="replace")
            if (line := ports.clash_line(text, (self.port,))) is not None:
                raise ports.PortClash(f"sim worker exited with {self.proc.returncode}: {line}")
            raise RuntimeError(f"sim worker exited: {text[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.base_url}/ready", timeout=1) as resp:
                return True if json.loads(resp.read()).get("ready") else None
        except OSError:
            return None

    def _end_process(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self._end_process()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
