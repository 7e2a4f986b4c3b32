"""The client-traffic helpers of the demo and the e2e tests: percentiles, trace rates, the rate map,
status snapshots, and the open-loop load generators (one connection per request; keep-alive
pools; their mix) against loopback HTTP servers."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grm_testkit.traffic import (
    KEEPALIVE_CLIENTS,
    REWARD_BATCH,
    ClientMix,
    KeepAliveClient,
    KeepAliveLoad,
    LoadGenerator,
    Outcome,
    decision_key,
    p95,
    recent,
    rescaled,
    snapshot,
    trace_rates,
)


def test_p95_nearest_rank() -> None:
    assert p95([]) is None
    assert p95([3.0]) == 3.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0
    assert p95([float(i) for i in range(1, 21)]) == 19.0


def test_recent_selects_by_finish_time() -> None:
    outcomes = [Outcome(0.0, 1.0, 200), Outcome(5.0, 1.0, 200), Outcome(9.0, 2.0, 503)]
    assert recent(outcomes, 10.0, 5.0) == [outcomes[1]]
    assert recent(outcomes, 11.0, 10.0) == outcomes


def test_trace_rates_counts_arrivals_per_bucket(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    # 4 arrivals in [0, 2), 1 in [2, 4), 2 past the slice.
    for offset in (0.1, 0.5, 1.0, 1.9, 3.0, 4.5, 7.0):
        rows.append(f"2023-11-16 18:00:{offset:010.7f},100,10")
    trace.write_text("\n".join(rows) + "\n")
    assert trace_rates(trace, start_s=0.0, span_s=4.0, buckets=2) == [2.0, 0.5]
    assert trace_rates(trace, start_s=1.0, span_s=2.0, buckets=1) == [1.0]


def test_rescaled_maps_min_to_floor_and_max_to_peak() -> None:
    rate = rescaled([5.0, 7.0, 9.0], duration_s=30.0, peak_rps=10.0, floor_rps=2.0)
    assert [rate(t) for t in (0.0, 12.0, 29.9)] == [2.0, 6.0, 10.0]
    assert rate(30.0) == 0.0 and rate(-1.0) == 0.0
    flat = rescaled([4.0, 4.0], duration_s=10.0, peak_rps=3.0, floor_rps=1.0)
    assert flat(0.0) == 1.0


def test_snapshot_reads_variants_conditions_and_decisions() -> None:
    decision = {"time": "t1", "action": "ScaleUp", "reason": "r", "replicas": 2}
    resource = {
        "status": {
            "activeVariant": "bf16",
            "variants": [
                {"name": "bf16", "readyReplicas": 2, "desiredReplicas": 2},
                {"name": "fp8", "readyReplicas": 1, "desiredReplicas": 3},
            ],
            "switch": {"from": "bf16", "to": "fp8", "phase": "Surging"},
            "conditions": [{"type": "SLOMet", "status": "False"}],
            "observed": {"e2eP95": 3.5},
            "decisions": [decision],
            "lastDecision": {"time": "t2", "action": "SwitchVariant", "reason": "s"},
        }
    }
    snap = snapshot(resource)
    assert snap.active == "bf16" and snap.switch == "bf16→fp8 Surging"
    assert snap.gpus({"bf16": 2, "fp8": 1}) == 5
    assert snap.replicas_text() == "bf16=2/2 fp8=1/3"
    assert snap.conditions == {"SLOMet": "False"} and snap.observed == {"e2eP95": 3.5}
    assert [d["action"] for d in snap.decisions] == ["ScaleUp", "SwitchVariant"]
    assert decision_key(decision) == ("t1", "ScaleUp", "r")
    assert snapshot({}).replicas_text() == ""


@pytest.fixture
def server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            body = self.rfile.read(length)
            status = 503 if b"fail" in body else 200
            payload = b'{"scores": [1, 0]}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/grm/score"
    httpd.shutdown()
    httpd.server_close()


def _wait_for(predicate: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)


def test_load_generator_sends_at_the_rate_and_records_every_outcome(server: str) -> None:
    load = LoadGenerator(server, lambda t: 40.0 if t < 0.5 else 0.0).start()
    # 0.5 s at 40/s: exactly 20 arrivals are due (t = 0, 0.025, …, 0.475).
    _wait_for(lambda: len(load.outcomes()) >= 20)
    outcomes = load.stop()
    assert len(outcomes) == 20
    assert all(o.ok for o in outcomes)
    assert [round(o.sent, 3) for o in outcomes[:1]] == [0.0]
    assert load.in_flight() == 0


def test_load_generator_counts_http_errors_and_refused_connections(server: str) -> None:
    failing = LoadGenerator(server, lambda t: 20.0 if t < 0.25 else 0.0, body={"fail": True}).start()
    _wait_for(lambda: len(failing.outcomes()) >= 5)
    outcomes = failing.stop()
    assert len(outcomes) == 5 and {o.status for o in outcomes} == {503}
    refused = LoadGenerator("http://127.0.0.1:9/", lambda t: 10.0 if t < 0.3 else 0.0, timeout_s=5).start()
    _wait_for(lambda: len(refused.outcomes()) >= 3)
    outcomes = refused.stop()
    assert len(outcomes) == 3 and {o.status for o in outcomes} == {0} and all(o.error for o in outcomes)


@pytest.fixture
def keepalive_server() -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """An HTTP/1.1 server that keeps connections alive and records each request's client address
    (one per connection); POST /v1/grm/score answers 200, or 503 for a body asking to fail."""
    peers: list[tuple[str, int]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            peers.append(self.client_address)
            status = 503 if b"fail" in body else 200
            payload = b'{"scores": [1, 0]}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", peers
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("client", KEEPALIVE_CLIENTS)
def test_keepalive_clients_reuse_connections_and_record_every_outcome(
    keepalive_server: tuple[str, list[tuple[str, int]]], client: KeepAliveClient
) -> None:
    url, peers = keepalive_server
    load = KeepAliveLoad(url, lambda t: 40.0 if t < 0.5 else 0.0, client).start()
    # 0.5 s at 40/s: 20 arrivals (the reward client sends them in batches of REWARD_BATCH).
    _wait_for(lambda: len(load.outcomes()) >= 20)
    outcomes = load.stop(10)
    assert len(outcomes) == 20 and all(o.ok for o in outcomes), outcomes[:3]
    if client == "reward":  # 5 batches of 4 sent at once
        assert sorted({round(o.sent, 3) for o in outcomes}) == [0.0, 0.1, 0.2, 0.3, 0.4]
    # Pooled keep-alive connections: far fewer connections than requests.
    assert len(set(peers)) <= 20 // 2, len(set(peers))
    failing = KeepAliveLoad(url, lambda t: 20.0 if t < 0.2 else 0.0, client, body={"fail": True}).start()
    _wait_for(lambda: len(failing.outcomes()) >= 4)
    assert {o.status for o in failing.stop(10)} == {503}


def test_client_mix_splits_the_rate_and_names_each_clients_outcomes(
    keepalive_server: tuple[str, list[tuple[str, int]]],
) -> None:
    url, _ = keepalive_server
    # Up to 0.48 s, not 0.5: ten steps of 1/20 s add up to a hair under 0.5 in floating point.
    mix = ClientMix(url, lambda t: 80.0 if t < 0.48 else 0.0).start()
    # 80/s over 4 clients: 20/s each for ~0.5 s, 10 requests each (at 0, 0.05, …, 0.45 s); the
    # reward client's batches of 4 (20/s gathers more than 4 in its window) leave at 0, 0.2 and
    # 0.4 s: 12.
    expected = {"urllib": 10, "openai": 10, "httpx": 10, "reward": 3 * REWARD_BATCH}
    _wait_for(lambda: len(mix.outcomes()) >= sum(expected.values()))
    outcomes = mix.stop(10)
    assert all(o.ok for o in outcomes) and all(-0.05 < o.sent < 0.5 for o in outcomes), [
        (o.sent, name) for name, each in mix.by_client().items() for o in each if not -0.05 < o.sent < 0.5
    ]
    by_client = mix.by_client()
    assert {k: len(v) for k, v in by_client.items()} == expected
    assert mix.in_flight() == 0
