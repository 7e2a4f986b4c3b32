"""Policies compared on every benchmark setting over several seeds: how a policy change is judged
(docs/policy.md §10).

One simulator run per setting of ``bench/autoscale_bench.py`` (tuning and held-out sets), seed
(the setting's seed plus each offset: the step-time jitter of the simulated truth) and policy,
without the bounds; the attainment target of each setting, ``min(99 %, oracle-max − 0.5 pt)``, is
read from the JSON of the last ``make bench`` (``.cache/bench-autoscale``; 99 % where there is
none). Printed per setting: mean and lowest attainment over the seeds, mean GPU-hours, and how
many seeds meet the target; per set: mean attainment, total GPU-hours and the seeds meeting the
target, the numbers the merge criterion of docs/policy.md §10 reads.

Run: ``.venv/bin/python bench/policy_seeds.py [--policy grm,grm-mpc] [--seeds 0,1,2] [--jobs 2]
[--json OUT]`` (~2 min per policy on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import autoscale_bench as ab

BOUNDS_DIR = ab.ROOT / ".cache" / "bench-autoscale"


@dataclass
class Total:
    """One policy's sums over the settings of one set."""

    attainment: float = 0.0  # sum of the settings' mean attainment
    gpu_hours: float = 0.0  # sum of the settings' mean GPU-hours
    meeting: int = 0  # runs meeting their setting's target
    runs: int = 0
    settings: int = 0


@dataclass(frozen=True)
class Run:
    """One policy's run on one setting and seed."""

    slug: str
    group: str
    policy: str
    seed: int
    attainment: float
    gpu_hours: float
    quality: float


def run_one(job: tuple[ab.Setting, int, str]) -> Run:
    """Simulate ``policy`` on ``setting`` with the setting's seed + ``offset``."""
    from grm_operator.simulator.cli import add_arguments, cluster_model, load_spec
    from grm_operator.simulator.fleet import Fleet, SimConfig
    from grm_operator.simulator.policies import make_controller
    from grm_operator.simulator.trace import load_trace

    setting, offset, policy = job
    spec = load_spec(ab.SPECS / setting.spec, setting.samples)
    trace = load_trace(ab.trace_path(setting.trace)).scaled(setting.rate_scale)
    # The setting's cluster flags read as `simulate` reads them (its own parser).
    cli = argparse.ArgumentParser()
    add_arguments(cli)
    flags = cli.parse_args(["--trace", "-", "--spec", "-", *setting.cluster])
    cluster = cluster_model(flags.cluster_gpus, flags.node_delay, flags.node_max_gpus)
    seed = setting.seed + offset
    config = SimConfig(spec=spec, trace=trace, model_error=setting.model_error, seed=seed, cluster=cluster)
    result = Fleet(config, make_controller(policy, spec)).run(None)
    return Run(
        setting.slug,
        setting.group,
        policy,
        seed,
        result.slo_attainment,
        result.gpu_hours,
        result.mean_quality,
    )


def target(slug: str, bounds_dir: Path) -> float:
    """The setting's attainment target from the last benchmark's JSON, else 99 %."""
    path = bounds_dir / f"{slug}.json"
    if not path.exists():
        return ab.ATTAINMENT_CAP
    return float(json.loads(path.read_text())["bounds"]["target"])


def table(runs: list[Run], policies: list[str], bounds_dir: Path) -> str:
    """Per setting and per set: mean/lowest attainment, mean GPU-hours, seeds meeting the target."""
    lines = [
        "| setting | target | "
        + " | ".join(f"{p} attainment (mean / lowest) | {p} GPU-h | {p} meet" for p in policies)
        + " |",
        "|---|---|" + "---|---|---|" * len(policies),
    ]
    totals: dict[tuple[str, str], Total] = {}
    for setting in ab.SETTINGS:
        goal = target(setting.slug, bounds_dir)
        cells = [setting.slug, f"{goal:.2%}"]
        for p in policies:
            mine = [r for r in runs if r.slug == setting.slug and r.policy == p]
            if not mine:
                cells += ["", "", ""]
                continue
            att = [r.attainment for r in mine]
            hours = statistics.mean(r.gpu_hours for r in mine)
            meet = sum(a >= goal - ab.ATT_EPS for a in att)
            cells += [f"{statistics.mean(att):.2%} / {min(att):.2%}", f"{hours:.2f}", f"{meet}/{len(att)}"]
            total = totals.setdefault((setting.group, p), Total())
            total.attainment += statistics.mean(att)
            total.gpu_hours += hours
            total.meeting += meet
            total.runs += len(att)
            total.settings += 1
        lines.append("| " + " | ".join(cells) + " |")
    for group in ("tuning", "held-out"):
        cells = [f"**{group}**", ""]
        for p in policies:
            t = totals.get((group, p))
            cells += (
                [f"{t.attainment / t.settings:.2%} (mean)", f"{t.gpu_hours:.2f}", f"{t.meeting}/{t.runs}"]
                if t
                else ["", "", ""]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="grm,grm-mpc", help="comma-separated policies")
    parser.add_argument("--seeds", default="0,1,2", help="offsets added to each setting's seed")
    parser.add_argument("--set", choices=("tuning", "held-out", "all"), default="all")
    parser.add_argument("--only", default="", help="only settings whose slug contains this")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one core each)")
    parser.add_argument("--bounds", default=str(BOUNDS_DIR), help="JSON of the last make bench")
    parser.add_argument("--json", default="", help="write the runs here")
    args = parser.parse_args(argv)
    policies = [p for p in args.policy.split(",") if p]
    offsets = [int(s) for s in args.seeds.split(",") if s]
    settings = [s for s in ab.SETTINGS if (args.set == "all" or s.group == args.set) and args.only in s.slug]
    for s in settings:
        ab.trace_path(s.trace)  # generate synthetic traces once, before the workers race for them
    jobs = [(s, o, p) for s in settings for o in offsets for p in policies]
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        runs = list(pool.map(run_one, jobs))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in runs], indent=1) + "\n")
    print(table(runs, policies, Path(args.bounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
