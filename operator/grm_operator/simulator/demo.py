"""``grm-operator demo``: every policy of the fleet simulator on bundled data.

This is the simulator's demo, with no cluster; the live one runs the operator on a local cluster
(``make demo``, i.e. ``grm-live-demo``; docs/demo.md).

The bundled trace (``grm_operator/data/azure-conv-slice.csv``, every 40th request of the Azure
conversational hour) is replayed 8× as fast — 485 score requests in about 7 minutes, peaking
near 1.6 requests/s, which needs 3–5 bf16 replicas — on ``data/demo-spec.yaml``. Takes ~10 s.
"""

from __future__ import annotations

import argparse
from importlib import resources

from grm_operator.simulator.cli import simulate
from grm_operator.simulator.policies import POLICIES

DEMO_TRACE = "azure-conv-slice.csv"
DEMO_SPEC = "demo-spec.yaml"
DEMO_RATE_SCALE = 8.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``demo``'s arguments."""
    parser.add_argument("--plot", default="grm-demo.png", help="where to write the plot (PNG)")
    parser.add_argument("--json", default=None, help="write the results (JSON) here")


def command(args: argparse.Namespace) -> int:
    """Every policy on the bundled spec and trace slice; prints the table, writes the plot."""
    data = resources.files("grm_operator") / "data"
    with resources.as_file(data / DEMO_TRACE) as trace, resources.as_file(data / DEMO_SPEC) as spec:
        simulate(
            trace=trace,
            spec_path=spec,
            policies=list(POLICIES),
            rate_scale=DEMO_RATE_SCALE,
            json_out=args.json,
            plot_out=args.plot,
        )
    print(f"plot: {args.plot}")
    return 0
