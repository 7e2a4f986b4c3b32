"""The vLLM launcher and proxy without vLLM: a stand-in `vllm.entrypoints.openai.api_server`
module (on PYTHONPATH through `vllm.extra_env`) that serves the sim engine on the port the
worker's `vllm_command` passes. Checks the command's flags arrive, the proxy relays JSON and
streams and passes /metrics through, SIGTERM stops the child's whole process group, and a dying
child makes the worker exit 1."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from support.fakepod import FakeWorker
from support.fakevllm import install_fake_vllm
from support.paths import REPO
from support.sse import streamed_usage
from support.workerproc import WorkerProcess, free_port


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Path:
    return install_fake_vllm(tmp_path / "fakevllm")


def start(
    tmp_path: Path, fake_vllm: Path, engine_port: int, transport: str = "tcp", **vllm: object
) -> WorkerProcess:
    worker_dir = REPO / "worker"
    config = {
        "engine": "vllm",
        "device": "cpu",
        "precision": "fp8",
        "model": {"name": "grm-27b", "path": "/models/grm", "served_name": "grm"},
        "engine_port": engine_port,
        "engine_transport": transport,
        "vllm": {
            "python": sys.executable,
            "extra_env": {
                "PYTHONPATH": f"{fake_vllm}{os.pathsep}{worker_dir}",
                "FAKE_VLLM_ARGV": str(tmp_path / "argv.json"),
            },
            **vllm,
        },
        "drain_timeout_s": 10,
    }
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    return WorkerProcess("--config", str(path))


@pytest.fixture
def worker(tmp_path: Path, fake_vllm: Path) -> Iterator[WorkerProcess]:
    proc = start(tmp_path, fake_vllm, free_port())
    try:
        proc.wait_ready(60)
        yield proc
    finally:
        proc.kill()


# A streamed completion asking for the usage chunk: its tokens are counted from that, not from
# the number of SSE events (one event may carry several tokens).
STREAMED = {"prompt": "hi", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}


def post(url: str, body: dict[str, object]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status), response.read()


def child_pids(worker: WorkerProcess) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == worker.proc.pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_launch_proxy_and_sigterm(worker: WorkerProcess, tmp_path: Path) -> None:
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("--quantization") + 1] == "fp8_per_channel"
    assert argv[argv.index("--served-model-name") + 1] == "grm"
    status, body = post(worker.url + "/v1/completions", {"model": "grm", "prompt": "hi", "max_tokens": 3})
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3
    status, body = post(worker.url + "/v1/completions", STREAMED)
    assert status == 200 and streamed_usage(body)["completion_tokens"] == 3
    status, body = post(worker.url + "/v1/grm/score", {"query": "q", "responses": ["a", "b"]})
    assert status == 200 and json.loads(body)["samples_used"] >= 1
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'vllm:e2e_request_latency_seconds_count{engine="0",model_name="grm"}' in text
    assert "grm_score_samples_count 1.0" in text
    children = child_pids(worker)
    assert children, "the vLLM child should be running"
    worker.terminate()
    assert worker.wait(60) == 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, "vLLM child outlived the worker"
        time.sleep(0.05)


def test_unix_transport_needs_no_port_and_ignores_a_server_on_the_engine_port(
    tmp_path: Path, fake_vllm: Path
) -> None:
    # A server on the config's engine_port that answers everything: over tcp the worker would
    # take its /health for its own child's (another pod's vLLM in a shared namespace).
    impostor = FakeWorker()
    engine_port = int(impostor.address.rsplit(":", 1)[1])
    worker = start(tmp_path, fake_vllm, engine_port, transport="unix")
    try:
        worker.wait_ready(60)
        argv = json.loads((tmp_path / "argv.json").read_text())
        assert "--port" not in argv and "--host" not in argv
        sock = Path(argv[argv.index("--uds") + 1])
        assert sock.is_socket() and stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        status, body = post(worker.url + "/v1/completions", {"model": "grm", "prompt": "hi", "max_tokens": 3})
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3
        status, body = post(worker.url + "/v1/completions", STREAMED)
        assert status == 200 and streamed_usage(body)["completion_tokens"] == 3
        with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as response:
            # The sim engine's counters, through the socket (the impostor serves none of these).
            assert (
                'vllm:e2e_request_latency_seconds_count{engine="0",model_name="grm"} 2.0'
                in response.read().decode()
            )
        worker.terminate()
        assert worker.wait(60) == 0
        assert not sock.parent.exists(), "the worker leaves no socket directory behind"
    finally:
        worker.kill()
        impostor.close()


def test_child_death_makes_the_worker_exit_1(worker: WorkerProcess) -> None:
    (child,) = child_pids(worker)
    os.kill(child, signal.SIGKILL)
    assert worker.wait(30) == 1
    assert "vLLM exited with code -9" in worker.log()


def test_child_that_never_answers_fails_start(tmp_path: Path, fake_vllm: Path) -> None:
    (fake_vllm / "vllm" / "entrypoints" / "openai" / "api_server.py").write_text("import sys; sys.exit(3)\n")
    proc = start(tmp_path, fake_vllm, free_port())
    try:
        assert proc.wait(60) == 1
        assert "vLLM exited with code 3" in proc.log()
    finally:
        proc.kill()


def test_hung_child_is_detected_by_health_checks(tmp_path: Path, fake_vllm: Path) -> None:
    proc = start(tmp_path, fake_vllm, free_port(), health_check_period_s=0.3, health_check_failures=3)
    try:
        proc.wait_ready(60)
        (child,) = child_pids(proc)
        os.kill(child, signal.SIGSTOP)  # alive but answering nothing
        assert proc.wait(30) == 1
        assert "vLLM /health failed 3 times in a row" in proc.log()
        deadline = time.monotonic() + 40
        while alive(child):
            assert time.monotonic() < deadline, "the hung child was not stopped"
            time.sleep(0.05)
    finally:
        proc.kill()
