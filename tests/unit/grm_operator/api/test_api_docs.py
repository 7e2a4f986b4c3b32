"""docs/api-reference.md is generated from the models: up to date, and it documents every field
of the CRD's schema with its type, default, bounds and description."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from grm_operator.api import docs
from grm_operator.api.crd import build_crd
from support.paths import REPO

ROOT = REPO
COMMITTED = ROOT / docs.DEFAULT_OUTPUT
SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_reference_matches_the_models() -> None:
    actual = COMMITTED.read_text() if COMMITTED.exists() else "(missing)"
    assert actual == docs.render(), (
        f"{docs.DEFAULT_OUTPUT} is stale: the API models changed. Run `make crd` "
        "(or `grm-operator api-docs`) and commit the result."
    )


def _fields(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    for name, sub in (schema.get("properties") or {}).items():
        yield path, name, sub
        yield from _fields(sub, f"{path}.{name}")
        if isinstance(sub.get("items"), Mapping):
            yield from _fields(sub["items"], f"{path}.{name}[]")


def test_every_field_has_a_row_under_its_parent_with_its_description() -> None:
    text = docs.render()
    count = 0
    for root in ("spec", "status"):
        for parent, name, sub in _fields(SCHEMA["properties"][root], f".{root}"):
            section = text.split(f"### `{parent}`\n", 1)
            assert len(section) == 2, f"no section for {parent}"
            body = section[1].split("\n### ", 1)[0]
            row = next((line for line in body.splitlines() if line.startswith(f"| `{name}` |")), None)
            assert row is not None, f"{parent}.{name} undocumented"
            assert sub.get("description"), f"{parent}.{name} has no description (kubectl explain prints it)"
            assert sub["description"].replace("|", "\\|") in row
            count += 1
    assert count > 100


def test_rows_show_type_required_default_and_bounds() -> None:
    text = docs.render()
    assert '| `mode` | string | no | `"Auto"` | `Auto` \\| `Manual` \\| `External` |' in text
    assert "| `ttftP95` | duration | no |  |" in text
    assert "| `variants` | []object | yes |  | items ≥ 1; items ≤ 8 |" in text
    assert "| `quality` | number | yes |  | 0.0 < x ≤ 1.0 |" in text
    assert "| `nodeSelector` | map[string]string | no |" in text
    assert "— *variant names must be unique*" in text


def test_cli_writes_the_file(tmp_path: Path) -> None:
    from grm_operator import cli

    out = tmp_path / "ref.md"
    assert cli.main(["api-docs", "-o", str(out)]) == 0
    assert out.read_text() == docs.render()
