"""The evaluation set: what a variant's quality is measured on.

JSONL, one object per line (blank lines and lines starting with ``#`` are skipped)::

    {"prompt": "What is 2 + 2?", "responses": ["4", "5"], "label": 0}

``prompt`` is the user's query, ``responses`` two or more candidate answers the GRM scores
together, ``label`` the index of the response a human preferred, or null (absent) when there is
none. Items with a label also measure pairwise accuracy against people; items without one measure
agreement with the reference only.

The set's identity is :func:`dataset_digest`, the sha256 of its bytes as given, recorded next to
every measurement so a result names exactly what it was measured on. Parsing is pure (text in,
items out); every error names the line and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

__all__ = ["DEFAULT_SET", "EvalItem", "EvalSetError", "dataset_digest", "parse_evalset"]

#: The small set shipped in the package (grm_operator/data/evalset-default.jsonl), for smoke tests.
DEFAULT_SET = "evalset-default.jsonl"


class EvalSetError(ValueError):
    """The evaluation set is malformed (the message names the line)."""


@dataclass(frozen=True)
class EvalItem:
    """One item: a query, its candidate responses, and the human-preferred index if known."""

    prompt: str
    responses: tuple[str, ...]
    label: int | None
    line: int


def dataset_digest(data: bytes) -> str:
    """``sha256:<hex>`` of the set's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _item(value: object, line: int, max_responses: int) -> EvalItem:
    where = f"line {line}"
    if not isinstance(value, dict):
        raise EvalSetError(f"{where}: expected a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - {"prompt", "responses", "label"})
    if unknown:
        raise EvalSetError(
            f"{where}: unknown field(s) {', '.join(unknown)} (expected prompt, responses, label)"
        )
    prompt = value.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise EvalSetError(f"{where}: 'prompt' must be a non-empty string")
    responses = value.get("responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise EvalSetError(f"{where}: 'responses' must be a list of strings")
    if not 2 <= len(responses) <= max_responses:
        raise EvalSetError(f"{where}: need 2 to {max_responses} responses, got {len(responses)}")
    label = value.get("label")
    # bool is an int in Python: true/false are not indices.
    if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
        raise EvalSetError(f"{where}: 'label' must be an integer index or null, got {label!r}")
    if label is not None and not 0 <= label < len(responses):
        raise EvalSetError(f"{where}: 'label' {label} is not an index of the {len(responses)} responses")
    return EvalItem(prompt, tuple(responses), label, line)


def parse_evalset(text: str, *, max_responses: int = 16) -> list[EvalItem]:
    """Every item of a JSONL evaluation set; raises :class:`EvalSetError` on the first bad line
    or for a set without items. ``max_responses`` is the worker's limit per score request."""
    items: list[EvalItem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise EvalSetError(f"line {number}: not JSON ({error.msg} at column {error.colno})") from None
        items.append(_item(value, number, max_responses))
    if not items:
        raise EvalSetError("the evaluation set has no items")
    return items
