"""The real children lose a port and the harnesses start them again on fresh ones.

The unit tests (testkit/tests/test_operator_process_ports.py) prove the retry with a stand-in child; these
prove that what the real programs print when their port is taken -- etcd, kube-apiserver and
kube-scheduler (Go), the operator's liveness endpoint (kopf/aiohttp) and metrics server
(prometheus_client, whose message names no port), the worker (aiohttp) and Prometheus -- is
recognised, so no suite fails because another process took a port between its choice and the
bind. Each harness gets a port chooser whose chosen positions return a port that a listening
socket of this test already holds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from grm_testkit import operator_process
from grm_testkit.cluster import ports, tools
from grm_testkit.cluster.controlplane import ControlPlane, ControlPlaneOptions
from support.fakevllm import install_fake_vllm
from support.paths import REPO
from support.promserver import PrometheusServer, prometheus_binary
from support.workerproc import WorkerProcess


class TakenAt:
    """A port chooser returning `taken` at the given call positions and free ports otherwise."""

    def __init__(self, taken: int, *positions: int) -> None:
        self.taken = taken
        self.positions = set(positions)
        self.given: list[int] = []

    def __call__(self, host: str = "127.0.0.1") -> int:
        port = self.taken if len(self.given) in self.positions else ports.free_port(host)
        self.given.append(port)
        return port


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port held by a listening socket of this test that closes every connection at
    once (a probe fails fast, so the child's own exit decides, not the probe's timeout)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def refuse() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # closed by the fixture
                return
            conn.close()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    thread.join(5)


def _need_binaries(*names: str) -> None:
    absent = tools.missing(tools.k8s_bin_dir(), names)
    if absent:
        reason = f"control-plane binaries {absent} missing (run `make control-plane`)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.controlplane
def test_control_plane_and_operator_start_on_fresh_ports(taken: int, tmp_path: Path) -> None:
    _need_binaries("etcd", "kube-apiserver", "kube-scheduler")
    # Calls: etcd client+peer (0, 1: client taken), again (2, 3), kube-apiserver (4: taken), again
    # (5), kube-scheduler (6: taken), again (7).
    chooser = TakenAt(taken, 0, 4, 6)
    plane = ControlPlane(ControlPlaneOptions(scheduler=True), choose_port=chooser)
    with plane:
        assert len(chooser.given) == 8
        assert plane.etcd_url == f"http://127.0.0.1:{chooser.given[2]}"
        assert plane.url == f"https://127.0.0.1:{chooser.given[5]}"
        for component in ("etcd", "kube-apiserver", "kube-scheduler"):
            # The first start's complaint stays in the log the second start appends to.
            assert f"127.0.0.1:{taken}: bind: address already in use" in plane.log_path(component).read_text()
        status, _ = plane.request("GET", "/api/v1/namespaces/default")
        assert status == 200
        operator_process.install_crd(plane)

        # The operator: metrics port taken (prometheus_client names no port), then the
        # liveness port (aiohttp names it), then both free. Calls: health, metrics per start.
        op_chooser = TakenAt(taken, 1, 2)
        operator = operator_process.OperatorProcess(
            plane.kubeconfig, tmp_path / "operator.log", choose_port=op_chooser
        )
        with operator:
            assert len(op_chooser.given) == 6
            assert (operator.health_port, operator.metrics_port) == tuple(op_chooser.given[4:])
            assert operator.metrics() is not None
            log = operator.log_path.read_text()
            assert "[Errno 98] Address already in use" in log
            assert f"('127.0.0.1', {taken}): address already in use" in log


def test_worker_starts_on_a_fresh_port(taken: int) -> None:
    chooser = TakenAt(taken, 0)
    worker = WorkerProcess("--engine", "sim", "--startup-delay", "0", choose_port=chooser)
    try:
        worker.wait_ready(30)
        assert worker.starts == 2
        assert worker.port == chooser.given[1] != taken
        assert worker.status("/ready") == 200
    finally:
        worker.kill()


def test_worker_gives_up_when_every_start_loses_its_port(taken: int) -> None:
    worker = WorkerProcess("--engine", "sim", choose_port=TakenAt(taken, 0, 1), port_attempts=2)
    try:
        with pytest.raises(AssertionError, match=f"lost its port in each of 2 starts.*{taken}"):
            worker.wait_ready(30)
        assert worker.starts == 2
    finally:
        worker.kill()


def test_worker_starts_again_when_its_vllm_child_lost_the_engine_port(taken: int, tmp_path: Path) -> None:
    # The stand-in vLLM of support.fakevllm (the sim engine behind vLLM's module path) binds
    # --engine-port after the worker started it; the first start's engine port is taken.
    install_fake_vllm(tmp_path / "fakevllm")
    worker_dir = REPO / "worker"
    config = {
        "engine": "vllm",
        "device": "cpu",
        "precision": "fp8",
        "model": {"name": "grm-27b", "path": "/models/grm", "served_name": "grm"},
        "vllm": {
            "python": sys.executable,
            "extra_env": {
                "PYTHONPATH": f"{tmp_path / 'fakevllm'}{os.pathsep}{worker_dir}",
                "FAKE_VLLM_ARGV": str(tmp_path / "argv.json"),
            },
        },
    }
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    # Calls: front, engine (1: taken), then front, engine again.
    chooser = TakenAt(taken, 1)
    worker = WorkerProcess("--config", str(path), choose_port=chooser, engine_port=True)
    try:
        worker.wait_ready(60)
        assert worker.starts == 2
        assert worker.engine_port_chosen == chooser.given[3] != taken
        argv = json.loads((tmp_path / "argv.json").read_text())
        assert argv[argv.index("--port") + 1] == str(chooser.given[3])
    finally:
        worker.kill()


@pytest.mark.prometheus
def test_prometheus_starts_on_a_fresh_port(taken: int) -> None:
    if prometheus_binary() is None:
        reason = "prometheus not installed (make system-deps)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    chooser = TakenAt(taken, 0)
    server = PrometheusServer({"global": {"scrape_interval": "15s"}}, choose_port=chooser)
    try:
        assert server.port == chooser.given[1] != taken
        assert server.query("up") == []
    finally:
        server.stop()


def test_a_worker_that_loses_its_port_leaves_no_engine_socket_directory(
    taken: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # engine_transport unix makes the socket's directory when the engine is built, before the
    # front binds; a worker that then finds its port taken exits 2 and must not leave it behind.
    config = {
        "engine": "vllm",
        "device": "cpu",
        "engine_transport": "unix",
        "model": {"name": "grm-27b", "path": "/models/grm"},
        "vllm": {"python": sys.executable},
    }
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    # A short TMPDIR of its own (a long one gives way to /tmp: a socket path holds 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="grm-t-"))
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    worker = WorkerProcess(
        "--config", str(path), env={"TMPDIR": str(temp)}, choose_port=TakenAt(taken, 0), port_attempts=1
    )
    try:
        with pytest.raises(AssertionError, match="lost its port"):
            worker.wait_ready(60)
        assert worker.proc.returncode == 2 and "address already in use" in worker.log().lower(), worker.log()
    finally:
        worker.kill()
    assert list(temp.iterdir()) == []
