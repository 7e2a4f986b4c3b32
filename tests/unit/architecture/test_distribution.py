"""What ships: the grm-elastic wheel and the operator image hold the product and nothing else.

The wheel is built for real (``uv build``, PEP 517 with the project's own backend) from a copy of
exactly what the operator image's recipe copies (so a stale ``build/`` folder in the checkout
cannot leak into it), and its file list is the evidence: every module is under ``grm_operator``
or ``grm_worker``; the test kit, build tooling and tests stay out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support.paths import REPO

UV = Path(sys.executable).with_name("uv")
#: What images/operator/Dockerfile copies into its build stage (checked below).
IMAGE_SOURCES = ("pyproject.toml", "README.md", "operator", "worker")


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    source = tmp_path_factory.mktemp("source")
    for name in IMAGE_SOURCES:
        if (REPO / name).is_dir():
            skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(REPO / name, source / name, ignore=skip)
        else:
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [str(UV), "build", "--quiet", "--wheel", "--out-dir", str(out), str(source)],
        check=True,
        timeout=600,
    )
    (wheel,) = out.glob("grm_elastic-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_wheel_holds_only_the_product_packages(wheel_files: list[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_files}
    assert tops == {"grm_operator", "grm_worker", next(t for t in tops if t.endswith(".dist-info"))}


def test_the_wheel_holds_every_product_module_and_no_test_infrastructure(wheel_files: list[str]) -> None:
    modules = {name for name in wheel_files if name.endswith(".py")}
    expected = {
        str(path.relative_to(REPO / top))
        for top in ("operator", "worker")
        for path in (REPO / top).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules == expected
    for banned in ("cluster/", "devtools", "livedemo", "chartgen", "rbac_usage", "conftest", "grm_testkit"):
        assert not [m for m in modules if banned in m], banned


def test_the_operator_image_copies_only_what_the_wheel_is_built_from() -> None:
    dockerfile = (REPO / "images" / "operator" / "Dockerfile").read_text()
    sources = set()
    for line in dockerfile.splitlines():
        match = re.match(r"COPY\s+(?!--from)(.+?)\s+\S+$", line.strip())
        if match:
            sources.update(match.group(1).split())
    assert sources == set(IMAGE_SOURCES)
    install = re.search(r"pip install .*'\.\[(\w+)\]'", dockerfile)
    assert install is not None and install.group(1) == "operator"
