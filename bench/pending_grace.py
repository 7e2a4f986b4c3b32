"""``spec.scaling.pendingGrace`` on clusters short of GPUs: ``grm`` at grace 0, the default and a
large one, on a cluster with a node autoscaler and on a fixed one below maxGPUs.

Each run is ``grm-operator simulate --policy grm`` (the operator's adapter and actuation) with a
cluster model (:mod:`grm_operator.simulator.cluster`) and ``--pending-grace``. The settings are
held-out ones (rate scales and model errors not in the tuning set; the default grace was chosen
from node-arrival times, not on any of them). With ``--bounds`` the hindsight bounds of each
setting run too (on the same cluster), which shows what any controller could reach there.

Run: ``.venv/bin/python bench/pending_grace.py [--jobs 2] [--bounds] [--markdown]``; about a
minute on two cores without the bounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "bench" / "traces"
SPECS = ROOT / "bench" / "specs"


@dataclass(frozen=True)
class Cluster:
    """A cluster model as simulate's flags."""

    name: str
    flags: tuple[str, ...]


#: A node autoscaler bringing a GPU node 3 minutes after a pod goes Pending (Karpenter on a cloud
#: GPU instance: 1-2 min to launch and join, 1-2 min for the GPU driver and device plugin), and a
#: slow one (8 min: a large instance type short in the zone, a driver install at boot), from 4 GPUs
#: up to maxGPUs (16); and a fixed cluster of 8 GPUs (half of maxGPUs) without one.
CLUSTERS = (
    Cluster(
        "autoscaler 4→16 GPUs, nodes in 3 min",
        ("--cluster-gpus", "4", "--node-delay", "3m", "--node-max-gpus", "16"),
    ),
    Cluster(
        "autoscaler 4→16 GPUs, nodes in 8 min",
        ("--cluster-gpus", "4", "--node-delay", "8m", "--node-max-gpus", "16"),
    ),
    Cluster("fixed 8 GPUs, no autoscaler", ("--cluster-gpus", "8")),
)
#: The default (5m) between none and one longer than any node arrival.
GRACES = ("0s", "5m", "30m")


@dataclass(frozen=True)
class Setting:
    """A trace at a rate scale with a model error (held-out: none of the tuning set's)."""

    trace: str
    rate_scale: float
    model_error: float

    @property
    def title(self) -> str:
        return f"{self.trace} ×{self.rate_scale:g}, model error ×{self.model_error:g}"


SETTINGS = (Setting("conv", 1.8, 1.2), Setting("code", 1.5, 1.2))


def run(setting: Setting, cluster: Cluster, grace: str, bounds: bool, out: Path) -> dict[str, Any]:
    """One simulate run; its JSON document."""
    policies = "grm,oracle-max,oracle,oracle-cold" if bounds else "grm"
    cmd = [
        sys.executable,
        "-m",
        "grm_operator.cli",
        "simulate",
        "--trace",
        str(TRACES / f"AzureLLMInferenceTrace_{setting.trace}.csv"),
        "--spec",
        str(SPECS / "ladder.yaml"),
        "--policy",
        policies,
        "--rate-scale",
        f"{setting.rate_scale:g}",
        "--samples",
        "4",
        "--model-error",
        f"{setting.model_error:g}",
        "--pending-grace",
        grace,
        "--json",
        str(out),
        "--quiet",
        *cluster.flags,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one core each)")
    parser.add_argument("--bounds", action="store_true", help="also the hindsight bounds (slower)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    jobs = [(s, c, g) for s in SETTINGS for c in CLUSTERS for g in GRACES]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(run, s, c, g, args.bounds and g == GRACES[0], Path(tmp) / f"{i}.json")
            for i, (s, c, g) in enumerate(jobs)
        ]
        docs = [f.result() for f in futures]
    print("| setting | cluster | pendingGrace | SLO attainment | GPU-hours | switches | quality |")
    print("|---|---|---|---|---|---|---|")
    for (s, c, g), doc in zip(jobs, docs, strict=True):
        p = doc["policies"]["grm"]
        print(
            f"| {s.title} | {c.name} | {g} | {p['slo_attainment'] * 100:.2f} % | {p['gpu_hours']:.2f} | "
            f"{p['switches']} | {p['mean_quality']:.3f} |"
        )
        if "oracle-cold" in doc["policies"]:
            for name in ("oracle-max", "oracle", "oracle-cold"):
                b = doc["policies"][name]
                print(
                    f"| {s.title} | {c.name} | ({name}) | {b['slo_attainment'] * 100:.2f} % | "
                    f"{b['gpu_hours']:.2f} | {b['switches']} | {b['mean_quality']:.3f} |"
                )
    print(f"\n{len(jobs)} runs in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
