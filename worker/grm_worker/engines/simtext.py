"""Deterministic text of the simulated engine: token counts, filler, and GRM critiques with scores.

The sim has no tokenizer: a prompt counts one token per 4 characters (English BPE averages
~4 characters a token), and generated text is a list of word tokens. For a GRM scoring prompt
(:func:`grm_worker.scoring.count_responses` > 0) the critique ends with
``Scores: \\boxed{…}``; each response's score is a stable "quality" drawn from a hash of its text
plus ±1 of per-sample noise, so voting converges on the same winner whatever the shuffle, the way
a real reward model would, and truncated critiques (max_tokens too small) lose their scores.

A broken variant (``sim.verdict_flip`` = f): on a fraction f of GRM prompts, chosen by a hash of
their set of responses (so the same requests on every replica and every shuffle), the sim ranks
the responses backwards (quality q → 12 − q). Its verdicts then disagree with a correct sim's on
about f of the score requests whose responses differ in quality (the tests of live agreement
and of the quality gate use it).
"""

from __future__ import annotations

import hashlib
import random
import re

from grm_worker.scoring import SCORE_MAX, SCORE_MIN, count_responses

__all__ = ["count_tokens", "cut_at_stop", "generate_tokens", "response_quality", "verdict_flipped"]

_WORDS = (
    "the", "response", "addresses", "query", "with", "clear", "reasoning", "and", "correct", "facts",
    "while", "other", "misses", "a", "key", "step", "so", "its", "helpfulness", "is", "lower",
    "explanation", "lacks", "precision", "overall",
)  # fmt: skip
_RESPONSE_RE = re.compile(r"\[The Begin of Response (\d+)\]\n(.*?)\n\[The End of Response \1\]", re.S)


def count_tokens(text: str) -> int:
    """Approximate BPE token count: one token per 4 characters, at least 1."""
    return max(1, (len(text) + 3) // 4)


def _digest(*parts: object) -> int:
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def response_quality(response: str) -> int:
    """A stable per-response quality in [3, 9] (the sim GRM's "true" score)."""
    return 3 + _digest("quality", response) % 7


def _filler(rng: random.Random, count: int) -> list[str]:
    return [" " + _WORDS[rng.randrange(len(_WORDS))] for _ in range(count)]


def verdict_flipped(responses: list[str], verdict_flip: float) -> bool:
    """Whether a sim with ``sim.verdict_flip`` = ``verdict_flip`` ranks these responses backwards:
    a stable draw per set of responses (order-free), true on about that fraction of sets."""
    if verdict_flip <= 0.0:
        return False
    return _digest("flip", *sorted(responses)) % 1_000_000 < verdict_flip * 1_000_000


def generate_tokens(
    prompt: str,
    max_tokens: int,
    critique_tokens: int,
    seed: int,
    *,
    plain_tokens: int | None = None,
    verdict_flip: float = 0.0,
) -> tuple[list[str], str]:
    """The tokens the sim generates for ``prompt`` and the finish reason (``stop`` | ``length``).

    Plain prompts get ``max_tokens`` filler tokens (as with ``ignore_eos``), or, with
    ``plain_tokens`` (a chat request without a limit, which a real model ends with its EOS),
    that many and ``stop`` when they fit. GRM prompts get a critique of ``critique_tokens``
    tokens ending in the scores, cut at ``max_tokens``.
    """
    rng = random.Random(seed)
    n = count_responses(prompt)
    if n == 0:
        if plain_tokens is not None and plain_tokens < max_tokens:
            return _filler(rng, plain_tokens), "stop"
        return _filler(rng, max_tokens), "length"
    shown = {int(i): text for i, text in _RESPONSE_RE.findall(prompt)}
    texts = [shown.get(i, str(i)) for i in range(1, n + 1)]
    # Backwards: 12 − q keeps [3, 9] in [3, 9] and reverses the order of every pair.
    flipped = verdict_flipped(texts, verdict_flip)
    scores = []
    for text in texts:
        quality = response_quality(text)
        noisy = (12 - quality if flipped else quality) + rng.choice((-1, 0, 0, 1))
        scores.append(min(SCORE_MAX, max(SCORE_MIN, noisy)))
    tail = ["\nScores:", " \\boxed{" + ", ".join(map(str, scores)) + "}"]
    head = ["Specific Criteria:", *_filler(rng, 6), ".\nAnalysis:"]
    body = _filler(rng, max(0, critique_tokens - len(head) - len(tail)))
    tokens = head + body + tail
    if len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def cut_at_stop(tokens: list[str], stops: tuple[str, ...]) -> tuple[list[str], str | None]:
    """``tokens`` ended at the first of ``stops`` in their text, as vLLM does: generation stops
    with the token that completes the stop string, and the text ends before it (that token and
    any before it that the stop string overlaps emit only their text before it). Returns the
    tokens (one per generated token, some maybe empty) and the stop string, or ``tokens``
    unchanged and None when none occurs."""
    text = "".join(tokens)
    hits = [(text.find(stop), stop) for stop in stops if stop and stop in text]
    if not hits:
        return tokens, None
    at, stop = min(hits)
    end, offset, kept = at + len(stop), 0, []
    for token in tokens:
        start, offset = offset, offset + len(token)
        kept.append(text[start : max(start, min(offset, at))])
        if offset >= end:
            break
    return kept, stop
