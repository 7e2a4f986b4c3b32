"""Sample shedding: while the engine has requests waiting, new score requests run at the shed floor.

A fake engine reports a chosen ``vllm:num_requests_waiting`` (or fails to) and answers every GRM
prompt with a tie, so early exit never fires and ``samples_used`` is exactly the samples a request
ran with. Every test that expects no shedding ends with a queue that must shed, so none of them
passes without the feature.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from grm_worker.contract.config import WorkerConfig
from grm_worker.contract.shedding import shed_samples
from grm_worker.engines.base import Engine, EngineError, EngineReply
from grm_worker.engines.sim import SimEngine
from grm_worker.queue import engine_waiting
from grm_worker.scoring import count_responses
from grm_worker.server import Front
from support.paths import FIXTURES

FIXTURE = FIXTURES / "vllm-0.32-metrics.txt"
QUEUE_3 = 'vllm:num_requests_waiting{engine="0",model_name="grm"} 3.0\n'
SCORE = {"query": "q", "responses": ["a", "b"]}


class QueueEngine(Engine):
    """An engine whose metrics report ``metrics`` (or raise it) and whose critiques all tie."""

    model_name = "grm"

    def __init__(self, metrics: str | Exception) -> None:
        self.metrics = metrics
        self.reads = 0  # metrics_text calls
        self.drawn = 0  # critiques sampled
        self.read = asyncio.Event()  # set by every metrics_text call

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def ready(self) -> bool:
        return True

    async def wait_dead(self) -> str:
        await asyncio.Event().wait()
        return "never"

    async def call(self, path: str, body: dict[str, Any]) -> EngineReply:
        prompts, n = body["prompt"], body["n"]
        count = len(prompts) * n
        self.drawn += count
        text = "Scores: \\boxed{" + ", ".join(["5"] * count_responses(prompts[0])) + "}"
        return EngineReply(200, {"choices": [{"index": i, "text": text} for i in range(count)]})

    async def models(self) -> EngineReply:
        return EngineReply(200, {"object": "list", "data": []})

    async def metrics_text(self) -> str:
        self.reads += 1
        self.read.set()
        if isinstance(self.metrics, Exception):
            raise self.metrics
        return self.metrics


Served = tuple[TestClient[Any, Any], Front, QueueEngine]


async def serve(metrics: str | Exception, **scoring: Any) -> Served:
    fields = {"samples_max": 8, "samples_default": 4, "samples_per_round": 4, "shed_poll_s": 0.01}
    config = WorkerConfig.model_validate({"engine": "sim", "scoring": {**fields, **scoring}})
    engine = QueueEngine(metrics)
    front = Front(config, engine)
    client: TestClient[Any, Any] = TestClient(TestServer(front.app))
    await client.start_server()
    return client, front, engine


@pytest.fixture
async def floor_1() -> AsyncIterator[Served]:
    served = await serve(QUEUE_3, shed_floor=1)
    yield served
    await served[0].close()


async def polled(engine: QueueEngine) -> None:
    """Return once two reads that started after this call have completed (three reads later): a
    queue without a queue-time histogram counts once two reads in a row saw it."""
    target = engine.reads + 3
    deadline = asyncio.get_running_loop().time() + 5.0
    while engine.reads < target:
        assert asyncio.get_running_loop().time() < deadline, "the front never read the engine's queue"
        await asyncio.sleep(0.002)


async def scored(client: TestClient[Any, Any], **fields: Any) -> dict[str, Any]:
    r = await client.post("/v1/grm/score", json={**SCORE, **fields})
    body: dict[str, Any] = await r.json()
    assert r.status == 200, body
    return body


async def front_metrics(client: TestClient[Any, Any]) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    # The front's own families only: /metrics relays the engine's text verbatim, garbage included.
    own = "\n".join(line for line in text.splitlines() if re.match(r"(# (HELP|TYPE) )?grm_", line))
    return {
        s.name: s.value
        for f in text_string_to_metric_families(own + "\n")
        for s in f.samples
        if s.name.startswith("grm_") and "shed" in s.name and not s.name.endswith("_created")
    }


def poll_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "grm-engine-queue-poll" and not t.done()]


def test_shed_samples_is_budget_minus_floor_only_with_a_known_queue() -> None:
    assert shed_samples(4, 1, 3.0) == 3
    assert shed_samples(4, 1, 0.0) == 0
    assert shed_samples(4, 1, None) == 0
    assert shed_samples(4, 1, float("nan")) == 0
    assert shed_samples(4, None, 3.0) == 0
    assert shed_samples(1, 1, 3.0) == 0
    assert shed_samples(1, 2, 3.0) == 0  # a request already below the floor is left alone


def test_engine_waiting_sums_label_sets_and_ignores_other_families() -> None:
    text = (
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="grm"} 2.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="grm"} 1.0\n'
        "# TYPE vllm:num_requests_waiting_by_reason gauge\n"
        'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 7.0\n'
        "vllm:num_requests_running 5.0\n"
    )
    assert engine_waiting(text) == 3.0
    assert engine_waiting("vllm:num_requests_running 5.0\n") is None
    assert engine_waiting("garbage {{{ not prometheus\n") is None
    with pytest.raises(ValueError):
        engine_waiting('vllm:num_requests_waiting{engine="0"} lots\n')
    # The real vLLM 0.32 exposition (idle when dumped): the gauge is found, at 0.
    assert engine_waiting(FIXTURE.read_text()) == 0.0


async def test_sim_engine_queue_is_read_from_its_metrics() -> None:
    """The sim's own exposition carries the gauge the front reads, and it moves with a full batch."""
    config = WorkerConfig.model_validate(
        {"engine": "sim", "sim": {"time_scale": 1.0}, "vllm": {"max_num_seqs": 1}}
    )
    engine = SimEngine(config)
    await engine.start()
    assert engine_waiting(await engine.metrics_text()) == 0.0
    body = {"model": "grm", "prompt": "a", "max_tokens": 2000}
    # max_num_seqs 1: the first decodes for seconds, the other two wait.
    long = [asyncio.create_task(engine.call("/v1/completions", body)) for _ in range(3)]
    deadline = asyncio.get_running_loop().time() + 5.0
    while engine_waiting(await engine.metrics_text()) != 2.0:
        assert asyncio.get_running_loop().time() < deadline, "the sim never reported its queue"
        await asyncio.sleep(0.005)
    reading = await engine.queue_reading()
    assert reading is not None and reading.waiting == 2.0 and reading.left is not None
    for task in long:
        task.cancel()
    await engine.stop()


async def test_queue_sheds_new_requests_to_the_floor(floor_1: Served) -> None:
    client, _, engine = floor_1
    assert await front_metrics(client) == {
        "grm_score_samples_shed_total": 0.0,
        "grm_score_requests_shed_total": 0.0,
        "grm_shed_floor": 1.0,
    }
    await polled(engine)
    body = await scored(client)
    assert (body["samples_used"], body["samples_budget"], body["shed"]) == (1, 4, 3)
    assert engine.drawn == 1
    # A request asking for 2 of the budget of 4 sheds 1; one asking for the floor sheds nothing.
    body = await scored(client, samples=2)
    assert (body["samples_used"], body["samples_budget"], body["shed"]) == (1, 2, 1)
    body = await scored(client, samples=1)
    assert (body["samples_used"], body["samples_budget"], body["shed"]) == (1, 1, 0)
    assert await front_metrics(client) == {
        "grm_score_samples_shed_total": 4.0,
        "grm_score_requests_shed_total": 2.0,
        "grm_shed_floor": 1.0,
    }
    # The queue drained: the full budget again.
    engine.metrics = 'vllm:num_requests_waiting{engine="0",model_name="grm"} 0.0\n'
    await polled(engine)
    body = await scored(client)
    assert (body["samples_used"], body["samples_budget"], body["shed"]) == (4, 4, 0)
    assert (await front_metrics(client))["grm_score_requests_shed_total"] == 2.0
    # A queue again, then a failed read: the queue is unknown again, not the last one seen.
    engine.metrics = QUEUE_3
    await polled(engine)
    assert (await scored(client))["shed"] == 3
    engine.metrics = EngineError("engine metrics unreachable", 503)
    await polled(engine)
    assert (await scored(client))["shed"] == 0


@pytest.mark.parametrize(
    "metrics",
    [
        "vllm:num_requests_waiting 0\n",
        EngineError("engine metrics unreachable", 503),
        "vllm:num_requests_running 5\n",  # no queue gauge at all
        'vllm:num_requests_waiting_by_reason{reason="capacity"} 4\n',
        'vllm:num_requests_waiting{engine="0"} lots\n',
        "\x00garbage {{{\n",
    ],
    ids=["empty-queue", "read-fails", "no-gauge", "other-family", "bad-value", "garbage"],
)
async def test_no_queue_or_an_unknown_one_does_not_shed(metrics: str | Exception) -> None:
    client, front, engine = await serve(metrics, shed_floor=2)
    await polled(engine)
    assert front.queue_waiting() in (None, 0.0)
    body = await scored(client)
    assert (body["samples_used"], body["samples_budget"], body["shed"]) == (4, 4, 0)
    assert (await front_metrics(client))["grm_score_samples_shed_total"] == 0.0
    # Control: the same front sheds once its engine reports a queue.
    engine.metrics = QUEUE_3
    await polled(engine)
    body = await scored(client)
    assert (body["samples_used"], body["shed"]) == (2, 2)
    await client.close()


class SteppingEngine(QueueEngine):
    """One request waiting at every read, and 30 admitted since the last one after ``wait_s``
    each: requests between two engine steps (30 ms), or a full batch (0.8 s)."""

    def __init__(self, wait_s: float) -> None:
        super().__init__("")
        self.wait_s = wait_s

    async def metrics_text(self) -> str:
        await super().metrics_text()
        left = 30 * self.reads
        return (
            f"vllm:num_requests_waiting 1.0\nvllm:request_queue_time_seconds_count {left}\n"
            f"vllm:request_queue_time_seconds_sum {left * self.wait_s}\n"
        )


async def test_requests_waiting_for_the_next_step_do_not_shed_a_full_batch_does() -> None:
    config = WorkerConfig.model_validate(
        {"engine": "sim", "scoring": {"samples_default": 4, "shed_floor": 1, "shed_poll_s": 0.01}}
    )
    for wait_s, shed in ((0.03, 0), (0.8, 3)):
        engine = SteppingEngine(wait_s)
        client: TestClient[Any, Any] = TestClient(TestServer(Front(config, engine).app))
        await client.start_server()
        await polled(engine)
        body = await scored(client)
        assert (body["samples_used"], body["shed"]) == (4 - shed, shed), wait_s
        await client.close()


async def test_stale_queue_reading_is_unknown(floor_1: Served) -> None:
    _, front, engine = floor_1
    await polled(engine)
    assert front.queue_waiting() == 3.0
    # A reading older than the staleness bound (3 polls, at least 2 s) is unknown.
    front.engine_queue_at -= 10.0
    assert front.queue_waiting() is None


async def test_shedding_off_never_sheds_nor_polls() -> None:
    client, front, engine = await serve(QUEUE_3)
    assert front.config.scoring.shed_floor is None and poll_tasks() == []
    body = await scored(client)
    assert (body["samples_used"], body["samples_budget"], body["shed"]) == (4, 4, 0)
    assert engine.reads == 0
    assert await front_metrics(client) == {
        "grm_score_samples_shed_total": 0.0,
        "grm_score_requests_shed_total": 0.0,
        "grm_shed_floor": 0.0,
    }
    await client.close()


async def test_poll_stops_on_drain_and_on_cleanup() -> None:
    client, front, engine = await serve(QUEUE_3, shed_floor=1)
    await polled(engine)
    assert len(poll_tasks()) == 1
    assert await front.drain(timeout=1.0) is True
    assert poll_tasks() == [] and front.queue_waiting() is None
    await client.close()
    client, front, engine = await serve(QUEUE_3, shed_floor=1)
    await polled(engine)
    assert len(poll_tasks()) == 1
    await client.close()
    assert poll_tasks() == []


async def test_poll_stops_when_cancelled_just_as_a_read_completes() -> None:
    """Drain right after a read returned, before the poll resumed: the cancellation must not be lost
    (Python 3.11's asyncio.wait_for dropped it there and drain waited for the poll forever)."""
    client, front, engine = await serve(QUEUE_3, shed_floor=1)
    engine.read.clear()
    async with asyncio.timeout(5.0):
        await engine.read.wait()
    async with asyncio.timeout(5.0):
        assert await front.drain(timeout=1.0) is True
    assert poll_tasks() == []
    await client.close()
