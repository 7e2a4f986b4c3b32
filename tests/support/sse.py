"""Server-sent events of an OpenAI-style stream, read as a client should: JSON chunks up to
``data: [DONE]``, and token counts from the ``usage`` chunk, never from the number of events.

vLLM may put several tokens in one event (a decode step that finished several tokens, a stop
string held back and released), so a test that counts events as tokens passes with the sim
engine and fails, now and then, with real vLLM (``assert 2497 >= 2498``).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["sse_chunks", "streamed_usage"]


def sse_chunks(body: str | bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a whole SSE body; asserts it ends with ``data: [DONE]``."""
    text = body.decode() if isinstance(body, bytes) else body
    events = [e for e in text.split("\n\n") if e.strip()]
    assert events and events[-1] == "data: [DONE]", events[-3:]
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


def streamed_usage(body: str | bytes) -> dict[str, Any]:
    """The ``usage`` of a stream asked with ``stream_options.include_usage``: one last chunk with
    no choices, before ``[DONE]`` (as vLLM and OpenAI send it)."""
    chunks = sse_chunks(body)
    usage = [c["usage"] for c in chunks if c.get("usage") and not c.get("choices")]
    assert len(usage) == 1 and chunks[-1].get("usage") == usage[0], chunks[-3:]
    return dict(usage[0])
