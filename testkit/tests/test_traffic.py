"""The client-traffic helpers of the demo and the e2e tests: percentiles, trace rates, the rate map,
status snapshots, and the open-loop load generator against a loopback HTTP server."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grm_testkit.traffic import (
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
