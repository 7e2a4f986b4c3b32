"""The ``grm-operator`` command line: a table of subcommands, each implemented in its own module.

A subcommand is one row of :data:`SUBCOMMANDS`: its name, ``"module:function"`` references to the
function that adds its arguments to an ``argparse`` parser and to the function that runs it
(``command(args) -> int``, the exit status), and a one-line help. Modules are imported only when
their subcommand is parsed or run, so ``grm-operator crd`` never imports kopf or the Kubernetes
client. Registering a subcommand is a one-line change to the table.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast


@dataclass(frozen=True)
class Subcommand:
    """One ``grm-operator`` subcommand: where its argument parser and its implementation live."""

    name: str
    add_arguments: str
    command: str
    help: str


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "run",
        "grm_operator.handlers.runtime:add_arguments",
        "grm_operator.handlers.runtime:command",
        "run the operator (kopf) against the cluster of $KUBECONFIG or the in-cluster config",
    ),
    Subcommand(
        "crd",
        "grm_operator.api.crd:add_arguments",
        "grm_operator.api.crd:command",
        "print the GRMDeployment CustomResourceDefinition generated from the API models (YAML)",
    ),
    Subcommand(
        "api-docs",
        "grm_operator.api.docs:add_arguments",
        "grm_operator.api.docs:command",
        "write the GRMDeployment API reference (Markdown) generated from the API models",
    ),
    Subcommand(
        "render",
        "grm_operator.render:add_arguments",
        "grm_operator.render:command",
        "print, as YAML, every object the operator would create or update for a GRMDeployment file",
    ),
    Subcommand(
        "quantize",
        "grm_operator.tools.quantize:add_arguments",
        "grm_operator.tools.quantize:command",
        "build a compressed variant (FP8_DYNAMIC, W8A8, W4A16, 2:4 pruning) with llm-compressor",
    ),
    Subcommand(
        "evaluate",
        "grm_operator.tools.evaluate:add_arguments",
        "grm_operator.tools.evaluate:command",
        "measure a variant's GRM verdicts against the reference's on the real engine (JSON)",
    ),
    Subcommand(
        "simulate",
        "grm_operator.simulator.cli:add_arguments",
        "grm_operator.simulator.cli:command",
        "trace-driven fleet simulation: our policy against the baselines (table, --json, --plot)",
    ),
    Subcommand(
        "demo",
        "grm_operator.simulator.demo:add_arguments",
        "grm_operator.simulator.demo:command",
        "every scaling policy on a bundled trace slice and spec: comparison table and plot",
    ),
)
"""Every subcommand, in the order ``--help`` lists them."""

COMMANDS: dict[str, Subcommand] = {sub.name: sub for sub in SUBCOMMANDS}


def resolve(reference: str) -> Callable[..., Any]:
    """The function named by ``"package.module:function"`` (imports the module)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{reference!r} is not of the form 'module:function'")
    function = getattr(importlib.import_module(module_name), attribute)
    return cast(Callable[..., Any], function)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser. With ``only``, only that subcommand's module is imported for its
    arguments (the others get a bare parser), which keeps ``grm-operator crd`` light."""
    parser = argparse.ArgumentParser(
        prog="grm-operator",
        description="Elastic, SLO-driven serving of generative reward models on vLLM (Kubernetes operator).",
    )
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    subparsers.required = True
    for sub in SUBCOMMANDS:
        child = subparsers.add_parser(sub.name, help=sub.help, description=sub.help)
        child.set_defaults(_subcommand=sub.name)
        if only is None or only == sub.name:
            resolve(sub.add_arguments)(child)
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first argument not starting with ``-``), if known."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``grm-operator`` console script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen(args_list)
    # Without a known subcommand (``--help``, a typo) argparse prints usage; no module is needed.
    parser = build_parser(only=chosen if chosen is not None else "")
    args = parser.parse_args(args_list)
    status = resolve(COMMANDS[args._subcommand].command)(args)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
