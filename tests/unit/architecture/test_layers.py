"""The layers of the product packages point down, as ``[tool.importlinter]`` in pyproject.toml
declares them (import-linter, the tool Kopf uses for the same job).

Each contract is also shown to fail: a copy of the packages with one import that breaks it must
make ``lint-imports`` exit non-zero and name that contract, so a contract that matches nothing
(a renamed package, a typo in a layer) cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_every_import_contract_is_kept() -> None:
    result = lint_imports([REPO / "operator", REPO / "worker"])
    assert result.returncode == 0, result.stdout + result.stderr


# (module file to edit, import appended to it, the contract it breaks)
BREAKS = [
    ("operator/grm_operator/policy/types.py", "import grm_operator.control.builders", "operator-layers"),
    ("operator/grm_operator/control/status.py", "import grm_operator.handlers.reconcile", "operator-layers"),
    # render sits on top, beside cli: the builders it uses may not import it back.
    ("operator/grm_operator/control/builders/replicas.py", "import grm_operator.render", "operator-layers"),
    ("operator/grm_operator/api/models.py", "import grm_operator.policy.types", "operator-layers"),
    ("operator/grm_operator/control/builders/workerconfig.py", "import grm_worker.server", "worker-contract"),
    ("operator/grm_operator/policy/decide.py", "import aiohttp", "pure-core"),
    ("operator/grm_operator/quality/stats.py", "import subprocess", "pure-core"),
    ("operator/grm_operator/quality/measure.py", "import grm_operator.tools.evaluate", "operator-layers"),
    ("operator/grm_operator/tools/quantize.py", "import grm_worker.server", "worker-contract"),
    ("worker/grm_worker/server.py", "import grm_testkit.traffic", "product-only"),
    ("worker/grm_worker/contract/config.py", "import grm_worker.engines.vllm_args", "contract-bottom"),
]


@pytest.mark.parametrize(("path", "line", "contract"), BREAKS, ids=[b[2] + ":" + b[0] for b in BREAKS])
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, path: str, line: str, contract: str) -> None:
    for top in ("operator", "worker"):
        shutil.copytree(REPO / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    edited = tmp_path / path
    edited.write_text(edited.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports([tmp_path / "operator", tmp_path / "worker"])
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts")[-1]
    names = {
        "operator-layers": "grm_operator: cli > simulator",
        "worker-contract": "the operator imports only the worker's contract",
        "contract-bottom": "the worker's contract imports nothing else of the worker",
        "pure-core": "api, policy and control do no I/O",
        "product-only": "the product never imports the test kit",
    }
    assert names[contract] in broken, result.stdout
