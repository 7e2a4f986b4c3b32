"""Policy grid: our policy alone on a wider grid of settings than the benchmark, for policy work.

Its settings are the benchmark's *tuning* set (``autoscale_bench.TUNING``); the benchmark's
held-out set (never used to tune) is not run here. It runs only ``grm`` (``oracle-cold`` of each
setting is computed once and cached, it does not depend on our policy), so one look at a change
costs about 25 s on 2 cores. It prints one line per setting and the mean miss rate
(1 − attainment, averaged over settings); it writes nothing to RESULTS.md.

``--wide`` adds seven scales that no policy change was tuned on (code ×0.35/0.75/1.5/3, conv
×0.9/1.8/3.6; about 60 s more, the first time 2 min for their oracles) with a mean of their own:
the check that a change which helps the grid does not merely fit its bursts.

Run: ``.venv/bin/python bench/policy_grid.py [--jobs 2] [--only SUBSTR] [--wide]``.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor

from autoscale_bench import ATTAINMENT_CAP, GPU_HOURS_FACTOR, ROOT, SPECS, trace_path
from grm_operator.simulator.cli import load_spec
from grm_operator.simulator.fleet import SimConfig
from grm_operator.simulator.report import run_policies
from grm_operator.simulator.trace import load_trace

#: (trace, rate scale): the benchmark's scales and the ones between them.
SCALES = (("conv", 0.6), ("conv", 1.2), ("conv", 2.4), ("code", 0.5), ("code", 1.0), ("code", 2.0))
#: Scales outside the grid, never used to tune the policy (``--wide``).
WIDE_SCALES = (
    ("code", 0.35),
    ("code", 0.75),
    ("code", 1.5),
    ("code", 3.0),
    ("conv", 0.9),
    ("conv", 1.8),
    ("conv", 3.6),
)
ERRORS = (1.0, 1.4)
SAMPLES = 4
#: The bound the ratio is taken to (the hindsight plan paying cold starts), cached per setting.
BOUND = "oracle-cold"
CACHE = ROOT / ".cache" / "policy-grid-oracle-cold.json"

Setting = tuple[str, float, float]


def slug(setting: Setting) -> str:
    trace, scale, error = setting
    return f"{trace}-x{scale:g}-err{error:g}"


def simulate(job: tuple[Setting, str]) -> tuple[Setting, str, dict[str, float | int]]:
    """One run of ``grm`` or the bound, as ``grm-operator simulate`` runs them (report.run_policies)."""
    (trace_name, scale, error), name = job
    spec = load_spec(SPECS / "ladder.yaml", SAMPLES)
    trace = load_trace(trace_path(trace_name)).scaled(scale)
    config = SimConfig(spec=spec, trace=trace, model_error=error, seed=0)
    return (trace_name, scale, error), name, run_policies(config, [name], progress=False)[name].summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one core each)")
    parser.add_argument("--only", default=None, help="only settings whose slug contains this")
    parser.add_argument("--wide", action="store_true", help="also the scales outside the grid")
    args = parser.parse_args(argv)
    wide = [(t, s, e) for t, s in WIDE_SCALES for e in ERRORS] if args.wide else []
    settings = [(t, s, e) for t, s in SCALES for e in ERRORS] + wide
    settings = [s for s in settings if args.only is None or args.only in slug(s)]
    oracle: dict[str, dict[str, float | int]] = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    jobs = [(s, BOUND) for s in settings if slug(s) not in oracle] + [(s, "grm") for s in settings]
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        results = list(pool.map(simulate, jobs))
    for setting, name, summary in results:
        if name == BOUND:
            oracle[slug(setting)] = summary
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(oracle, indent=1))
    misses: list[float] = []
    wide_misses: list[float] = []
    for setting, name, summary in results:
        if name != "grm":
            continue
        attainment = float(summary["slo_attainment"])
        ratio = float(summary["gpu_hours"]) / float(oracle[slug(setting)]["gpu_hours"])
        met = attainment >= ATTAINMENT_CAP and ratio <= GPU_HOURS_FACTOR
        (wide_misses if setting in wide else misses).append(1.0 - attainment)
        print(
            f"{slug(setting):20s} attainment {attainment:7.2%}  GPU-h {float(summary['gpu_hours']):6.2f}"
            f" ({ratio:.2f}× {BOUND})  quality {float(summary['mean_quality']):.4f}"
            f"  switches {summary['switches']}{'  meets both' if met else ''}"
        )
    if misses:
        print(f"mean miss rate {sum(misses) / len(misses):.2%} over {len(misses)} settings")
    if wide_misses:
        mean = sum(wide_misses) / len(wide_misses)
        print(f"mean miss rate {mean:.2%} over {len(wide_misses)} wide settings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
