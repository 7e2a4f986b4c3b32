"""The ``grm-operator`` command table: every row resolves, and subcommands import only their module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from grm_operator import cli


def test_every_subcommand_resolves_to_callables() -> None:
    for sub in cli.SUBCOMMANDS:
        assert callable(cli.resolve(sub.add_arguments)), sub.name
        assert callable(cli.resolve(sub.command)), sub.name
    assert len(cli.COMMANDS) == len(cli.SUBCOMMANDS), "duplicate subcommand names"
    assert {"run", "crd"} <= set(cli.COMMANDS)


def test_resolve_rejects_a_reference_without_function() -> None:
    with pytest.raises(ValueError, match="module:function"):
        cli.resolve("grm_operator.cli")


def test_crd_subcommand_imports_neither_kopf_nor_the_kubernetes_client() -> None:
    code = (
        "import io, contextlib, sys\n"
        "from grm_operator import cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    rc = cli.main(['crd'])\n"
        "assert rc == 0 and 'kind: CustomResourceDefinition' in out.getvalue()\n"
        "print(sorted(m for m in ('kopf', 'kubernetes') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_unknown_subcommand_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for sub in cli.SUBCOMMANDS:
        assert sub.name in text
