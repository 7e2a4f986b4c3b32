"""Real ``grm-worker serve --engine sim`` processes on loopback, for tests that need workers
exporting genuine vLLM 0.32 metrics (continuous batching, queueing, the performance model)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from promserver import free_port, poll


class SimWorker:
    """One sim worker process, started ready to serve (no simulated load time)."""

    def __init__(self, variant: str, time_scale: float = 10.0, extra: tuple[str, ...] = ()) -> None:
        self.variant = variant
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix=f"grm-sim-{variant}-", suffix=".log", delete=False
        )
        argv = [sys.executable, "-c", "import sys; from grm_worker.cli import main; sys.exit(main())"]
        argv += ["serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--variant", variant, "--time-scale", str(time_scale), "--startup-delay", "0"]
        argv += ["--log-level", "WARNING", *extra]
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        poll(self._ready, 30, f"sim worker {variant} to become ready")

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
            raise RuntimeError(f"sim worker exited: {Path(self.log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.base_url}/ready", timeout=1) as resp:
                return True if json.loads(resp.read()).get("ready") else None
        except OSError:
            return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
