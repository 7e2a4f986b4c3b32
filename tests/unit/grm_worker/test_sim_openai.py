"""The sim engine's OpenAI fields that vLLM honours: stop strings (cut where vLLM cuts, the
token that completes the string counted), ``stream_options``, chat without ``max_tokens``, the
400s vLLM answers, logprobs, and an abort that frees the batch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from grm_worker.contract.config import WorkerConfig
from grm_worker.engines.base import EngineError
from grm_worker.engines.sim import SimEngine
from grm_worker.engines.sim_openai import request_params
from grm_worker.engines.simtext import cut_at_stop
from support.sse import sse_chunks, streamed_usage

pytestmark = pytest.mark.looptime


def make_engine(**fields: Any) -> SimEngine:
    config = WorkerConfig.model_validate({"engine": "sim", "precision": "fp8", **fields})
    return SimEngine(config, clock=asyncio.get_running_loop().time)


def test_stop_cuts_before_the_string_and_counts_the_token_that_completes_it() -> None:
    tokens = [" the", " key", " step", " so"]
    # " ke" ends inside the second token: two tokens generated, the text ends before " ke".
    assert cut_at_stop(tokens, (" ke",)) == ([" the", ""], " ke")
    # Across a token boundary ("e k" spans tokens 1 and 2): the earliest stop string wins.
    assert cut_at_stop(tokens, (" step", "e k")) == ([" th", ""], "e k")
    assert cut_at_stop(tokens, ("absent",)) == (tokens, None)
    assert cut_at_stop(tokens, ()) == (tokens, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "x", "n": 0}, "n must be within"),
        ({"prompt": "x", "temperature": -1}, "temperature must be non-negative"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens must be at least 1"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "only be defined when `stream=True`"),
        ({"prompt": "x", "stop": [1]}, "stop must be a string or a list of strings"),
        ({"prompt": "x", "logprobs": 21}, "logprobs must be an integer within [0, 20]"),
    ],
)
def test_values_vllm_refuses_are_400(body: dict[str, Any], message: str) -> None:
    with pytest.raises(EngineError, match=message.replace("[", r"\[").replace("(", r"\(")) as caught:
        request_params(body, "grm")
    assert caught.value.status == 400


def test_chat_top_logprobs_needs_logprobs() -> None:
    with pytest.raises(EngineError, match="`logprobs` must be set to true") as caught:
        request_params({"messages": [], "top_logprobs": 2}, "grm", chat=True)
    assert caught.value.status == 400


async def test_stream_usage_chunk_only_when_asked() -> None:
    engine = make_engine()
    await engine.start()
    asked = {"prompt": "x", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    for body, with_usage in ((asked, True), ({**asked, "stream_options": None}, False)):
        reply = await engine.call("/v1/completions", body)
        assert reply.stream is not None
        text = b"".join([chunk async for chunk in reply.stream])
        if with_usage:
            usage = streamed_usage(text)
            assert usage["completion_tokens"] == 3 and usage["total_tokens"] == usage["prompt_tokens"] + 3
        else:
            assert all("usage" not in chunk for chunk in sse_chunks(text))
    await engine.stop()


async def test_chat_without_max_tokens_ends_like_a_model_at_its_eos() -> None:
    # vLLM allows the rest of the context; a real model stops at EOS: the sim answers
    # sim.output_tokens tokens with finish_reason "stop" instead of 16 with "length".
    engine = make_engine(sim={"output_tokens": 7, "time_scale": 1000.0})
    await engine.start()
    reply = await engine.call("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert reply.body is not None
    assert reply.body["choices"][0]["finish_reason"] == "stop"
    assert reply.body["usage"]["completion_tokens"] == 7
    await engine.stop()


async def test_echo_and_logprobs_of_a_completion() -> None:
    engine = make_engine(sim={"time_scale": 1000.0})
    await engine.start()
    body = {"prompt": "say", "max_tokens": 3, "echo": True, "logprobs": 1}
    reply = await engine.call("/v1/completions", body)
    assert reply.body is not None
    choice = reply.body["choices"][0]
    logprobs = choice["logprobs"]
    assert choice["text"] == "say" + "".join(logprobs["tokens"]) and len(logprobs["tokens"]) == 3
    assert all(-2 < lp <= 0 for lp in logprobs["token_logprobs"])
    assert logprobs["text_offset"] == [0, len(logprobs["tokens"][0]), len("".join(logprobs["tokens"][:2]))]
    await engine.stop()


async def test_abort_frees_the_batch_and_counts_as_abort() -> None:
    engine = make_engine()
    await engine.start()
    reply = await engine.call("/v1/completions", {"prompt": "x", "max_tokens": 3000, "stream": True})
    assert reply.stream is not None and hasattr(reply.stream, "aclose")
    stream = reply.stream
    await anext(stream)  # the first token: the sequence is running
    await stream.aclose()  # what the front does when the client leaves
    text = await engine.metrics_text()
    assert "vllm:num_requests_running{" in text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(("vllm:num_requests_running{", "vllm:request_success_total{"))
    }
    running = [v for k, v in values.items() if k.startswith("vllm:num_requests_running")]
    aborted = [v for k, v in values.items() if 'finished_reason="abort"' in k]
    assert running == [0.0] and aborted == [1.0]
    await engine.stop()
