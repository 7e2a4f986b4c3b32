"""Shadow scoring: sampling, the bounded queue, the reservoir, verdict comparison, and the two
promises — a slow or dead reference never delays the user's request, and shadow requests
answered by the reference are not demand (its demand counters do not move)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from grm_testkit.cluster.ports import free_port
from grm_worker.contract.config import WorkerConfig
from grm_worker.engines.sim import SimEngine
from grm_worker.engines.simtext import response_quality, verdict_flipped
from grm_worker.server import Front
from grm_worker.shadow import SHADOW_HEADER, Reservoir, ShadowItem

# Response pairs of different sim quality (no ties: their winner is not a coin toss).
PAIRS = [
    (a, b)
    for a, b in ((f"answer {i}", f"other {i}") for i in range(400))
    if response_quality(a) != response_quality(b)
]


def metric_values(text: str) -> dict[str, float]:
    """Every sample of an exposition text, summed over label sets, by sample name."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def labelled(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait for a condition (polled), failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


async def start_front(**fields: Any) -> tuple[TestClient[Any, Any], Front]:
    port = fields.pop("_port", None)
    config = WorkerConfig.model_validate(
        {
            "engine": "sim",
            "precision": "fp8",
            "variant": "fp8",
            "sim": {"time_scale": 1000.0},
            "scoring": {"samples_max": 4, "samples_default": 4},
            **fields,
        }
    )
    engine = SimEngine(config)
    front = Front(config, engine)
    await engine.start()
    client: TestClient[Any, Any] = TestClient(TestServer(front.app, port=port))
    await client.start_server()
    return client, front


async def stop_front(client: TestClient[Any, Any], front: Front) -> None:
    await client.close()
    await front.engine.stop()


class HeldReference:
    """A reference that accepts shadow scores and answers only when the test releases them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived = 0
        app = web.Application()
        app.router.add_post("/v1/grm/score", self._score)
        self.server = TestServer(app)

    async def _score(self, request: web.Request) -> web.Response:
        assert request.headers[SHADOW_HEADER] == "fp8"
        self.arrived += 1
        body = await request.json()
        await self.release.wait()
        return web.json_response({"winner": 0 if len(body["responses"]) else None})


@pytest.fixture
async def held() -> AsyncIterator[HeldReference]:
    reference = HeldReference()
    await reference.server.start_server()
    yield reference
    reference.release.set()
    await reference.server.close()


def test_reservoir_is_bounded_and_uniform() -> None:
    kept = [0] * 100
    for trial in range(300):
        reservoir = Reservoir(10, random.Random(trial))
        for i in range(100):
            reservoir.offer(ShadowItem({"i": i}, 0))
        assert len(reservoir) == 10 and reservoir.seen == 100
        for item in reservoir.items:
            kept[item.body["i"]] += 1
    # Each of the 100 is kept with probability 0.1: 30 of 300 trials, expected alike for the
    # first and the last tenth of the stream (a FIFO would keep only the last 10).
    first, last = sum(kept[:10]), sum(kept[90:])
    assert 200 <= first <= 400 and 200 <= last <= 400
    reservoir = Reservoir(3, random.Random(0))
    for i in range(3):
        assert reservoir.offer(ShadowItem({"i": i}, 0)) is False
    assert reservoir.offer(ShadowItem({"i": 3}, 0)) is True
    assert len(reservoir.take(2)) == 2 and len(reservoir) == 1
    assert len(reservoir.take(5)) == 1 and reservoir.seen == 0


def test_sim_verdict_flip_reverses_about_that_fraction_of_response_sets() -> None:
    sets = [[f"a{i}", f"b{i}"] for i in range(2000)]
    flipped = sum(verdict_flipped(s, 0.3) for s in sets)
    assert 500 <= flipped <= 700
    assert not any(verdict_flipped(s, 0.0) for s in sets)
    assert all(verdict_flipped(s, 1.0) for s in sets)
    assert all(verdict_flipped(s, 0.3) == verdict_flipped(s[::-1], 0.3) for s in sets)


async def test_flipped_sim_picks_the_other_winner() -> None:
    good_client, good = await start_front()
    bad_client, bad = await start_front(sim={"time_scale": 1000.0, "verdict_flip": 1.0})
    try:
        for a, b in PAIRS[:5]:
            body = {"query": "q", "responses": [a, b], "seed": 1}
            w_good = (await (await good_client.post("/v1/grm/score", json=body)).json())["winner"]
            w_bad = (await (await bad_client.post("/v1/grm/score", json=body)).json())["winner"]
            assert w_good == (0 if response_quality(a) > response_quality(b) else 1)
            assert w_bad == 1 - w_good
    finally:
        await stop_front(good_client, good)
        await stop_front(bad_client, bad)


async def test_slow_reference_never_delays_the_user_and_a_full_queue_drops(held: HeldReference) -> None:
    shadow = {
        "fraction": 1.0,
        "reference_url": str(held.server.make_url("")),
        "concurrency": 1,
        "queue_size": 2,
    }
    client, front = await start_front(shadow=shadow)
    try:
        # Every answer comes back while the reference holds the first shadow request unanswered:
        # the user's request never waits for its shadow.
        for a, b in PAIRS[:6]:
            r = await client.post("/v1/grm/score", json={"query": "q", "responses": [a, b]})
            assert r.status == 200
        assert not held.release.is_set()

        async def arrived() -> bool:
            return held.arrived == 1

        await until(arrived)
        text = await (await client.get("/metrics")).text()
        # 6 sampled: 1 in flight at the reference, 2 queued, 3 dropped (queue full).
        assert metric_values(text)["grm_shadow_sampled_total"] == 6
        assert labelled(text, "grm_shadow_dropped_total", reason="queue_full") == 3
        held.release.set()

        async def compared() -> bool:
            text = await (await client.get("/metrics")).text()
            return metric_values(text)["grm_shadow_verdicts_total"] == 3

        await until(compared)
    finally:
        await stop_front(client, front)


async def test_timed_out_shadow_is_dropped_and_the_reference_stays_up(held: HeldReference) -> None:
    shadow = {"fraction": 1.0, "reference_url": str(held.server.make_url("")), "timeout_s": 0.05}
    client, front = await start_front(shadow=shadow)
    try:
        r = await client.post("/v1/grm/score", json={"query": "q", "responses": list(PAIRS[0])})
        assert r.status == 200

        async def timed_out() -> bool:
            text = await (await client.get("/metrics")).text()
            return labelled(text, "grm_shadow_dropped_total", reason="timeout") == 1

        await until(timed_out)
        assert front.shadow.reference_up and len(front.shadow.reservoir) == 0
    finally:
        await stop_front(client, front)


async def test_dead_reference_keeps_a_reservoir_and_replays_it_once_the_reference_answers() -> None:
    port = free_port()
    shadow = {
        "fraction": 1.0,
        "reference_url": f"http://127.0.0.1:{port}",
        "reservoir_size": 4,
        "probe_interval_s": 0.05,
    }
    client, front = await start_front(shadow=shadow)
    reference: tuple[TestClient[Any, Any], Front] | None = None
    try:
        for a, b in PAIRS[:10]:
            r = await client.post("/v1/grm/score", json={"query": "q", "responses": [a, b]})
            assert r.status == 200

        async def kept() -> bool:
            return not front.shadow.reference_up and len(front.shadow.reservoir) == 4

        await until(kept)
        text = await (await client.get("/metrics")).text()
        assert metric_values(text)["grm_shadow_reference_up"] == 0
        assert metric_values(text)["grm_shadow_reservoir_requests"] == 4
        assert labelled(text, "grm_shadow_dropped_total", reason="reservoir_full") == 6
        # The reference (a correct sim of the same seed) starts on that port: the probe sees it
        # and the 4 kept requests are replayed and compared, all agreeing.
        reference = await start_front(precision="bf16", variant="bf16", _port=port)

        async def replayed() -> bool:
            text = await (await client.get("/metrics")).text()
            return labelled(text, "grm_shadow_verdicts_total", mode="replay") == 4

        await until(replayed)
        text = await (await client.get("/metrics")).text()
        assert labelled(text, "grm_shadow_agreements_total", mode="replay") == 4
        assert metric_values(text)["grm_shadow_reference_up"] == 1
        assert metric_values(text)["grm_shadow_reservoir_requests"] == 0
    finally:
        await stop_front(client, front)
        if reference is not None:
            await stop_front(*reference)


async def test_shadow_requests_are_not_demand_on_the_reference() -> None:
    ref_client, ref = await start_front(precision="bf16", variant="bf16")
    shadow = {"fraction": 1.0, "reference_url": str(ref_client.make_url(""))}
    client, front = await start_front(shadow=shadow, sim={"time_scale": 1000.0, "verdict_flip": 0.5})
    try:
        before = metric_values(await (await ref_client.get("/metrics")).text())
        n = 20
        for a, b in PAIRS[:n]:
            r = await client.post("/v1/grm/score", json={"query": "q", "responses": [a, b]})
            assert r.status == 200

        async def compared() -> bool:
            text = await (await client.get("/metrics")).text()
            return metric_values(text)["grm_shadow_verdicts_total"] == n

        await until(compared)
        after = metric_values(await (await ref_client.get("/metrics")).text())
        # What the operator reads as demand did not move on the reference: score latency
        # (e2e), score outcomes, samples drawn, samples shed.
        for name in (
            "grm_score_latency_seconds_count",
            "grm_score_requests_total",
            "grm_score_samples_count",
            "grm_score_samples_shed_total",
        ):
            assert after[name] == before[name], name
        # Its engine did the work; the samples drawn for shadows are counted apart, and equal
        # the engine's finished requests, which the operator subtracts (docs/metrics.md).
        served = after["grm_shadow_served_samples_total"]
        assert after["grm_shadow_served_total"] == n and served >= n
        engine_done = after["vllm:request_success_total"] - before["vllm:request_success_total"]
        assert engine_done == served
        # The candidate ranks half of the response sets backwards: the agreement shows it.
        text = await (await client.get("/metrics")).text()
        agreed = metric_values(text)["grm_shadow_agreements_total"]
        flips = sum(verdict_flipped([a, b], 0.5) for a, b in PAIRS[:n])
        assert agreed == n - flips
    finally:
        await stop_front(client, front)
        await stop_front(ref_client, ref)


async def test_a_busy_reference_refuses_shadows_and_the_sender_drops_them() -> None:
    ref_client, ref = await start_front(precision="bf16", variant="bf16")
    ref.engine_queue, ref.engine_queue_at = 3.0, asyncio.get_running_loop().time()
    # queue_waiting() compares with time.monotonic(), which the loop's clock is.
    client, front = await start_front(shadow={"fraction": 1.0, "reference_url": str(ref_client.make_url(""))})
    try:
        r = await client.post("/v1/grm/score", json={"query": "q", "responses": list(PAIRS[0])})
        assert r.status == 200

        async def dropped() -> bool:
            text = await (await client.get("/metrics")).text()
            return labelled(text, "grm_shadow_dropped_total", reason="reference_busy") == 1

        await until(dropped)
        assert front.shadow.reference_up
        assert metric_values(await (await ref_client.get("/metrics")).text())["grm_shadow_served_total"] == 0
    finally:
        await stop_front(client, front)
        await stop_front(ref_client, ref)


async def test_no_reference_no_shadowing_and_fraction_samples() -> None:
    client, front = await start_front()
    try:
        r = await client.post("/v1/grm/score", json={"query": "q", "responses": list(PAIRS[0])})
        assert r.status == 200
        text = await (await client.get("/metrics")).text()
        assert metric_values(text)["grm_shadow_sampled_total"] == 0
        assert metric_values(text)["grm_shadow_reference_up"] == -1
    finally:
        await stop_front(client, front)
    config = WorkerConfig.model_validate(
        {"engine": "sim", "shadow": {"fraction": 0.1, "reference_url": "http://127.0.0.1:9"}}
    )
    front = Front(config, SimEngine(config))
    front.shadow._rng.seed(7)
    from grm_worker.scoring import ScoreRequest, ScoreResult

    request = ScoreRequest(query="q", responses=("a", "b"), samples=4, seed=1)
    result = ScoreResult(scores=[8, 4], winner=0, samples_used=4, parse_failures=0, early_exit=False)
    for _ in range(1000):
        try:
            front.shadow.offer(request, result)
        finally:
            while not front.shadow.queue.empty():
                front.shadow.queue.get_nowait()
    sampled = metric_values(front.metrics.render())["grm_shadow_sampled_total"]
    assert 70 <= sampled <= 130
