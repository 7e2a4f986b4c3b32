"""vLLM's OpenAI-compatible API as the sim engine speaks it: request fields in, JSON bodies and
server-sent events out.

The sim engine (:mod:`grm_worker.engines.sim`) checks a request against its limits, turns it into
sequences and runs them; this module reads the request's fields and writes the answer from the
sequences' tokens in the shapes vLLM's OpenAI server uses: ``text_completion`` and
``chat.completion`` bodies with ``usage``, ``chat.completion.chunk`` / ``text_completion`` SSE
chunks ending with ``data: [DONE]``, ``/v1/models``, and ``{"error": {...}}`` with vLLM's error
types. As vLLM does, it honours ``stream_options`` (``include_usage``: a last chunk with no
choices and the usage, which the official ``openai`` client's streamed calls rely on for token
counts; ``continuous_usage_stats``: the usage so far on every chunk), ``stop`` (the text ends
before the first stop string, ``finish_reason: stop``, ``stop_reason`` the string), ``logprobs``
(completions: ``logprobs=k``; chat: ``logprobs`` with ``top_logprobs=k``; the values are
deterministic filler, each token its own most likely one) and ``echo`` (completions), and answers
400 where vLLM refuses a request (negative temperature, ``stream_options`` without ``stream``,
``n`` < 1, too long). A request the client leaves (a stream it stops reading, a non-streamed
answer it no longer waits for) is aborted in the engine (``abort``), as vLLM aborts a
disconnected request.

One concept in one module (the OpenAI wire format of the sim engine: requests parsed and
replies, stream chunks, logprobs and errors shaped as vLLM shapes them), kept together so that
one file can be read against vLLM's protocol.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from grm_worker.engines.base import EngineError, EngineReply

__all__ = [
    "OpenAIRequest",
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
    engine emits them on ``out`` (None after the last), why it finished (and the stop string
    that ended it, if one did), its prompt's tokens, the tokens it generated and the ``n`` it
    was asked with."""

    out: asyncio.Queue[str | None]
    finish_reason: str
    stop_reason: str | None
    prompt_tokens: int
    generated: int
    n: int


Abort = Callable[[Sequence[Sample]], None]
"""Takes samples out of the engine (a stream whose client left)."""

# vLLM's limit on ``logprobs`` / ``top_logprobs`` (``--max-logprobs``, default 20).
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class OpenAIRequest:
    """The fields of a completions or chat request the sim acts on."""

    max_tokens: int | None
    """None: a chat request without a limit (vLLM then allows the rest of the context)."""
    n: int
    seed: int | None
    stream: bool
    include_usage: bool
    continuous_usage: bool
    stop: tuple[str, ...]
    logprobs: int | None
    """Alternatives per token (0: the chosen token's logprob only); None: no logprobs."""
    echo: bool


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


def request_params(body: dict[str, Any], model_name: str, *, chat: bool = False) -> OpenAIRequest:
    """The request's fields; raises :class:`EngineError` (404 for another model, 400 for values
    vLLM refuses)."""
    model = body.get("model")
    if model is not None and model != model_name:
        raise EngineError(f"The model `{model}` does not exist.", 404)
    try:
        limit = body.get("max_tokens")
        if limit is None:
            limit = body.get("max_completion_tokens")
        max_tokens = int(limit) if limit is not None else (None if chat else 16)
        n = int(body["n"]) if body.get("n") is not None else 1
        seed = None if body.get("seed") is None else int(body["seed"])
        temperature = float(body["temperature"]) if body.get("temperature") is not None else 1.0
    except (TypeError, ValueError) as error:
        raise EngineError(f"invalid request parameter: {error}", 400) from None
    if max_tokens is not None and max_tokens < 1:
        raise EngineError(f"max_tokens must be at least 1, got {max_tokens}.", 400)
    if not 1 <= n <= 128:
        raise EngineError(f"n must be within [1, 128], got {n}.", 400)
    if temperature < 0:
        raise EngineError(f"temperature must be non-negative, got {temperature}.", 400)
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    if options is not None and not stream:
        raise EngineError("Stream options can only be defined when `stream=True`.", 400)
    if options is not None and not isinstance(options, dict):
        raise EngineError("stream_options must be an object", 400)
    include_usage = bool((options or {}).get("include_usage"))
    return OpenAIRequest(
        max_tokens=max_tokens,
        n=n,
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=include_usage and bool((options or {}).get("continuous_usage_stats")),
        stop=_stop_strings(body.get("stop")),
        logprobs=_logprobs(body, chat=chat),
        echo=bool(body.get("echo")) and not chat,
    )


def _stop_strings(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise EngineError("stop must be a string or a list of strings", 400)
    return tuple(s for s in stops if s)


def _logprobs(body: dict[str, Any], *, chat: bool) -> int | None:
    if chat:
        top = body.get("top_logprobs")
        if top is not None and not body.get("logprobs"):
            raise EngineError("when using `top_logprobs`, `logprobs` must be set to true.", 400)
        count: Any = (top or 0) if body.get("logprobs") else None
    else:
        count = body.get("logprobs")
    if count is None:
        return None
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_LOGPROBS:
        raise EngineError(f"logprobs must be an integer within [0, {MAX_LOGPROBS}], got {count!r}.", 400)
    return count


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


async def completion_reply(
    model_name: str, seqs: Sequence[Sample], request: OpenAIRequest, prompts: Sequence[str], abort: Abort
) -> EngineReply:
    """The answer to a completions request once its samples are submitted (``n`` per prompt,
    prompt-major): an SSE stream of tokens as they come, or, without ``stream``, one body when
    all have finished."""
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    echoes = [prompts[i // request.n] if request.echo else "" for i in range(len(seqs))]
    if request.stream:
        return EngineReply(
            200, stream=_stream_completion(rid, created, model_name, seqs, request, echoes, abort)
        )
    tokens = await _collect_all(seqs, abort)
    choices = [
        {
            "index": i,
            "text": echoes[i] + "".join(toks),
            "logprobs": _completion_logprobs(toks, 0, request.logprobs),
            "finish_reason": seq.finish_reason,
            "stop_reason": seq.stop_reason,
            "prompt_logprobs": None,
        }
        for i, (seq, toks) in enumerate(zip(seqs, tokens, strict=True))
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
    rid: str,
    created: int,
    model_name: str,
    seqs: Sequence[Sample],
    request: OpenAIRequest,
    echoes: list[str],
    abort: Abort,
) -> AsyncIterator[bytes]:
    base = {"id": rid, "object": "text_completion", "created": created, "model": model_name}
    offsets, positions = [0] * len(seqs), [0] * len(seqs)
    finished = False
    try:
        async for index, token, seq in _merge(seqs):
            text = (echoes[index] if positions[index] == 0 else "") + (token or "")
            logprobs = (
                None
                if token is None
                else _completion_logprobs([token], offsets[index], request.logprobs, positions[index])
            )
            offsets[index] += len(text)
            positions[index] += 1
            choice = {
                "index": index,
                "text": "" if token is None else text,
                "logprobs": logprobs,
                "finish_reason": None if token is not None else seq.finish_reason,
                "stop_reason": None if token is not None else seq.stop_reason,
            }
            yield _sse(_chunk(base, choice, seq, request))
        finished = True
    finally:
        if not finished:  # the client left (the relay closed this generator): free the engine
            abort(seqs)
    if request.include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(seqs)})
    yield b"data: [DONE]\n\n"


async def chat_reply(
    model_name: str, seqs: Sequence[Sample], request: OpenAIRequest, abort: Abort
) -> EngineReply:
    """The answer to a chat request once its samples are submitted (streamed or whole)."""
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if request.stream:
        return EngineReply(200, stream=_stream_chat(rid, created, model_name, seqs, request, abort))
    tokens = await _collect_all(seqs, abort)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "".join(toks), "tool_calls": []},
            "logprobs": _chat_logprobs(toks, request.logprobs),
            "finish_reason": seq.finish_reason,
            "stop_reason": seq.stop_reason,
        }
        for i, (seq, toks) in enumerate(zip(seqs, tokens, strict=True))
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
    rid: str, created: int, model_name: str, seqs: Sequence[Sample], request: OpenAIRequest, abort: Abort
) -> AsyncIterator[bytes]:
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name}
    for i, seq in enumerate(seqs):
        role = {
            "index": i,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        yield _sse(_chunk(base, role, seq, request))
    positions = [0] * len(seqs)
    finished = False
    try:
        async for index, token, seq in _merge(seqs):
            if token is None:
                choice = {
                    "index": index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": seq.finish_reason,
                    "stop_reason": seq.stop_reason,
                }
            else:
                choice = {
                    "index": index,
                    "delta": {"content": token},
                    "logprobs": _chat_logprobs([token], request.logprobs, positions[index]),
                    "finish_reason": None,
                }
                positions[index] += 1
            yield _sse(_chunk(base, choice, seq, request))
        finished = True
    finally:
        if not finished:  # the client left (the relay closed this generator): free the engine
            abort(seqs)
    if request.include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(seqs)})
    yield b"data: [DONE]\n\n"


def _chunk(
    base: dict[str, Any], choice: dict[str, Any], seq: Sample, request: OpenAIRequest
) -> dict[str, Any]:
    chunk = {**base, "choices": [choice]}
    if request.continuous_usage:
        # vLLM's continuous_usage_stats: this choice's prompt and its tokens so far.
        total = seq.prompt_tokens + seq.generated
        chunk["usage"] = {
            "prompt_tokens": seq.prompt_tokens,
            "completion_tokens": seq.generated,
            "total_tokens": total,
        }
    return chunk


def _logprob(token: str, position: int) -> float:
    """A deterministic filler logprob in (-2, 0] for ``token`` at ``position``."""
    digest = hashlib.blake2b(f"{position}\x1f{token}".encode(), digest_size=4).digest()
    return -2.0 * int.from_bytes(digest, "big") / 2**32


def _alternatives(token: str, position: int, count: int) -> list[tuple[str, float]]:
    """``count`` alternatives with the chosen token first (the most likely, as in greedy
    decoding) and filler tokens below it."""
    chosen = _logprob(token, position)
    return [(token, chosen)] + [(f" alt{k}", chosen - k) for k in range(1, count)]


def _completion_logprobs(
    tokens: Sequence[str], offset: int, count: int | None, first: int = 0
) -> dict[str, Any] | None:
    if count is None:
        return None
    offsets, logprobs, tops = [], [], []
    for i, token in enumerate(tokens, start=first):
        offsets.append(offset)
        offset += len(token)
        logprobs.append(_logprob(token, i))
        tops.append(dict(_alternatives(token, i, max(1, count))))
    return {"tokens": list(tokens), "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(tokens: Sequence[str], count: int | None, first: int = 0) -> dict[str, Any] | None:
    if count is None:
        return None
    content = []
    for i, token in enumerate(tokens, start=first):
        top = _alternatives(token, i, count) if count else []
        content.append(
            {
                "token": token,
                "logprob": _logprob(token, i),
                "bytes": list(token.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
            }
        )
    return {"content": content}


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


async def _collect(seq: Sample) -> list[str]:
    parts = []
    while (token := await seq.out.get()) is not None:
        parts.append(token)
    return parts


async def _collect_all(seqs: Sequence[Sample], abort: Abort) -> list[list[str]]:
    """Every sequence's tokens once all have finished (a non-streamed answer). Cancelled (the
    front's client left), the sequences still running are aborted, as vLLM aborts a request whose
    HTTP client disconnected."""
    try:
        return [await _collect(seq) for seq in seqs]
    except asyncio.CancelledError:
        abort(seqs)
        raise


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
