"""The hindsight bounds' optimality gap on small cases: each bound's plan against an exhaustive
search over every per-minute plan, each replayed by the fleet simulator (docs/benchmark.md §Bounds).

The case is the one ``tests/unit/grm_operator/simulator/test_hindsight.py`` checks: bf16 (2 GPUs)
and fp8 of ``grm_operator/data/demo-spec.yaml`` at samples 1–4, maxReplicas 3, maxGPUs 4 — five
choices a minute — and three minutes of evenly spaced requests (1000-token prompts, 200-token
critiques) at the rates given. Three cases take about a minute on one core.

Run: ``.venv/bin/python bench/bound_gap.py``.
"""

from __future__ import annotations

import itertools
import sys
from importlib import resources

import numpy as np

from grm_operator.api.models import GRMDeploymentSpec
from grm_operator.simulator import hindsight
from grm_operator.simulator.cli import load_spec
from grm_operator.simulator.fleet import SimConfig
from grm_operator.simulator.hindsight import Step, hindsight_bounds
from grm_operator.simulator.trace import Trace

CASES = (((0.5, 4.0, 1.0), 0), ((3.0, 0.5, 5.0), 1), ((1.0, 2.0, 4.0), 2))


def small_spec() -> GRMDeploymentSpec:
    with resources.as_file(resources.files("grm_operator") / "data" / "demo-spec.yaml") as path:
        spec = load_spec(path, samples=4)
    data = spec.model_dump(by_alias=True, exclude_none=True)
    data["variants"] = data["variants"][:2]
    data["scaling"].update({"maxReplicas": 3, "maxGPUs": 4})
    return GRMDeploymentSpec.model_validate(data)


def stepped_trace(rates: tuple[float, ...], seconds: float = 60.0) -> Trace:
    """Evenly spaced arrivals, ``rates[m]`` requests/s in minute ``m``."""
    times = np.concatenate(
        [m * seconds + (np.arange(int(r * seconds), dtype=np.float64) + 0.5) / r for m, r in enumerate(rates)]
    )
    return Trace(times, np.full(times.size, 1000, np.int64), np.full(times.size, 200, np.int64), "stepped")


def main() -> int:
    spec = small_spec()
    points = hindsight.cheapest_points(spec)
    choices = [
        Step(p.variant.name, p.samples, n) for p in points for n in range(1, hindsight.budget(spec, p) + 1)
    ]
    print("| load per minute (requests/s) | seed | bound | DP plan GPU-h | exhaustive optimum GPU-h | gap |")
    print("|---|---|---|---|---|---|")
    for rates, seed in CASES:
        config = SimConfig(spec=spec, trace=stepped_trace(rates), seed=seed)
        bounds = hindsight_bounds(config)
        for name, cold in (("oracle", False), ("oracle-cold", True)):
            best = min(
                (
                    r.gpu_hours
                    for plan in itertools.product(choices, repeat=len(rates))
                    if (r := hindsight.simulate(config, "exhaustive", list(plan), cold=cold)).slo_attainment
                    >= bounds.target
                ),
                default=float("nan"),
            )
            got = bounds.bounds[name].result.gpu_hours
            print(
                f"| {', '.join(f'{r:g}' for r in rates)} | {seed} | {name} | {got:.4f} | {best:.4f} "
                f"| {100 * (got / best - 1):.1f} % |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
