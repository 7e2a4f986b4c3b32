"""Every reference the repository makes to itself resolves: file paths named in docs, docstrings
and comments exist, dotted names of our modules import, and nothing points at material a user
of the repository does not have (the developers' ``../shared/`` folder, a design card's sections).
"""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

from support.paths import REPO

TOP_DIRS = (
    "docs",
    "tests",
    "testkit",
    "operator",
    "worker",
    "hack",
    "e2e",
    "bench",
    "examples",
    "helm",
    "crds",
    "images",
)
_TOPS = "|".join(TOP_DIRS)
PATH_RE = re.compile(
    rf"(?<![\w./-])((?:{_TOPS})/[\w./-]*\w\.(?:py|md|yaml|yml|json|sh|txt|csv|toml|png|tpl))(?![\w/])"
)
# Paths built in code from the repository root: REPO / "tests" / "support" / "tiny_llama.py".
JOINED_RE = re.compile(r'\b(?:REPO|ROOT)((?:\s*/\s*"[\w.-]+")+)')
MODULE_RE = re.compile(r"(?<![\w.])(grm_(?:operator|worker|testkit)(?:\.[A-Za-z_]\w*)+)")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".tpl", ".json"}


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    files = [
        REPO / n
        for n in names
        if Path(n).suffix in TEXT_SUFFIXES or Path(n).name in {"Makefile", "Dockerfile"}
    ]
    # Recorded results and traces quote whatever they quoted at the time.
    return [
        f
        for f in files
        if f.exists() and f.name not in {"RESULTS.md", "test_references.py"} and "traces" not in f.parts
    ]


def _resolves(dotted: str) -> bool:
    """A module, or an attribute of the longest importable prefix (``pkg.mod.Name.attr``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_file_path_named_in_the_repository_exists() -> None:
    missing = []
    for path in tracked_text_files():
        for match in PATH_RE.finditer(path.read_text(errors="replace")):
            ref = match.group(1).rstrip(".")
            if any(ch in ref for ch in "*{<") or (REPO / ref).exists():
                continue
            missing.append(f"{path.relative_to(REPO)}: {ref}")
        for match in JOINED_RE.finditer(path.read_text(errors="replace")):
            ref = "/".join(re.findall(r'"([\w.-]+)"', match.group(1)))
            generated = ref.startswith((".cache/", "out/"))
            if "." in ref.rsplit("/", 1)[-1] and not generated and not (REPO / ref).exists():
                missing.append(f"{path.relative_to(REPO)}: {ref}")
    assert not missing, "\n".join(missing)


def test_every_dotted_module_name_imports() -> None:
    unresolved = set()
    for path in tracked_text_files():
        for match in MODULE_RE.finditer(path.read_text(errors="replace")):
            dotted = match.group(1).rstrip(".")
            if not _resolves(dotted):
                unresolved.add(f"{path.relative_to(REPO)}: {dotted}")
    assert not unresolved, "\n".join(sorted(unresolved))


@pytest.mark.parametrize(
    "pattern", [r"\.\./shared/", r"\bshared/(?:DESIGN|perf-model|testing-notes)", r"DESIGN §"]
)
def test_nothing_points_outside_the_repository(pattern: str) -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for path in tracked_text_files()
        if path.suffix != ".md" or "docs" in path.parts or path.parent == REPO
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if re.search(pattern, line) and path.name != "test_references.py"
    ]
    assert not found, found


def test_the_checks_above_can_fail(tmp_path: Path) -> None:
    text = "see docs/no-such-page.md and grm_operator.control.no_such_module; DESIGN §4"
    assert [m.group(1) for m in PATH_RE.finditer(text)] == ["docs/no-such-page.md"]
    assert not (REPO / "docs/no-such-page.md").exists()
    assert [m.group(1) for m in MODULE_RE.finditer(text)] == ["grm_operator.control.no_such_module"]
    assert not _resolves("grm_operator.control.no_such_module")
    assert _resolves("grm_operator.api.models.GRMDeploymentSpec")
    joined = 'REPO / "tests" / "integration" / "tiny_llama.py"'
    found = [m.group(1) for m in JOINED_RE.finditer(joined)]
    assert found == [' / "tests" / "integration" / "tiny_llama.py"']
