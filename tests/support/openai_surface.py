"""The OpenAI surface a worker serves, checked field by field with the official ``openai`` client.

One list of checks (:data:`SURFACE_CHECKS`) runs against a worker process of either engine:
``tests/integration/grm_worker/test_openai_surface.py`` (sim engine, one test per check) and
``test_worker_vllm.py`` (real vLLM, every check on the one worker it starts). Whatever the sim
answers differently from vLLM fails here, in the client RL frameworks use.

The checks never count SSE events as tokens: vLLM may carry several tokens in one event, so
token counts come from ``usage`` (the final chunk of ``stream_options.include_usage``). Texts
are compared only where the engine is deterministic (greedy decoding with a seed), so random
weights (the real-vLLM test's tiny model) pass as well as the sim's filler.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import httpx
import openai

__all__ = ["SURFACE_CHECKS", "client"]

# `created` is the server's clock in seconds; both run on this machine, so a minute covers any
# request of these checks (the slowest, a CPU vLLM completion, takes a few seconds).
_CLOCK_SLACK_S = 60


def client(base_url: str) -> openai.AsyncOpenAI:
    """The official client on a worker (``base_url`` without ``/v1``), no retries: a retried
    request would hide the first answer's status."""
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _recent(created: int) -> bool:
    return abs(created - time.time()) < _CLOCK_SLACK_S


async def check_models(api: openai.AsyncOpenAI, model: str) -> None:
    """``GET /v1/models``: the one served model, as vLLM lists it."""
    models = [m async for m in api.models.list()]
    assert [m.id for m in models] == [model]
    served = models[0]
    assert served.object == "model" and served.owned_by == "vllm" and _recent(served.created)
    extra = served.model_extra or {}
    assert isinstance(extra.get("max_model_len"), int) and extra["max_model_len"] > 0
    assert isinstance(extra.get("root"), str)


async def check_completion(api: openai.AsyncOpenAI, model: str) -> None:
    """A completion: ids, object, created, model, finish_reason, usage."""
    reply = await api.completions.create(
        model=model, prompt="the answer is", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion" and _recent(reply.created)
    assert reply.model == model and len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.index == 0 and isinstance(choice.text, str) and choice.finish_reason == "length"
    assert choice.logprobs is None
    usage = reply.usage
    assert usage is not None and usage.completion_tokens == 5 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def check_completion_batch_and_n(api: openai.AsyncOpenAI, model: str) -> None:
    """Two prompts × n=2: four choices indexed prompt-major; the prompt counted once per prompt."""
    one = await api.completions.create(
        model=model, prompt="a b c", max_tokens=3, extra_body={"ignore_eos": True}
    )
    reply = await api.completions.create(
        model=model, prompt=["a b c", "a b c"], n=2, max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in reply.choices) == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage is not None and one.usage is not None
    assert reply.usage.completion_tokens == 4 * 3
    assert reply.usage.prompt_tokens == 2 * one.usage.prompt_tokens


async def check_completion_stream_usage(api: openai.AsyncOpenAI, model: str) -> None:
    """A streamed completion with ``include_usage``: one id and created for every chunk, usage
    only on a last chunk without choices, the text the chunks carry adds up."""
    stream = await api.completions.create(
        model=model,
        prompt="the answer is",
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    assert len({c.created for c in chunks}) == 1 and {c.object for c in chunks} == {"text_completion"}
    assert {c.model for c in chunks} == {model}
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 7
    assert last.usage.total_tokens == last.usage.prompt_tokens + 7
    assert all(c.usage is None for c in body)
    finishes = [ch.finish_reason for c in body for ch in c.choices if ch.finish_reason is not None]
    assert finishes == ["length"]


async def check_chat(api: openai.AsyncOpenAI, model: str) -> None:
    """A chat completion: ids, object, the assistant's message, finish_reason, usage."""
    reply = await api.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=4,
        extra_body={"ignore_eos": True},
    )
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and _recent(reply.created)
    assert reply.model == model and len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length" and choice.logprobs is None
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert not choice.message.tool_calls
    assert reply.usage is not None and reply.usage.completion_tokens == 4 and reply.usage.prompt_tokens > 0


async def check_chat_stream_usage(api: openai.AsyncOpenAI, model: str) -> None:
    """A streamed chat with n=2 and ``include_usage`` (what RL frameworks count tokens from): the
    role first for each choice, one finish per choice, then usage on a chunk without choices."""
    stream = await api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "score this"}],
        max_tokens=6,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.created for c in chunks}) == 1
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 2 * 6 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in body)
    for index in (0, 1):
        deltas = [ch for c in body for ch in c.choices if ch.index == index]
        assert deltas[0].delta.role == "assistant"
        assert [d.finish_reason for d in deltas if d.finish_reason is not None] == ["length"]


async def check_chat_stream_without_usage(api: openai.AsyncOpenAI, model: str) -> None:
    """Without ``stream_options`` no chunk carries usage (as in vLLM and OpenAI)."""
    stream = await api.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(c.usage is None and c.choices for c in chunks)


async def check_continuous_usage(api: openai.AsyncOpenAI, model: str) -> None:
    """vLLM's ``continuous_usage_stats``: every chunk carries the usage so far, growing to the total."""
    stream = await api.completions.create(
        model=model,
        prompt="x",
        max_tokens=4,
        stream=True,
        # continuous_usage_stats is vLLM's, not in the client's types: sent as an extra field.
        extra_body={
            "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    )
    chunks = [chunk async for chunk in stream]
    counts = [c.usage.completion_tokens for c in chunks if c.usage is not None]
    assert len(counts) == len(chunks) and counts == sorted(counts) and counts[-1] == 4


async def check_stop(api: openai.AsyncOpenAI, model: str) -> None:
    """``stop``: the text ends before the first stop string, finish_reason ``stop`` and vLLM's
    ``stop_reason`` naming the string; streamed the same. Greedy with a seed, so the answer with
    a stop string is the answer without one, cut."""
    extra = {"ignore_eos": True}
    full = await api.completions.create(
        model=model, prompt="count:", max_tokens=12, temperature=0.0, seed=7, extra_body=extra
    )
    text = full.choices[0].text
    stop = text[len(text) // 2 :][:3]
    assert stop.strip(), f"no stop string to take from {text!r}"
    reply = await api.completions.create(
        model=model, prompt="count:", max_tokens=12, temperature=0.0, seed=7, stop=[stop], extra_body=extra
    )
    choice = reply.choices[0]
    assert choice.text == text[: text.index(stop)]
    assert choice.finish_reason == "stop" and (choice.model_extra or {}).get("stop_reason") == stop
    stream = await api.completions.create(
        model=model,
        prompt="count:",
        max_tokens=12,
        temperature=0.0,
        seed=7,
        stop=stop,
        stream=True,
        extra_body=extra,
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(ch.text for c in chunks for ch in c.choices) == choice.text
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["stop"]


async def check_logprobs(api: openai.AsyncOpenAI, model: str) -> None:
    """Logprobs: per generated token for completions (``logprobs=k``) and chat (``logprobs`` with
    ``top_logprobs=k``), each ≤ 0; completions list the top k plus the sampled token when it is
    not among them (vLLM: up to k + 1 entries, the sampled one always there)."""
    reply = await api.completions.create(
        model=model, prompt="x", max_tokens=3, logprobs=2, extra_body={"ignore_eos": True}
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and len(logprobs.tokens) == 3
    assert logprobs.token_logprobs is not None and all(
        lp is not None and lp <= 0 for lp in logprobs.token_logprobs
    )
    assert logprobs.top_logprobs is not None and len(logprobs.top_logprobs) == 3
    for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True):
        assert 1 <= len(top) <= 3 and token in top and all(lp <= 0 for lp in top.values()), (token, top)
    assert logprobs.text_offset is not None and logprobs.text_offset == sorted(logprobs.text_offset)
    chat = await api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=3,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    content = chat.choices[0].logprobs and chat.choices[0].logprobs.content
    assert content and len(content) == 3
    for entry in content:
        assert isinstance(entry.token, str) and entry.logprob <= 0
        assert 1 <= len(entry.top_logprobs) <= 3 and all(t.logprob <= 0 for t in entry.top_logprobs)


async def check_errors(api: openai.AsyncOpenAI, model: str) -> None:
    """Bad requests: the client's typed errors with vLLM's status codes and ``error`` bodies."""
    served = [m async for m in api.models.list()].pop()
    max_model_len = int((served.model_extra or {})["max_model_len"])
    cases: list[tuple[type[openai.APIStatusError], int, Callable[[], Awaitable[object]]]] = [
        (openai.NotFoundError, 404, lambda: api.completions.create(model="no-such-model", prompt="x")),
        (
            openai.BadRequestError,
            400,
            lambda: api.completions.create(model=model, prompt="x", max_tokens=max_model_len + 1),
        ),
        (openai.BadRequestError, 400, lambda: api.completions.create(model=model, prompt="x", n=0)),
        (
            openai.BadRequestError,
            400,
            lambda: api.completions.create(model=model, prompt="x", temperature=-1),
        ),
        (
            openai.BadRequestError,
            400,
            lambda: api.completions.create(
                model=model, prompt="x", max_tokens=2, stream_options={"include_usage": True}
            ),
        ),
        (
            openai.BadRequestError,
            400,
            lambda: api.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "x"}], max_tokens=max_model_len + 1
            ),
        ),
    ]
    for kind, status, call in cases:
        try:
            await call()
        except kind as error:
            assert error.status_code == status
            body = error.body
            assert isinstance(body, dict) and isinstance(body.get("message"), str), body
            assert body.get("code") == status and isinstance(body.get("type"), str), body
        else:
            raise AssertionError(f"expected {kind.__name__} ({status})")


async def check_malformed_json(api: openai.AsyncOpenAI, model: str) -> None:
    """A body that is not JSON: 400 with an ``error`` body, not a 500 or a dropped connection."""
    async with httpx.AsyncClient(base_url=str(api.base_url)) as http:
        r = await http.post("completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400, r.text


Check = Callable[[openai.AsyncOpenAI, str], Awaitable[None]]

SURFACE_CHECKS: dict[str, Check] = {
    "models": check_models,
    "completion": check_completion,
    "completion_batch_and_n": check_completion_batch_and_n,
    "completion_stream_usage": check_completion_stream_usage,
    "chat": check_chat,
    "chat_stream_usage": check_chat_stream_usage,
    "chat_stream_without_usage": check_chat_stream_without_usage,
    "continuous_usage": check_continuous_usage,
    "stop": check_stop,
    "logprobs": check_logprobs,
    "errors": check_errors,
    "malformed_json": check_malformed_json,
}
"""Every check, by name (the sim test's ids)."""
