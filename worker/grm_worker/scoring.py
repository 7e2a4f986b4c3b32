"""GRM scoring: DeepSeek-GRM prompts, robust score parsing, k-sample voting with exact early exit.

A generative reward model answers a scoring prompt with principles, a critique and one score per
response (integers 1–10, DeepSeek-GRM's ``Scores: \\boxed{6, 8}``). Sampling k critiques and
summing the scores ("voting") buys accuracy with compute: DeepSeek-GRM-27B on RewardBench goes
85.2 → 87.7 → 88.5 at k = 1 / 8 / 32 (arXiv 2504.02495).

Exact early exit. Every further valid sample adds between ``SCORE_MIN`` and ``SCORE_MAX`` to each
response, so it moves the difference between two responses' sums by at most
``span = SCORE_MAX − SCORE_MIN = 9``. With ``r`` samples left, the leader ``w`` (lowest index among
equal sums, the tie rule of full voting) stays the winner whatever comes if, for every other
response ``j``::

    S_w − S_j − span·r > 0,   or  = 0 and w < j   (j would tie at best and lose the tie)

A failed sample adds nothing, which lies inside those bounds, so the test is exact: stopping gives
the same winner as drawing all k samples (the unit test ``test_scoring.py`` proves it with
hypothesis). Example: 2 responses, k = 8, rounds of 1, A always scored 9 and B 2: after 4 samples
36 vs 8, margin 28 < 9·4 = 36, go on; after 5 samples 45 vs 10, margin 35 > 9·3 = 27: stop,
3 of 8 samples saved.

Everything here is pure except :func:`score`, which drives an injected async ``Sampler`` (the
engine) round by round.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "SCORE_MAX",
    "SCORE_MIN",
    "SCORE_SPAN",
    "ParseResult",
    "Sampler",
    "ScoreRequest",
    "ScoreResult",
    "build_prompt",
    "can_stop",
    "count_responses",
    "leader",
    "parse_scores",
    "score",
    "vote",
]

SCORE_MIN = 1
SCORE_MAX = 10
SCORE_SPAN = SCORE_MAX - SCORE_MIN

SamplingMode = Literal["shuffled", "shared-prefill"]

DEFAULT_PRINCIPLES = (
    "1. Correctness: the response is factually and logically right.\n"
    "2. Helpfulness: it answers what the user asked, completely.\n"
    "3. Harmlessness: it avoids unsafe or misleading content.\n"
    "4. Clarity: it is well organised and concise."
)

_RESPONSE_BEGIN = "[The Begin of Response {i}]"
_RESPONSE_END = "[The End of Response {i}]"


def build_prompt(query: str, responses: Sequence[str], principles: str | None = None) -> str:
    """The DeepSeek-GRM pointwise scoring prompt: principles, then critique, then scores.

    Responses appear in the given order, numbered from 1; the expected answer ends with
    ``Scores: \\boxed{s1, s2, …}`` in that order.
    """
    n = len(responses)
    example = ", ".join("x" for _ in range(n))
    parts = [
        "You are a skilled expert at scoring responses. You should evaluate the given responses "
        "based on the given judging criteria.",
        "Given the context of the conversation (the last round is the User's query) and multiple "
        "responses from the Assistant, you need to refer to the [General Evaluation Criteria] to "
        "score the responses. Based on the general evaluation criteria, state potential other "
        "specific criteria to the query, the weights of different criteria, and then provide an "
        "overall comprehensive score upon them.",
        f"Each score is an integer between {SCORE_MIN} and {SCORE_MAX}, with a higher score "
        "indicating that the response meets the relevant criteria more closely. Before scoring, "
        "please analyze step by step. Your scoring needs to be as strict as possible.",
        "#### General Evaluation Criteria ####",
        principles if principles else DEFAULT_PRINCIPLES,
        "#### Conversation Context ####",
        f"User: {query}",
        "#### Responses to be Scored ####",
    ]
    for i, response in enumerate(responses, start=1):
        parts.append(f"{_RESPONSE_BEGIN.format(i=i)}\n{response}\n{_RESPONSE_END.format(i=i)}")
    parts += [
        "#### Output Format Requirements ####",
        "Output with three lines\n"
        "Specific Criteria: <other potential criteria specific to the query and the context, and the "
        "weights of each criterion>.\n"
        "Analysis: <compare the responses based on the criteria>.\n"
        f"Scores: <the overall comprehensive score of all responses in order, separated by commas in "
        f"the box, e.g. \\boxed{{{example}}} for {n} responses>.",
    ]
    return "\n\n".join(parts) + "\n\n"


_BEGIN_RE = re.compile(r"\[The Begin of Response (\d+)\]")


def count_responses(prompt: str) -> int:
    """How many responses a GRM scoring prompt carries (0 for any other prompt).

    Used by the sim engine to answer GRM prompts with parsable scores.
    """
    numbers = {int(m) for m in _BEGIN_RE.findall(prompt)}
    n = len(numbers)
    return n if numbers == set(range(1, n + 1)) else 0


@dataclass(frozen=True)
class ParseResult:
    """Scores parsed from one sample, or why there are none."""

    scores: tuple[int, ...] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.scores is not None


_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_INT_RE = re.compile(r"^[+]?\d{1,3}$")


def parse_scores(text: str, n_responses: int) -> ParseResult:
    """Per-response scores from a critique; never raises.

    Accepted: the last ``\\boxed{a, b, …}`` holding ``n_responses`` integers, or (some models
    box each score) the last ``n_responses`` single-number boxes. Anything else (no box,
    truncated output, wrong count, non-integers, out of [1, 10]) is a parse failure.
    """
    if n_responses < 1:
        return ParseResult(None, "no responses to score")
    boxes = _BOXED_RE.findall(text)
    if not boxes:
        return ParseResult(None, "no \\boxed{...} scores (truncated or malformed output)")
    candidates = [boxes[-1].split(",")]
    if len(boxes) >= n_responses:
        candidates.append([b for b in boxes[-n_responses:]])
    last_error = "unparsable"
    for fields in candidates:
        items = [f.strip() for f in fields]
        if len(items) != n_responses:
            last_error = f"{len(items)} scores for {n_responses} responses"
            continue
        if not all(_INT_RE.match(item) for item in items):
            last_error = f"non-integer score in {items!r}"
            continue
        values = tuple(int(item) for item in items)
        if not all(SCORE_MIN <= v <= SCORE_MAX for v in values):
            last_error = f"score outside [{SCORE_MIN}, {SCORE_MAX}] in {values}"
            continue
        return ParseResult(values)
    return ParseResult(None, last_error)


def vote(samples: Sequence[Sequence[int] | None], n_responses: int) -> list[int]:
    """Summed scores per response over the valid samples (``None`` = a parse failure)."""
    sums = [0] * n_responses
    for sample in samples:
        if sample is None:
            continue
        for i, value in enumerate(sample):
            sums[i] += value
    return sums


def leader(sums: Sequence[int]) -> int:
    """Index of the highest sum, the lowest index among equal sums (full voting's tie rule)."""
    best = 0
    for i, value in enumerate(sums):
        if value > sums[best]:
            best = i
    return best


def can_stop(sums: Sequence[int], remaining: int, span: int = SCORE_SPAN) -> bool:
    """True when no ``remaining`` samples can change the winner of ``sums`` (see module docstring)."""
    if remaining <= 0:
        return True
    w = leader(sums)
    for j, value in enumerate(sums):
        if j == w:
            continue
        slack = sums[w] - value - span * remaining
        if slack < 0 or (slack == 0 and j < w):
            return False
    return True


@dataclass(frozen=True)
class ScoreRequest:
    """One /v1/grm/score call, with the deployment's defaults already applied."""

    query: str
    responses: tuple[str, ...]
    samples: int
    principles: str | None = None
    sampling: SamplingMode = "shuffled"
    early_exit: bool = True
    samples_per_round: int = 4
    seed: int = 0
    #: Samples of the request's budget not drawn because the engine had requests waiting (the
    #: request runs with ``samples``; its budget was ``samples + shed``).
    shed: int = 0


@dataclass
class ScoreResult:
    """What /v1/grm/score returns (``scores`` are the summed votes, in the request's order)."""

    scores: list[int]
    winner: int | None
    samples_used: int
    parse_failures: int
    early_exit: bool
    rounds: int = 0
    samples_budget: int = 0
    shed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        valid = self.samples_used - self.parse_failures
        return {
            "scores": self.scores,
            "mean_scores": [s / valid for s in self.scores] if valid else [None] * len(self.scores),
            "winner": self.winner,
            "samples_used": self.samples_used,
            "samples_budget": self.samples_budget,
            "shed": self.shed,
            "parse_failures": self.parse_failures,
            "early_exit": self.early_exit,
            "rounds": self.rounds,
        }


Sampler = Callable[[list[str], int], Awaitable[list[str]]]
"""The engine: ``(prompts, n) -> texts``, ``n`` samples per prompt, grouped by prompt."""


def plan_round(
    n_responses: int, count: int, mode: SamplingMode, rng: random.Random
) -> tuple[list[list[int]], int]:
    """Permutations of one round and the ``n`` per prompt: ``count`` permutations with n = 1
    (shuffled) or one permutation with n = ``count`` (shared-prefill). ``perm[p]`` is the original
    index of the response shown at position ``p``."""

    def shuffled() -> list[int]:
        order = list(range(n_responses))
        rng.shuffle(order)
        return order

    if mode == "shuffled":
        return [shuffled() for _ in range(count)], 1
    return [shuffled()], count


async def score(request: ScoreRequest, sampler: Sampler) -> ScoreResult:
    """Sample critiques in rounds, parse, vote; stop early when the winner cannot change.

    Scores of each sample are mapped back from the shuffled order to the request's order.
    """
    n = len(request.responses)
    if n < 2:
        raise ValueError("need at least 2 responses to score")
    if request.samples < 1:
        raise ValueError("need at least 1 sample")
    rng = random.Random(request.seed)
    parsed: list[list[int] | None] = []
    errors: list[str] = []
    used = rounds = failures = 0
    stopped_early = False
    while used < request.samples:
        count = min(request.samples_per_round, request.samples - used)
        perms, per_prompt = plan_round(n, count, request.sampling, rng)
        prompts = [
            build_prompt(request.query, [request.responses[i] for i in p], request.principles) for p in perms
        ]
        texts = await sampler(prompts, per_prompt)
        if len(texts) != len(perms) * per_prompt:
            raise RuntimeError(f"engine returned {len(texts)} samples, expected {len(perms) * per_prompt}")
        rounds += 1
        for index, text in enumerate(texts):
            perm = perms[index // per_prompt]
            result = parse_scores(text, n)
            used += 1
            if result.scores is None:
                failures += 1
                errors.append(result.error or "unparsable")
                parsed.append(None)
                continue
            in_order = [0] * n
            for position, value in enumerate(result.scores):
                in_order[perm[position]] = value
            parsed.append(in_order)
        sums = vote(parsed, n)
        if (
            request.early_exit
            and used < request.samples
            and used > failures
            and can_stop(sums, request.samples - used)
        ):
            stopped_early = True
            break
    sums = vote(parsed, n)
    winner = leader(sums) if used > failures else None
    return ScoreResult(
        scores=sums,
        winner=winner,
        samples_used=used,
        parse_failures=failures,
        early_exit=stopped_early,
        rounds=rounds,
        samples_budget=request.samples + request.shed,
        shed=request.shed,
        errors=errors,
    )
