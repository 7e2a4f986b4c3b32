"""The HTTP front over an in-process sim engine: relay, score, admin (and its bearer token),
readiness, drain, metrics, and requests abandoned by their clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from grm_worker.contract.admin import bearer_header
from grm_worker.contract.config import WorkerConfig
from grm_worker.engines.sim import SimEngine
from grm_worker.engines.simtext import response_quality
from grm_worker.server import Front
from support.sse import streamed_usage

# The admin API's bearer token in these tests (the operator's is 43 random URL-safe characters).
TOKEN = "test-admin-token-0123456789"

# Two responses the sim GRM rates 9 and 3 (± 1 per sample): early exit must trigger.
GOOD = next(f"good {i}" for i in range(1000) if response_quality(f"good {i}") == 9)
BAD = next(f"bad {i}" for i in range(1000) if response_quality(f"bad {i}") == 3)


async def client_for(**fields: Any) -> tuple[TestClient[Any, Any], Front]:
    config = WorkerConfig.model_validate(
        {"engine": "sim", "precision": "fp8", "sim": {"time_scale": 1000.0}, **fields}
    )
    engine = SimEngine(config)
    front = Front(config, engine, admin_token=TOKEN)
    await engine.start()
    client: TestClient[Any, Any] = TestClient(TestServer(front.app))
    await client.start_server()
    return client, front


def http_server(client: TestClient[Any, Any]) -> web.Server:
    """The aiohttp server under a test client (its connections are what a drain closes)."""
    runner = client.server.runner
    assert runner is not None and runner.server is not None
    return runner.server


async def admin_client_for(front: Front, token: str | None = TOKEN) -> TestClient[Any, Any]:
    """A client of the front's admin API (the listener on ``admin_port``), sending ``token``."""
    headers = bearer_header(token) if token is not None else None
    client: TestClient[Any, Any] = TestClient(TestServer(front.admin_app), headers=headers)
    await client.start_server()
    return client


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[Any, Any], Front]]:
    client, front = await client_for(
        scoring={"samples_max": 16, "samples_default": 16, "samples_per_round": 2}
    )
    yield client, front
    await client.close()
    await front.engine.stop()


async def test_relays_completions_chat_stream_and_models(served: tuple[TestClient[Any, Any], Front]) -> None:
    client, _ = served
    r = await client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 3})
    body = await r.json()
    assert r.status == 200 and body["usage"]["completion_tokens"] == 3
    r = await client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert streamed_usage(await r.text())["completion_tokens"] == 2
    r = await client.get("/v1/models")
    assert (await r.json())["data"][0]["id"] == "grm"
    r = await client.post("/v1/completions", data=b"{not json")
    assert r.status == 400


async def test_score_exits_early_and_reports_metrics(served: tuple[TestClient[Any, Any], Front]) -> None:
    client, _ = served
    r = await client.post("/v1/grm/score", json={"query": "q", "responses": [BAD, GOOD], "seed": 3})
    body = await r.json()
    assert r.status == 200, body
    assert body["winner"] == 1 and body["early_exit"] is True
    assert body["samples_used"] < body["samples_budget"] == 16 and body["parse_failures"] == 0
    r = await client.post(
        "/v1/grm/score",
        json={"query": "q", "responses": [BAD, GOOD], "early_exit": "off", "sampling": "shared-prefill"},
    )
    body = await r.json()
    assert body["samples_used"] == 16 and body["early_exit"] is False and body["winner"] == 1
    text = await (await client.get("/metrics")).text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["grm_score_early_exits"].samples[0].value == 1
    assert fams["grm_score_samples"].type == "histogram"
    assert "vllm:time_to_first_token_seconds" in fams and "grm_worker_gpu_utilization_ratio" in fams
    assert fams["grm_sample_budget"].samples[0].value == 16


@pytest.mark.parametrize(
    "body",
    [
        {"query": "q", "responses": ["only one"]},
        {"query": "q", "responses": ["a"] * 17},
        {"query": "", "responses": ["a", "b"]},
        {"query": "q", "responses": ["a", 3]},
        {"query": "q", "responses": ["a", "b"], "samples": 0},
        {"query": "q", "responses": ["a", "b"], "sampling": "random"},
        {"query": "q", "responses": ["a", "b"], "early_exit": "maybe"},
    ],
)
async def test_score_rejects_bad_requests(
    served: tuple[TestClient[Any, Any], Front], body: dict[str, Any]
) -> None:
    client, _ = served
    r = await client.post("/v1/grm/score", json=body)
    assert r.status == 400 and "error" in await r.json()


async def test_truncated_critiques_count_as_parse_failures() -> None:
    client, front = await client_for(scoring={"max_tokens": 50, "samples_default": 3})
    r = await client.post("/v1/grm/score", json={"query": "q", "responses": ["a", "b"]})
    body = await r.json()
    assert body["parse_failures"] == 3 and body["winner"] is None
    await client.close()
    await front.engine.stop()


async def test_admin_api_is_not_served_on_the_front_port(
    served: tuple[TestClient[Any, Any], Front],
) -> None:
    """The Service forwards only the front's port: the admin routes must not exist there."""
    client, front = served
    for path in ("/admin/samples", "/admin/sim"):
        assert (await client.get(path)).status == 404
        assert (await client.post(path, json={"samples": 1, "crash": True})).status == 404
    assert front.samples_budget == 16 and await front.engine.ready()
    admin = await admin_client_for(front)
    assert (await admin.get("/v1/models")).status == 404 and (await admin.get("/metrics")).status == 404
    await admin.close()


async def test_admin_api_requires_the_bearer_token(
    served: tuple[TestClient[Any, Any], Front], caplog: pytest.LogCaptureFixture
) -> None:
    """Pod IPs are reachable from every pod: without ``Authorization: Bearer <token>`` (or with
    another token, another scheme, a prefix of it) the admin API answers 401 and changes nothing;
    the refusals are counted and logged, and no log line holds the token."""
    _, front = served
    caplog.set_level("DEBUG")
    for token in (None, "wrong", TOKEN[:-1], TOKEN + "x", ""):
        anonymous = await admin_client_for(front, token)
        r = await anonymous.post("/admin/samples", json={"samples": 2})
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await r.json())["error"]["type"] == "AuthenticationError"
        assert (await anonymous.post("/admin/sim", json={"crash": True})).status == 401
        await anonymous.close()
    basic = await admin_client_for(front, None)
    r = await basic.get("/admin/samples", headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status == 401
    await basic.close()
    assert front.samples_budget == 16 and await front.engine.ready()
    rejected = front.metrics.admin_rejected._value.get()
    assert rejected == 11
    admin = await admin_client_for(front)
    assert (await admin.post("/admin/samples", json={"samples": 2})).status == 200
    await admin.close()
    assert front.samples_budget == 2
    assert any("refused" in record.getMessage() for record in caplog.records)
    assert not any(TOKEN in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("insecure", [False, True])
async def test_admin_api_without_a_token_is_off_unless_insecure(insecure: bool) -> None:
    """A worker started without a token refuses every admin request (whatever it is sent);
    ``admin_insecure`` (``--admin-insecure``, local development) serves them unauthenticated."""
    config = WorkerConfig.model_validate({"engine": "sim", "precision": "fp8"})
    front = Front(config, SimEngine(config), admin_insecure=insecure)
    for token in (None, TOKEN):
        admin = await admin_client_for(front, token)
        r = await admin.get("/admin/samples")
        assert r.status == (200 if insecure else 401)
        if not insecure:
            assert "GRM_ADMIN_TOKEN" in (await r.json())["error"]["message"]
        await admin.close()


async def test_admin_samples_bounds_and_budget_caps_requests(
    served: tuple[TestClient[Any, Any], Front],
) -> None:
    client, front = served
    admin = await admin_client_for(front)
    assert (await (await admin.get("/admin/samples")).json()) == {"samples": 16, "min": 1, "max": 16}
    for bad in (0, 17, "4", True):
        assert (await admin.post("/admin/samples", json={"samples": bad})).status == 400
    r = await admin.post("/admin/samples", json={"samples": 2})
    assert (await r.json())["samples"] == 2
    await admin.close()
    body = await (
        await client.post("/v1/grm/score", json={"query": "q", "responses": ["x", "y"], "samples": 8})
    ).json()
    assert body["samples_budget"] == 2 and body["samples_used"] <= 2


async def test_admin_sim_injects_faults(served: tuple[TestClient[Any, Any], Front]) -> None:
    client, front = served
    admin = await admin_client_for(front)
    assert (await admin.post("/admin/sim", json={"slowdown": 0})).status == 400
    assert (await admin.post("/admin/sim", json={"error_rate": 2})).status == 400
    r = await admin.post("/admin/sim", json={"error_rate": 1.0, "slowdown": 2.0})
    assert (await r.json()) == {"slowdown": 2.0, "error_rate": 1.0, "crashed": None}
    assert (await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1})).status == 500
    await admin.post("/admin/sim", json={"crash": True, "error_rate": 0})
    await admin.close()
    assert (await client.get("/ready")).status == 503
    assert isinstance(front.engine, SimEngine) and front.engine.faults.crashed == "injected crash"


async def test_ready_waits_for_startup_and_drain_serves_new_and_in_flight_with_connection_close() -> None:
    client, front = await client_for(sim={"time_scale": 10.0, "startup_delay_s": 1.0})
    assert (await client.get("/ready")).status == 503
    assert (await client.get("/health")).status == 200
    deadline = asyncio.get_running_loop().time() + 5
    while (await client.get("/ready")).status != 200:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    before = await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1})
    assert before.status == 200 and before.headers.get("Connection") != "close"
    # ~0.9 simulated s of decoding at 10×: in flight while the drain starts.
    slow = asyncio.create_task(client.post("/v1/completions", json={"prompt": "a", "max_tokens": 60}))
    while front.in_flight == 0:
        await asyncio.sleep(0.001)
    drain = asyncio.create_task(front.drain(timeout=10, server=http_server(client)))
    await asyncio.sleep(0)
    assert (await client.get("/ready")).status == 503
    # A request the worker can still serve is served (per-connection balancing sends it no other
    # way), and told to reconnect elsewhere.
    late = await client.post("/v1/completions", json={"prompt": "b", "max_tokens": 1})
    assert late.status == 200 and late.headers["Connection"] == "close"
    response = await slow
    assert response.status == 200 and (await response.json())["usage"]["completion_tokens"] == 60
    assert response.headers["Connection"] == "close"
    assert await drain is True
    assert not http_server(client).connections
    text = front.metrics.render()
    assert 'grm_connections_recycled_total{reason="draining"}' in text
    await client.close()
    await front.engine.stop()


async def test_drain_closes_an_idle_keepalive_connection_once_it_idled_and_then_ends() -> None:
    client, front = await client_for()
    server = http_server(client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    before = time.monotonic()
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: worker\r\n\r\n")
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    assert head.startswith("HTTP/1.1 200") and "Connection: close" not in head
    length = int(next(h for h in head.split("\r\n") if h.lower().startswith("content-length")).split(":")[1])
    await reader.readexactly(length)
    # The connection is idle and kept alive; the drain leaves it to its client for 2 s, then closes it.
    assert await front.drain(timeout=10, server=server) is True
    assert time.monotonic() - before >= 2.0
    assert await reader.read() == b""  # the worker closed it
    assert not server.connections
    writer.close()
    await client.close()
    await front.engine.stop()


async def test_connection_closed_at_max_requests_and_after_max_age() -> None:
    client, front = await client_for(connection_max_requests=3, connection_max_age_s=0)
    headers = []
    for _ in range(4):
        r = await client.get("/v1/models")
        headers.append(r.headers.get("Connection"))
    # The third response closes the connection; the fourth request opens a new one.
    assert headers == [None, None, "close", None], headers
    await client.close()
    await front.engine.stop()

    client, front = await client_for(connection_max_age_s=0.2)
    first = await client.get("/v1/models")
    assert first.headers.get("Connection") is None
    # 0.2 s ± 10 %: 0.25 s after its first request the connection is past its age (the wait is
    # the condition itself: the clock is monotonic).
    await asyncio.sleep(0.25)
    aged = await client.get("/v1/models")
    assert aged.headers["Connection"] == "close"
    assert (await client.get("/v1/models")).headers.get("Connection") is None  # a new connection
    samples = {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(front.metrics.render())
        if f.name == "grm_connections_recycled"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert samples == {"max_age": 1.0, "max_requests": 0.0, "draining": 0.0}, samples
    await client.close()
    await front.engine.stop()


async def test_drain_times_out_with_stuck_requests() -> None:
    client, front = await client_for(sim={"time_scale": 1.0})
    stuck = asyncio.create_task(client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2000}))
    while front.in_flight == 0:
        await asyncio.sleep(0.001)
    assert await front.drain(timeout=0.05) is False
    stuck.cancel()
    await client.close()
    await front.engine.stop()


def _abandoned(front: Front, endpoint: str) -> float:
    return float(front.metrics.abandoned.labels(endpoint=endpoint)._value.get())


async def _engine_counts(engine: SimEngine) -> tuple[float, float]:
    """(sequences in the engine's batch or queue, sequences finished as ``abort``)."""
    values = {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(await engine.metrics_text())
        for s in f.samples
    }
    busy = sum(
        v
        for k, v in values.items()
        if k.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting"))
    )
    aborted = sum(v for k, v in values.items() if k.startswith("vllm:request_success_total") and "abort" in k)
    return busy, aborted


async def _until(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("endpoint", "path", "body"),
    [
        ("score", "/v1/grm/score", {"query": "q", "responses": ["a", "b"], "early_exit": "off"}),
        (
            "chat",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000},
        ),
        ("completions", "/v1/completions", {"prompt": "x", "max_tokens": 3000, "n": 2}),
    ],
)
async def test_a_client_that_leaves_a_non_streamed_request_stops_its_engine_work(
    endpoint: str, path: str, body: dict[str, Any]
) -> None:
    """The client disconnects while its (non-streamed) request runs: the handler is cancelled,
    every sequence it put in the engine is aborted (the batch empties long before the work would
    have ended) and ``grm_requests_abandoned_total{endpoint}`` counts it."""
    client, front = await client_for(
        sim={"time_scale": 1.0, "output_tokens": 3000},
        scoring={"samples_max": 8, "samples_default": 8, "samples_per_round": 8},
    )
    engine = front.engine
    assert isinstance(engine, SimEngine)
    import aiohttp

    async with aiohttp.ClientSession() as leaving:
        request = asyncio.create_task(leaving.post(client.make_url(path), json=body))

        async def in_engine() -> bool:
            return front.in_flight == 1 and (await _engine_counts(engine))[0] > 0

        await _until(in_engine, "the request reached the engine")
        request.cancel()  # the client gives up: aiohttp closes its connection
        await asyncio.gather(request, return_exceptions=True)

        async def stopped() -> bool:
            busy, aborted = await _engine_counts(engine)
            return front.in_flight == 0 and busy == 0 and aborted > 0

        await _until(stopped, "the engine's work for the request stopped")
    assert _abandoned(front, endpoint) == 1
    assert sum(_abandoned(front, e) for e in ("score", "chat", "completions")) == 1
    # The front still serves: a request that stays gets its answer.
    r = await client.post("/v1/completions", json={"prompt": "y", "max_tokens": 2})
    assert r.status == 200
    await client.close()
    await engine.stop()
