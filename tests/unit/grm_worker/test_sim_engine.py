"""The sim engine on fake loop time (looptime): step timing, chunked prefill, queueing, KV
preemption, time scaling, start-up delay, jitter, GPU busy fraction, faults and GRM filler."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from grm_worker.contract.config import WorkerConfig
from grm_worker.contract.perfmodel import profile_for, step_time_s
from grm_worker.engines.sim import SimEngine
from grm_worker.engines.simtext import count_tokens, generate_tokens, response_quality
from grm_worker.scoring import build_prompt, parse_scores
from support.sse import sse_chunks, streamed_usage

pytestmark = pytest.mark.looptime


def make_engine(**fields: Any) -> SimEngine:
    config = WorkerConfig.model_validate({"engine": "sim", "precision": "fp8", **fields})
    loop = asyncio.get_running_loop()
    return SimEngine(config, clock=loop.time)


def samples(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "le" not in s.labels and s.labels.get("finished_reason", "length") == "length":
                out[s.name] = s.value
    return out


async def complete(engine: SimEngine, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    reply = await engine.call("/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, **extra})
    assert reply.status == 200 and reply.body is not None, reply.body
    return reply.body


async def test_single_request_follows_the_step_model_exactly() -> None:
    engine = make_engine()
    await engine.start()
    prompt = "x" * 4000  # 1000 tokens
    p = engine.profile
    start = asyncio.get_running_loop().time()
    body = await complete(engine, prompt, 5)
    elapsed = asyncio.get_running_loop().time() - start
    ttft = step_time_s(p, 1000, 0, 0)
    decode = sum(step_time_s(p, 0, 1, 1000 + g) for g in range(1, 5))
    assert elapsed == pytest.approx(ttft + decode, abs=1e-5)  # looptime ticks in µs
    m = samples(await engine.metrics_text())
    assert m["vllm:time_to_first_token_seconds_sum"] == pytest.approx(ttft)
    assert m["vllm:e2e_request_latency_seconds_sum"] == pytest.approx(ttft + decode)
    assert m["vllm:inter_token_latency_seconds_count"] == 4
    assert m["vllm:prompt_tokens_total"] == 1000 and m["vllm:generation_tokens_total"] == 5
    assert m["vllm:request_success_total"] == 1
    assert body["usage"] == {"prompt_tokens": 1000, "completion_tokens": 5, "total_tokens": 1005}
    await engine.stop()


async def test_long_prompt_is_prefilled_in_chunks_of_the_step_budget() -> None:
    engine = make_engine(vllm={"max_num_batched_tokens": 4096, "max_model_len": 32768})
    await engine.start()
    await complete(engine, "y" * 4 * 10000, 1)
    p = engine.profile
    expected = 2 * step_time_s(p, 4096, 0, 0) + step_time_s(p, 10000 - 8192, 0, 0)
    m = samples(await engine.metrics_text())
    assert engine.steps == 3
    assert m["vllm:time_to_first_token_seconds_sum"] == pytest.approx(expected)
    await engine.stop()


async def test_max_num_seqs_queues_requests_and_reports_waiting() -> None:
    engine = make_engine(vllm={"max_num_seqs": 2})
    await engine.start()
    tasks = [asyncio.create_task(complete(engine, "z" * 400, 20)) for _ in range(5)]
    await asyncio.sleep(0.001)
    m = samples(await engine.metrics_text())
    assert (m["vllm:num_requests_running"], m["vllm:num_requests_waiting"]) == (2, 3)
    await asyncio.gather(*tasks)
    m = samples(await engine.metrics_text())
    assert (m["vllm:num_requests_running"], m["vllm:num_requests_waiting"]) == (0, 0)
    assert m["vllm:request_queue_time_seconds_sum"] > 0
    assert m["vllm:request_success_total"] == 5
    await engine.stop()


async def test_kv_cache_pressure_preempts_and_still_finishes_everything() -> None:
    # 3 sequences of 100 prompt + 100 output tokens need 600 KV tokens; the cache holds 300.
    engine = make_engine(sim={"profile": {"kv_cache_tokens": 300}})
    await engine.start()
    tasks = [asyncio.create_task(complete(engine, "k" * 400, 100)) for _ in range(3)]
    await asyncio.sleep(0.05)
    m = samples(await engine.metrics_text())
    assert 0.5 < m["vllm:kv_cache_usage_perc"] <= 1.0
    bodies = await asyncio.gather(*tasks)
    assert all(b["usage"]["completion_tokens"] == 100 for b in bodies)
    m = samples(await engine.metrics_text())
    assert m["vllm:num_preemptions_total"] >= 1
    await engine.stop()


async def test_time_scale_runs_faster_but_reports_simulated_seconds() -> None:
    engine = make_engine(sim={"time_scale": 10.0, "startup_delay_s": 30.0})
    loop = asyncio.get_running_loop()
    await engine.start()
    assert not await engine.ready()
    await asyncio.sleep(2.9)
    assert not await engine.ready()
    await asyncio.sleep(0.2)  # 30 simulated seconds = 3 wall seconds at 10×
    assert await engine.ready()
    start = loop.time()
    await complete(engine, "x" * 4000, 50)
    wall = loop.time() - start
    e2e = samples(await engine.metrics_text())["vllm:e2e_request_latency_seconds_sum"]
    assert wall == pytest.approx(e2e / 10.0, abs=1e-4)
    await engine.stop()


async def test_jitter_is_seeded_and_centred_on_the_model() -> None:
    async def run(seed: int) -> float:
        engine = make_engine(sim={"jitter": 0.2, "seed": seed})
        await engine.start()
        await complete(engine, "j" * 40, 400)
        await engine.stop()
        return samples(await engine.metrics_text())["vllm:e2e_request_latency_seconds_sum"]

    a, b, c = await run(1), await run(1), await run(2)
    assert a == b and a != c
    p = profile_for("fp8")
    nominal = step_time_s(p, 10, 0, 0) + sum(step_time_s(p, 0, 1, 10 + g) for g in range(1, 400))
    assert a == pytest.approx(nominal, rel=0.05)  # 400 steps of ±20 %: the mean is within ~1 %


async def test_gpu_util_is_the_busy_fraction_of_the_step_loop() -> None:
    engine = make_engine(sim={"gpu_util_window_s": 1.0})
    await engine.start()
    task = asyncio.create_task(complete(engine, "g" * 40, 2000))
    await asyncio.sleep(5.0)
    families = {f.name: f for f in text_string_to_metric_families(await engine.metrics_text())}
    util = families["grm_worker_gpu_utilization_ratio"].samples
    assert len(util) == engine.profile.gpus and all(s.value == pytest.approx(1.0, abs=0.005) for s in util)
    await task
    await asyncio.sleep(2.0)
    families = {f.name: f for f in text_string_to_metric_families(await engine.metrics_text())}
    assert families["grm_worker_gpu_utilization_ratio"].samples[0].value == 0.0
    await engine.stop()


async def test_slowdown_error_and_crash_injection() -> None:
    engine = make_engine()
    await engine.start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await complete(engine, "s" * 400, 10)
    normal = loop.time() - start
    engine.faults.slowdown = 3.0
    start = loop.time()
    await complete(engine, "s" * 400, 10)
    assert loop.time() - start == pytest.approx(3 * normal, abs=1e-4)
    engine.faults.error_rate = 1.0
    reply = await engine.call("/v1/completions", {"prompt": "a", "max_tokens": 2})
    assert reply.status == 500
    engine.faults.error_rate = 0.0
    engine.crash("test")
    assert await engine.wait_dead() == "test" and not await engine.ready()
    await engine.stop()


async def test_openai_errors_and_models() -> None:
    engine = make_engine(model={"name": "grm-27b", "served_name": "grm"}, vllm={"max_model_len": 100})
    await engine.start()
    assert (await engine.call("/v1/completions", {"model": "other", "prompt": "a"})).status == 404
    assert (await engine.call("/v1/completions", {"prompt": "a" * 400, "max_tokens": 10})).status == 400
    assert (await engine.call("/v1/completions", {"prompt": 5})).status == 400
    assert (await engine.call("/v1/embeddings", {})).status == 404
    models = await engine.models()
    assert models.body is not None and models.body["data"][0]["id"] == "grm"
    reply = await engine.call("/v1/completions", {"prompt": ["a", "b"], "n": 3, "max_tokens": 2})
    assert reply.body is not None and [c["index"] for c in reply.body["choices"]] == list(range(6))
    assert reply.body["usage"]["prompt_tokens"] == 2
    await engine.stop()


async def test_streamed_chat_has_role_content_finish_and_done() -> None:
    engine = make_engine()
    await engine.start()
    reply = await engine.call(
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert reply.stream is not None
    body = b"".join([chunk async for chunk in reply.stream])
    chunks = sse_chunks(body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c.get("finish_reason")]
    assert finishes == ["length"]
    text = "".join(c["delta"].get("content", "") for chunk in chunks for c in chunk["choices"])
    # Four filler words of the sim (" word" each); the count comes from usage, not from events.
    assert len(text.split()) == 4 and streamed_usage(body)["completion_tokens"] == 4
    await engine.stop()


def test_grm_filler_has_parsable_scores_that_follow_response_quality() -> None:
    responses = ["good answer", "bad answer", "another one"]
    prompt = build_prompt("q", responses)
    tokens, reason = generate_tokens(prompt, 512, 300, seed=1)
    assert reason == "stop" and len(tokens) == 300
    parsed = parse_scores("".join(tokens), 3)
    assert parsed.scores is not None
    for score, response in zip(parsed.scores, responses, strict=True):
        assert abs(score - response_quality(response)) <= 1
    truncated, reason = generate_tokens(prompt, 100, 300, seed=1)
    assert reason == "length" and not parse_scores("".join(truncated), 3).ok
    assert generate_tokens("plain", 7, 300, seed=1)[0] == generate_tokens("plain", 7, 300, seed=1)[0]
    assert count_tokens("abcd" * 10) == 10


async def test_parallel_samples_share_one_prefill() -> None:
    engine = make_engine()
    await engine.start()
    body = await complete(engine, "p" * 4000, 10, n=4)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    m = samples(await engine.metrics_text())
    assert m["vllm:prompt_tokens_total"] == 1000  # not 4 × 1000
    assert m["vllm:generation_tokens_total"] == 40
    await engine.stop()


async def test_fork_whose_parent_finished_is_prefilled_again() -> None:
    engine = make_engine(vllm={"max_num_seqs": 1})
    await engine.start()
    body = await complete(engine, "p" * 400, 5, n=2)
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert samples(await engine.metrics_text())["vllm:prompt_tokens_total"] == 200
    await engine.stop()
