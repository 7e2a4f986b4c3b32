"""GRM prompt, score parsing (garbage and truncated output), voting and exact early exit."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grm_worker.scoring import (
    ScoreRequest,
    build_prompt,
    can_stop,
    count_responses,
    leader,
    parse_scores,
    score,
    vote,
)


def test_prompt_has_principles_numbered_responses_and_box_format() -> None:
    prompt = build_prompt("What is 2+2?", ["4", "five"], principles="Be exact.")
    assert "Be exact." in prompt and "User: What is 2+2?" in prompt
    assert prompt.index("[The Begin of Response 1]\n4\n[The End of Response 1]") < prompt.index(
        "[The Begin of Response 2]\nfive\n[The End of Response 2]"
    )
    assert "\\boxed{x, x}" in prompt and "between 1 and 10" in prompt
    assert count_responses(prompt) == 2
    assert count_responses(build_prompt("q", ["a", "b", "c"])) == 3
    assert count_responses("Hello, [The Begin of Response 2] only") == 0


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("Analysis: ...\nScores: \\boxed{6, 8}", 2, (6, 8)),
        ("\\boxed{3,10,1}", 3, (3, 10, 1)),
        ("Response 1: \\boxed{7}. Response 2: \\boxed{4}.", 2, (7, 4)),
        ("draft \\boxed{1, 1} final Scores: \\boxed{ 9 , 2 }", 2, (9, 2)),
    ],
)
def test_parse_valid(text: str, n: int, expected: tuple[int, ...]) -> None:
    result = parse_scores(text, n)
    assert result.ok and result.scores == expected


@pytest.mark.parametrize(
    ("text", "n", "error"),
    [
        ("", 2, "no \\boxed"),
        ("Specific Criteria: clarity. Analysis: response 1 is better. Scores: \\boxed{6,", 2, "no \\boxed"),
        ("Scores: \\boxed{6}", 2, "1 scores for 2"),
        ("Scores: \\boxed{6, 8, 9}", 2, "3 scores for 2"),
        ("Scores: \\boxed{6.5, 8}", 2, "non-integer"),
        ("Scores: \\boxed{0, 8}", 2, "outside"),
        ("Scores: \\boxed{11, 8}", 2, "outside"),
        ("Scores: \\boxed{x, y}", 2, "non-integer"),
        ("\\boxed{\\boxed{}}}}{{", 2, ""),
        ("\x00\xff garbage \\boxed{-3, 4}", 2, "non-integer"),
    ],
)
def test_parse_failures_are_reported_not_raised(text: str, n: int, error: str) -> None:
    result = parse_scores(text, n)
    assert not result.ok and result.error is not None and error in result.error


@given(st.text(max_size=300), st.integers(min_value=0, max_value=16))
def test_parse_never_raises_on_arbitrary_text(text: str, n: int) -> None:
    result = parse_scores(text, n)
    assert result.ok == (result.scores is not None)
    if result.scores is not None:
        assert len(result.scores) == n and all(1 <= s <= 10 for s in result.scores)


def test_vote_sums_valid_samples_and_leader_breaks_ties_by_index() -> None:
    assert vote([(6, 8), None, (9, 2)], 2) == [15, 10]
    assert leader([5, 9, 9, 1]) == 1
    assert leader([0, 0]) == 0


def test_can_stop_margins_and_ties() -> None:
    assert can_stop([45, 10], 3)  # 35 > 27
    assert not can_stop([36, 8], 4)  # 28 < 36
    assert can_stop([9, 0], 1)  # tie at worst, response 0 wins ties
    assert not can_stop([0, 9], 1)  # response 1 could be caught by 0, which would win the tie
    assert can_stop([0, 10], 1)
    assert can_stop([3, 3], 0)


score_vectors = st.lists(st.integers(min_value=1, max_value=10), min_size=2, max_size=5)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(min_value=2, max_value=5).flatmap(
        lambda n: st.lists(
            st.one_of(st.none(), st.lists(st.integers(1, 10), min_size=n, max_size=n)),
            min_size=1,
            max_size=12,
        )
    ),
    st.integers(min_value=1, max_value=5),
)
def test_early_exit_winner_equals_full_voting_winner(samples: list[list[int] | None], per_round: int) -> None:
    """Fold samples in rounds; wherever can_stop says stop, the full vote must agree."""
    n = len(next((s for s in samples if s is not None), [0, 0]))
    samples = [s if s is None or len(s) == n else None for s in samples]
    full = vote(samples, n)
    k = len(samples)
    for used in range(per_round, k + 1, per_round):
        partial = vote(samples[:used], n)
        if any(s is not None for s in samples[:used]) and can_stop(partial, k - used):
            assert leader(partial) == leader(full)


def scripted_sampler(n: int, quality: list[int], seed: int = 0, garbage_every: int = 0):  # type: ignore[no-untyped-def]
    """An engine whose scores follow each response's quality (± 1), via the prompt's order."""
    rng = random.Random(seed)
    calls: list[tuple[int, int]] = []
    drawn = 0

    async def sampler(prompts: list[str], per_prompt: int) -> list[str]:
        nonlocal drawn
        calls.append((len(prompts), per_prompt))
        out = []
        for prompt in prompts:
            shown = sorted(range(n), key=lambda i, p=prompt: p.index(f"answer-{i}"))  # type: ignore[misc]
            for _ in range(per_prompt):
                drawn += 1
                if garbage_every and drawn % garbage_every == 0:
                    out.append("I refuse to score \\boxed{")
                    continue
                values = [min(10, max(1, quality[i] + rng.choice((-1, 0, 1)))) for i in shown]
                out.append("Analysis: fine.\nScores: \\boxed{" + ", ".join(map(str, values)) + "}")
        return out

    return sampler, calls


@pytest.mark.parametrize("mode", ["shuffled", "shared-prefill"])
def test_score_maps_shuffled_scores_back_and_exits_early(mode: str) -> None:
    sampler, calls = scripted_sampler(3, [9, 2, 5])
    request = ScoreRequest(
        query="q", responses=("answer-0", "answer-1", "answer-2"), samples=16, sampling=mode,  # type: ignore[arg-type]
        samples_per_round=2, seed=1,
    )  # fmt: skip
    result = asyncio.run(score(request, sampler))
    assert result.winner == 0 and result.early_exit and result.samples_used < 16
    assert result.scores[0] > result.scores[2] > result.scores[1]
    per_round = (2, 1) if mode == "shuffled" else (1, 2)
    assert calls == [per_round] * result.rounds


def test_score_without_early_exit_uses_full_budget_and_counts_failures() -> None:
    sampler, calls = scripted_sampler(2, [6, 6], garbage_every=3)
    request = ScoreRequest(
        query="q", responses=("answer-0", "answer-1"), samples=7, early_exit=False, samples_per_round=3
    )
    result = asyncio.run(score(request, sampler))
    assert (result.samples_used, result.parse_failures, result.early_exit) == (7, 2, False)
    assert [c[0] for c in calls] == [3, 3, 1]
    assert result.as_json()["samples_budget"] == 7


def test_score_all_garbage_has_no_winner() -> None:
    async def garbage(prompts: list[str], n: int) -> list[str]:
        return ["Scores: \\boxed{" for _ in range(len(prompts) * n)]

    result = asyncio.run(score(ScoreRequest(query="q", responses=("a", "b"), samples=4), garbage))
    assert result.winner is None and result.parse_failures == 4
    assert result.as_json()["mean_scores"] == [None, None]


def queue_sampler(samples: list[list[int] | None], names: list[str]):  # type: ignore[no-untyped-def]
    """An engine answering the given vectors in order (None: garbage), in each prompt's shown order."""
    queue = list(samples)

    async def sampler(prompts: list[str], per_prompt: int) -> list[str]:
        out = []
        for prompt in prompts:
            shown = sorted(range(len(names)), key=lambda i, p=prompt: p.index(names[i]))  # type: ignore[misc]
            for _ in range(per_prompt):
                values = queue.pop(0)
                text = (
                    "no scores"
                    if values is None
                    else "\\boxed{" + ", ".join(str(values[i]) for i in shown) + "}"
                )
                out.append(text)
        return out

    return sampler


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=2, max_value=4).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.one_of(st.none(), st.lists(st.integers(1, 10), min_size=n, max_size=n)),
                min_size=1,
                max_size=10,
            ),
        )
    ),
    st.integers(min_value=1, max_value=4),
    st.sampled_from(["shuffled", "shared-prefill"]),
    st.integers(min_value=0, max_value=2**16),
)
def test_score_with_early_exit_picks_the_full_voting_winner(
    case: tuple[int, list[list[int] | None]], per_round: int, mode: str, seed: int
) -> None:
    n, samples = case
    names = [f"<r{i}>" for i in range(n)]
    request = ScoreRequest(
        query="q", responses=tuple(names), samples=len(samples), sampling=mode,  # type: ignore[arg-type]
        samples_per_round=per_round, seed=seed,
    )  # fmt: skip
    early = asyncio.run(score(request, queue_sampler(samples, names)))
    full = vote(samples, n)
    expected = leader(full) if any(s is not None for s in samples) else None
    assert early.winner == expected
    assert early.samples_used <= len(samples)
    if not early.early_exit:
        assert early.scores == full and early.samples_used == len(samples)
