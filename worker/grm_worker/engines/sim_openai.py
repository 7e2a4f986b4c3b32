"""vLLM's OpenAI-compatible API as the sim engine speaks it: request fields in, JSON bodies and
server-sent events out.

The sim engine (:mod:`grm_worker.engines.sim`) checks a request against its limits, turns it into
sequences and runs them; this module reads the request's fields and writes the answer from the
sequences' tokens in the shapes vLLM's OpenAI server uses: ``text_completion`` and
``chat.completion`` bodies with ``usage``, ``chat.completion.chunk`` / ``text_completion`` SSE
chunks ending with ``data: [DONE]``, ``/v1/models``, and ``{"error": {...}}`` with vLLM's error
types.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from grm_worker.engines.base import EngineError, EngineReply

__all__ = [
    "Sample",
    "chat_prompt",
    "chat_reply",
    "completion_prompts",
    "completion_reply",
    "error_reply",
    "models_reply",
    "request_params",
]


class Sample(Protocol):
    """What the API needs of one submitted sample (a prompt × one of its ``n``): its tokens as the
    engine emits them on ``out`` (None after the last), why it finished, its prompt's tokens,
    the tokens it generated and the ``n`` it was asked with."""

    out: asyncio.Queue[str | None]
    finish_reason: str
    prompt_tokens: int
    generated: int
    n: int


def error_reply(error: EngineError) -> EngineReply:
    """The error body vLLM answers with, typed by status."""
    kind = (
        "BadRequestError"
        if error.status == 400
        else "NotFoundError"
        if error.status == 404
        else "InternalServerError"
    )
    return EngineReply(
        error.status,
        {"error": {"message": str(error), "type": kind, "param": None, "code": error.status}},
    )


def request_params(body: dict[str, Any], model_name: str) -> tuple[int, int, int | None, bool]:
    """``(max_tokens, n, seed, stream)`` of a completions or chat request; raises
    :class:`EngineError` (404 for another model, 400 for bad values)."""
    model = body.get("model")
    if model is not None and model != model_name:
        raise EngineError(f"The model `{model}` does not exist.", 404)
    try:
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        n = int(body.get("n") or 1)
        seed = None if body.get("seed") is None else int(body["seed"])
    except (TypeError, ValueError) as error:
        raise EngineError(f"invalid request parameter: {error}", 400) from None
    if max_tokens < 1 or not 1 <= n <= 128:
        raise EngineError("max_tokens must be ≥ 1 and n within [1, 128]", 400)
    return max_tokens, n, seed, bool(body.get("stream"))


def completion_prompts(body: dict[str, Any]) -> list[str]:
    """The prompts of a completions request (``prompt``: a string or a non-empty list of them)."""
    raw = body.get("prompt")
    prompts = [raw] if isinstance(raw, str) else raw
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise EngineError("prompt must be a string or a non-empty list of strings", 400)
    return prompts


def chat_prompt(body: dict[str, Any]) -> str:
    """The one prompt a chat request's ``messages`` make: ``role: content`` lines, then
    ``assistant:``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EngineError("messages must be a non-empty list", 400)
    return (
        "".join(f"{m.get('role', 'user')}: {_content(m.get('content'))}\n" for m in messages) + "assistant:"
    )


async def completion_reply(model_name: str, seqs: Sequence[Sample], *, stream: bool) -> EngineReply:
    """The answer to a completions request once its samples are submitted: an SSE stream of
    tokens as they come, or, without ``stream``, one body when all have finished."""
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if stream:
        return EngineReply(200, stream=_stream_completion(rid, created, model_name, seqs))
    texts = [await _collect(seq) for seq in seqs]
    choices = [
        {
            "index": i,
            "text": text,
            "logprobs": None,
            "finish_reason": seq.finish_reason,
            "stop_reason": None,
        }
        for i, (seq, text) in enumerate(zip(seqs, texts, strict=True))
    ]
    return EngineReply(
        200,
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": choices,
            "usage": _usage(seqs),
        },
    )


async def _stream_completion(
    rid: str, created: int, model_name: str, seqs: Sequence[Sample]
) -> AsyncIterator[bytes]:
    async for index, token, seq in _merge(seqs):
        chunk = {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": [
                {
                    "index": index,
                    "text": token or "",
                    "logprobs": None,
                    "finish_reason": None if token is not None else seq.finish_reason,
                }
            ],
        }
        yield _sse(chunk)
    yield b"data: [DONE]\n\n"


async def chat_reply(model_name: str, seqs: Sequence[Sample], *, stream: bool) -> EngineReply:
    """The answer to a chat request once its samples are submitted (streamed or whole)."""
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if stream:
        return EngineReply(200, stream=_stream_chat(rid, created, model_name, seqs))
    texts = [await _collect(seq) for seq in seqs]
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": seq.finish_reason,
            "stop_reason": None,
        }
        for i, (seq, text) in enumerate(zip(seqs, texts, strict=True))
    ]
    return EngineReply(
        200,
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": choices,
            "usage": _usage(seqs),
        },
    )


async def _stream_chat(
    rid: str, created: int, model_name: str, seqs: Sequence[Sample]
) -> AsyncIterator[bytes]:
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name}
    for i in range(len(seqs)):
        yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}}]})
    async for index, token, seq in _merge(seqs):
        if token is None:
            choice = {"index": index, "delta": {}, "finish_reason": seq.finish_reason}
        else:
            choice = {"index": index, "delta": {"content": token}, "finish_reason": None}
        yield _sse({**base, "choices": [choice]})
    yield b"data: [DONE]\n\n"


def models_reply(model_name: str, *, root: str, max_model_len: int) -> EngineReply:
    """``GET /v1/models``: the one model served."""
    return EngineReply(
        200,
        {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": root,
                    "parent": None,
                    "max_model_len": max_model_len,
                }
            ],
        },
    )


def _content(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _usage(seqs: Sequence[Sample]) -> dict[str, int]:
    # Each distinct prompt counts once, as in vLLM (n samples share it).
    prompt = sum(s.prompt_tokens for i, s in enumerate(seqs) if i % max(1, s.n) == 0)
    completion = sum(s.generated for s in seqs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _collect(seq: Sample) -> str:
    parts = []
    while (token := await seq.out.get()) is not None:
        parts.append(token)
    return "".join(parts)


async def _merge(seqs: Sequence[Sample]) -> AsyncIterator[tuple[int, str | None, Sample]]:
    """Tokens of several sequences as they come: (index, token or None at its end, seq)."""
    pending = {asyncio.ensure_future(seq.out.get()): i for i, seq in enumerate(seqs)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: pending[f]):
                i = pending.pop(future)
                token = future.result()
                yield i, token, seqs[i]
                if token is not None:
                    pending[asyncio.ensure_future(seqs[i].out.get())] = i
    finally:
        for future in pending:
            future.cancel()
