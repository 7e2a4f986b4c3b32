"""A `grm-worker serve` subprocess on loopback for integration tests: start, wait ready, stop.

Used by test_worker_sim.py and test_worker_vllm.py. The worker runs as a real process (the
console script's `main`), so signals, exit codes and drains are the ones a pod would see. Its
port is picked free just before it starts; when another process takes it first (the worker exits
with "address already in use", or another process answers on it), `wait_ready` starts the worker
again on a fresh port (``grm_testkit.cluster.ports``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from grm_testkit.cluster import ports
from grm_testkit.cluster.ports import free_port as free_port
from grm_worker.contract.admin import ADMIN_TOKEN_ENV, bearer_header


class WorkerProcess:
    """``grm-worker serve ARGS --host 127.0.0.1 --port P`` with its log in a temp file.

    The process starts at construction. `choose_port` picks P, again for each of up to
    `port_attempts` starts when the worker lost P to another process (tests inject a chooser
    that returns a taken port first); `port` and `url` are those of the latest start. With
    `engine_port`, the vLLM child's loopback port is chosen the same way and passed as
    ``--engine-port`` (`engine_port_chosen`): vLLM binds it many seconds after the choice, and a
    port fixed in the config file could not be chosen afresh. With `admin_port`, the admin API's
    port is chosen the same way and passed as ``--admin-port`` (`admin_url`), and the worker gets
    a random bearer token in ``GRM_ADMIN_TOKEN``, as the operator's pods do (`admin_headers`).
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        choose_port: Callable[[], int] = free_port,
        port_attempts: int = ports.PORT_ATTEMPTS,
        engine_port: bool = False,
        admin_port: bool = False,
    ) -> None:
        self.args = args
        self.engine_port = engine_port
        self.engine_port_chosen: int | None = None
        self.admin_port = admin_port
        self.admin_port_chosen: int | None = None
        self.admin_url: str | None = None
        self.admin_token = secrets.token_urlsafe(32)
        #: The header that authenticates a request to the admin API.
        self.admin_headers = bearer_header(self.admin_token)
        self.env = {
            **os.environ,
            **({ADMIN_TOKEN_ENV: self.admin_token} if admin_port else {}),
            **(env or {}),
        }
        self.choose_port = choose_port
        self.port_attempts = port_attempts
        self.starts = 0
        self.log_path = Path(tempfile.mkstemp(prefix="grm-worker-", suffix=".log")[1])
        self._start()

    def _start(self) -> None:
        self.port = self.choose_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts += 1
        argv = [
            sys.executable,
            "-c",
            "import sys; from grm_worker.cli import main; sys.exit(main())",
            "serve",
        ]
        argv += [*self.args, "--host", "127.0.0.1", "--port", str(self.port)]
        if self.engine_port:
            self.engine_port_chosen = self.choose_port()
            argv += ["--engine-port", str(self.engine_port_chosen)]
        if self.admin_port:
            self.admin_port_chosen = self.choose_port()
            self.admin_url = f"http://127.0.0.1:{self.admin_port_chosen}"
            argv += ["--admin-port", str(self.admin_port_chosen)]
        # A new start truncates the log: only its own lines can say why it failed.
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def wait_ready(self, timeout: float) -> None:
        """Wait until ``/ready`` answers 200 from this worker (up to `timeout` s per start),
        starting it again on a fresh port when it lost its port; AssertionError otherwise."""
        while True:
            try:
                self._wait_ready_once(timeout)
                return
            except ports.PortClash as clash:
                if self.starts >= self.port_attempts:
                    raise AssertionError(
                        f"worker lost its port in each of {self.starts} starts: {clash}"
                    ) from None
                self.kill()
                self._start()

    def _wait_ready_once(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.status("/ready") != 200:
            self._raise_if_exited()
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready after {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        if self.proc.poll() is None:
            # Another worker on the same port answers /ready just as well as this one would.
            # Likewise another suite's vLLM on the engine port answers the worker's health
            # checks while its own vLLM child has died of the clash.
            ports.check_holder(self.proc.pid, self._chosen(), "grm-worker")
        # Checked after the holder too: a worker that died meanwhile has no sockets to show.
        self._raise_if_exited()

    def _chosen(self) -> tuple[int, ...]:
        extra = (self.engine_port_chosen, self.admin_port_chosen)
        return (self.port, *(port for port in extra if port is not None))

    def _raise_if_exited(self) -> None:
        if self.proc.poll() is None:
            return
        if (line := ports.clash_line(self.log(), self._chosen())) is not None:
            raise ports.PortClash(f"worker exited with {self.proc.returncode}: {line}")
        raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """End the worker and anything it started (its session), whatever state it is in."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)
