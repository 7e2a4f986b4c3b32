"""Lost-port recovery of the test harnesses (grm_testkit.cluster.ports, operator_process.OperatorProcess).

The pure part reads the "address already in use" lines the real children print (captured from
etcd 3.6, kube-apiserver/klog, Prometheus, aiohttp and socketserver). The harness part runs
OperatorProcess with a stand-in child (a tiny HTTP server on GRM_HEALTH_PORT, ~0.1 s to start)
and an injected port chooser whose first port is already taken, and checks that the process
comes up on another port, that a squatter answering the probe is not mistaken for the child,
and that every other failure surfaces at once.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from grm_testkit import operator_process
from grm_testkit.cluster import ports

ETCD = (
    '{"level":"fatal","ts":"2026-11-26T21:06:17.104697Z","caller":"etcdmain/etcd.go:183",'
    '"msg":"discovery failed","error":"listen tcp 127.0.0.1:38245: bind: address already in use"}'
)
APISERVER = (
    'E1126 21:06:17.503353    3456 run.go:72] "command failed" err="failed to create listener: failed to '
    'listen on 127.0.0.1:6443: listen tcp 127.0.0.1:6443: bind: address already in use"'
)
PROMETHEUS = (
    'ts=2026-11-26T21:06:17.217Z caller=main.go:802 level=error msg="Unable to start web listener" '
    'err="listen tcp 127.0.0.1:9090: bind: address already in use"'
)
AIOHTTP = (
    "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 55685): "
    "address already in use"
)
SOCKETSERVER = "OSError: [Errno 98] Address already in use"


def test_ports_named_reads_go_and_python_addresses_but_not_timestamps() -> None:
    assert ports.ports_named(ETCD) == {38245}
    assert ports.ports_named(APISERVER) == {6443}
    assert ports.ports_named(PROMETHEUS) == {9090}
    assert ports.ports_named(AIOHTTP) == {55685}
    assert ports.ports_named("listen tcp [::1]:2380: bind") == {2380}
    assert ports.ports_named("listen tcp :10259: bind") == {10259}
    assert ports.ports_named(SOCKETSERVER) == set()
    assert ports.ports_named("E1126 21:06:17.503353 ts=2026-11-26T21:06:17Z") == set()


@pytest.mark.parametrize(
    ("text", "port"),
    [(ETCD, 38245), (APISERVER, 6443), (PROMETHEUS, 9090), (AIOHTTP, 55685)],
)
def test_a_clash_on_a_chosen_port_is_recognised(text: str, port: int) -> None:
    log = f"starting\nsome warning about 127.0.0.1:1\n{text}\nexiting\n"
    assert ports.clash_line(log, (1234, port)) == text
    # The same line about a port the harness did not choose is somebody else's problem.
    assert ports.clash_line(log, (1234,)) is None


def test_an_address_in_use_line_without_an_address_is_attributed_to_the_chosen_ports() -> None:
    # prometheus_client's metrics server (socketserver) names no port; only the harness's ports
    # were asked for, so fresh ports are the remedy.
    log = 'File "socketserver.py", line 472, in server_bind\n' + SOCKETSERVER + "\n"
    assert ports.clash_line(log, (8080,)) == SOCKETSERVER


@pytest.mark.parametrize(
    "text",
    [
        "OSError: [Errno 99] Cannot assign requested address",
        "dial tcp 127.0.0.1:2379: connect: connection refused",
        "FileNotFoundError: [Errno 2] No such file or directory: '/kubeconfig'",
        "panic: runtime error: invalid memory address",
        "",
    ],
)
def test_other_failures_are_no_clash(text: str) -> None:
    assert ports.clash_line(text, (2379,)) is None


def test_retry_on_clash_retries_only_clashes_and_only_so_often() -> None:
    calls: list[int] = []

    def clashing_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ports.PortClash("taken")
        return "up"

    assert ports.retry_on_clash(clashing_twice, "thing", attempts=3) == "up"
    assert len(calls) == 3

    calls.clear()
    with pytest.raises(ports.PortClash, match="lost its ports in each of 2 attempts"):
        ports.retry_on_clash(clashing_twice, "thing", attempts=2)
    assert len(calls) == 2

    calls.clear()

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ports.retry_on_clash(broken, "thing")
    assert len(calls) == 1


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_holder_tells_the_child_from_another_process() -> None:
    with _listener() as mine:
        port = mine.getsockname()[1]
        assert ports.holder(os.getpid(), port) == "child"
        # A child of ours that does not listen sees the port held by another process (us).
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        try:
            assert ports.holder(child.pid, port) == "other"
            # ... and we, its parent, count its sockets as ours.
            assert ports.holder(os.getpid(), port) == "child"
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)
    assert ports.holder(os.getpid(), port) == "none"


# --- OperatorProcess with a stand-in child --------------------------------------------------------

# Serves 200 on GRM_HEALTH_PORT like kopf's liveness endpoint. When the port is taken it exits
# with socketserver's traceback ("exit"), or stays up without a listener ("hang": a child that
# does not die of it, so only the port's holder can tell).
CHILD = """
import http.server, os, sys, time
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
mode = sys.argv[1]
if mode == "fail":
    print("kopf: login failed: 401 Unauthorized", flush=True)
    sys.exit(3)
if mode == "foreign":
    print("OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 1): "
          "address already in use", flush=True)
    sys.exit(1)
try:
    server = http.server.HTTPServer(("127.0.0.1", int(os.environ["GRM_HEALTH_PORT"])), Health)
except OSError:
    if mode == "hang":
        time.sleep(600)
    raise
server.serve_forever()
"""


class _Squatter:
    """Another process's server on a port: closing each connection at once (a probe fails fast,
    so the child's exit decides), or answering 200 like a healthy peer."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.server: http.server.HTTPServer | None = None
        self.sock: socket.socket | None = None
        if answer:

            class Ok(http.server.BaseHTTPRequestHandler):
                def do_GET(self) -> None:
                    self.send_response(200)
                    self.end_headers()

                def log_message(self, *args: object) -> None:
                    pass

            self.server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
            self.port = self.server.server_address[1]
            threading.Thread(
                target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ).start()
        else:
            self.sock = _listener()
            self.port = self.sock.getsockname()[1]
            threading.Thread(target=self._refuse, args=(self.sock,), daemon=True).start()

    @staticmethod
    def _refuse(sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # closed
                return
            conn.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


@pytest.fixture
def squatters() -> Iterator[Callable[[bool], _Squatter]]:
    made: list[_Squatter] = []

    def make(answer: bool) -> _Squatter:
        made.append(_Squatter(answer))
        return made[-1]

    yield make
    for squatter in made:
        squatter.close()


class _Chooser:
    """Returns the given ports first, then free ones; records what it handed out."""

    def __init__(self, *first: int) -> None:
        self.first = list(first)
        self.given: list[int] = []

    def __call__(self) -> int:
        port = self.first.pop(0) if self.first else operator_process.free_port()
        self.given.append(port)
        return port


def _operator(
    tmp_path: Path, mode: str, chooser: _Chooser, attempts: int = 3
) -> operator_process.OperatorProcess:
    return operator_process.OperatorProcess(
        tmp_path / "kubeconfig",
        tmp_path / "operator.log",
        command=[sys.executable, "-c", CHILD, mode],
        choose_port=chooser,
        port_attempts=attempts,
    )


@pytest.mark.parametrize(
    ("mode", "answer"),
    [
        ("exit", False),  # the child dies of "Address already in use"
        ("exit", True),  # ... while the squatter already answers the probe
        ("hang", True),  # the child lives on without its port; only the holder says so
    ],
)
def test_operator_process_starts_again_on_fresh_ports_after_losing_one(
    tmp_path: Path, squatters: Callable[[bool], _Squatter], mode: str, answer: bool
) -> None:
    taken = squatters(answer).port
    chooser = _Chooser(taken)
    operator = _operator(tmp_path, mode, chooser)
    try:
        operator.start(timeout_s=30)
        assert operator.running
        assert chooser.given[0] == taken
        assert len(chooser.given) == 4  # health + metrics, twice
        assert operator.health_port == chooser.given[2] != taken
        assert operator.popen is not None
        assert ports.holder(operator.popen.pid, operator.health_port) == "child"
    finally:
        operator.stop()
    if not answer:
        # The first child's death is in the log the retries append to.
        assert "Address already in use" in operator.log_path.read_text()


def test_operator_process_gives_up_after_its_attempts(
    tmp_path: Path, squatters: Callable[[bool], _Squatter]
) -> None:
    taken = squatters(True).port
    chooser = _Chooser(taken, operator_process.free_port(), taken, operator_process.free_port())
    operator = _operator(tmp_path, "exit", chooser, attempts=2)
    with pytest.raises(
        operator_process.PortClash, match=f"each of 2 attempts.*port {taken} is held by another"
    ):
        operator.start(timeout_s=30)
    assert not operator.running
    assert chooser.given[::2] == [taken, taken]


@pytest.mark.parametrize(
    ("mode", "message"),
    [("fail", "401 Unauthorized"), ("foreign", "address already in use")],
)
def test_operator_process_other_failures_are_not_retried(tmp_path: Path, mode: str, message: str) -> None:
    chooser = _Chooser()
    operator = _operator(tmp_path, mode, chooser)
    with pytest.raises(RuntimeError, match="operator exited with") as raised:
        operator.start(timeout_s=30)
    assert not isinstance(raised.value, ports.PortClash)
    assert message in str(raised.value)
    assert len(chooser.given) == 2  # one start only
