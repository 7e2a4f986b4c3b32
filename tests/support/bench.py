"""The benchmark's scripts (bench/*.py, not a package) imported by file for their pure parts."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from support.paths import REPO


def load_bench_module(name: str) -> ModuleType:
    """bench/<name>.py as module ``name`` (registered in sys.modules, so that the scripts' own
    ``import autoscale_bench`` finds the same module)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
