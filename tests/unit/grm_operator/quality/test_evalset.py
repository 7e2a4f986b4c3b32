"""Evaluation sets: the JSONL format, its errors, the shipped default set, measurements."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from grm_operator.quality.evalset import DEFAULT_SET, EvalItem, EvalSetError, dataset_digest, parse_evalset
from grm_operator.quality.measure import MeasureError, Verdict, measure


def test_parses_items_labels_comments_and_blank_lines() -> None:
    text = (
        "# a comment\n"
        '{"prompt": "2+2?", "responses": ["4", "5"], "label": 0}\n'
        "\n"
        '{"prompt": "pick", "responses": ["a", "b", "c"], "label": null}\n'
        '{"prompt": "no label", "responses": ["a", "b"]}\n'
    )
    items = parse_evalset(text)
    assert items == [
        EvalItem("2+2?", ("4", "5"), 0, 2),
        EvalItem("pick", ("a", "b", "c"), None, 4),
        EvalItem("no label", ("a", "b"), None, 5),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1: not JSON"),
        ("[1, 2]", "line 1: expected a JSON object, got list"),
        ('{"prompt": "", "responses": ["a", "b"]}', "'prompt' must be a non-empty string"),
        ('{"prompt": "q", "responses": "ab"}', "'responses' must be a list of strings"),
        ('{"prompt": "q", "responses": ["a"]}', "need 2 to 16 responses, got 1"),
        ('{"prompt": "q", "responses": ["a", 2]}', "'responses' must be a list of strings"),
        ('{"prompt": "q", "responses": ["a", "b"], "label": 2}', "'label' 2 is not an index of the 2"),
        (
            '{"prompt": "q", "responses": ["a", "b"], "label": true}',
            "'label' must be an integer index or null",
        ),
        (
            '{"prompt": "q", "responses": ["a", "b"], "label": "0"}',
            "'label' must be an integer index or null",
        ),
        ('{"prompt": "q", "responses": ["a", "b"], "chosen": 0}', "unknown field(s) chosen"),
    ],
)
def test_bad_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(EvalSetError) as error:
        parse_evalset(line + "\n")
    assert message in str(error.value)
    assert str(error.value).startswith("line 1:")


def test_an_empty_set_is_an_error() -> None:
    with pytest.raises(EvalSetError, match="no items"):
        parse_evalset("# only a comment\n\n")


def test_the_error_names_the_right_line() -> None:
    good = json.dumps({"prompt": "q", "responses": ["a", "b"]})
    with pytest.raises(EvalSetError, match=r"^line 3: "):
        parse_evalset(f"{good}\n{good}\n{{\n")


def test_digest_is_sha256_of_the_bytes() -> None:
    assert dataset_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert dataset_digest(b"a") != dataset_digest(b"a\n")


def test_the_shipped_default_set_parses_and_is_labelled() -> None:
    text = resources.files("grm_operator").joinpath("data", DEFAULT_SET).read_text()
    items = parse_evalset(text)
    assert len(items) >= 30
    assert all(item.label is not None for item in items)
    # Both positions win: a model that always picks the first response is not 100 % accurate.
    assert {item.label for item in items} == {0, 1}


def _items(labels: list[int | None]) -> list[EvalItem]:
    return [EvalItem(f"q{i}", ("a", "b"), label, i + 1) for i, label in enumerate(labels)]


def test_measure_counts_agreement_accuracy_and_no_verdicts() -> None:
    items = _items([0, 1, 0, None, 1, 0])
    reference = [
        Verdict(0, (8.0, 3.0), 2, 0),
        Verdict(1, (2.0, 9.0), 2, 0),
        Verdict(0, (7.0, 4.0), 2, 0),
        Verdict(None, None, 2, 2),  # no reference verdict: not counted
        Verdict(1, (3.0, 6.0), 2, 0),
        Verdict(0, (9.0, 1.0), 2, 0),
    ]
    variant = [
        Verdict(0, (8.0, 2.0), 2, 0),
        Verdict(0, (6.0, 5.0), 2, 0),  # disagrees
        Verdict(0, (7.0, 3.0), 2, 0),
        Verdict(1, (1.0, 2.0), 2, 0),
        Verdict(None, None, 2, 2),  # no variant verdict: a disagreement, and wrong for accuracy
        Verdict(0, (9.0, 2.0), 2, 0),
    ]
    result = measure(items, reference, variant)
    assert result["n"] == 5
    assert result["agreement"] == pytest.approx(3 / 5)
    assert result["agreement_low"] < 0.6 < result["agreement_high"]
    assert result["skipped_no_reference_verdict"] == 1
    assert result["variant_no_verdict"] == 1
    assert result["accuracy_n"] == 5
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["reference_accuracy"] == pytest.approx(1.0)
    assert result["rank_pairs"] == 8
    assert -1.0 <= result["rank_correlation"] <= 1.0
    assert result["variant_parse_failure_rate"] == pytest.approx(2 / 12)


def test_measure_without_labels_reports_accuracy_null() -> None:
    items = _items([None, None])
    verdicts = [Verdict(0, (5.0, 4.0), 1, 0), Verdict(1, (4.0, 5.0), 1, 0)]
    result = measure(items, verdicts, verdicts)
    assert result["accuracy"] is None and result["accuracy_n"] == 0
    assert result["agreement"] == 1.0
    # 4 pairs are too few for an interval of tau: no rank correlation rather than a made-up one.
    assert result["rank_correlation"] is None


def test_measure_refuses_a_reference_without_verdicts() -> None:
    items = _items([0, 1])
    none = [Verdict(None, None, 2, 2)] * 2
    with pytest.raises(MeasureError, match="reference reached a verdict on none of the 2 items"):
        measure(items, none, none)
