"""Worker benchmarks: the front's added latency, one sim worker's throughput on one core, samples
saved by exact early exit, and the cost of shuffled vs shared-prefill sampling.

    .venv/bin/python bench/worker_bench.py            # prints the markdown section
    .venv/bin/python bench/worker_bench.py --quick    # fewer requests (a smoke run)

1. Added latency: the same non-streamed completion (16 output tokens, sim engine at 1000× so the
   engine's own time is ~0.3 ms) sent (a) to the sim engine served alone (`grm-worker
   sim-engine`, the "engine directly" baseline, like vLLM's own server), (b) through the front
   with the engine in-process (`serve --engine sim`), (c) through the front proxying over
   loopback to (a) (`serve --engine-url`: the vLLM path). p50/p99 at 1 and 64 concurrent.
2. Throughput: a closed loop of 64 concurrent clients against `serve --engine sim` pinned to
   one core (taskset), client on the other core; requests/s the worker sustains.
3. Early exit: pure simulation of k-sample voting on several score distributions; mean samples
   drawn with exact early exit vs the full budget, and a check that the winner never differs.
4. Sampling modes: score requests through the sim engine in both modes; prefill tokens and
   simulated engine-seconds per request (from the sim's own accounting).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "worker"))

from grm_worker.contract.config import WorkerConfig  # noqa: E402
from grm_worker.engines.sim import SimEngine  # noqa: E402
from grm_worker.engines.simtext import response_quality  # noqa: E402
from grm_worker.scoring import Sampler, ScoreRequest, build_prompt, leader, score, vote  # noqa: E402

CLI = [sys.executable, "-c", "import sys; from grm_worker.cli import main; sys.exit(main())"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: Sequence[str], port: int, cpu: int | None = None) -> None:
        prefix = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
        self.port = port
        self.proc = subprocess.Popen(
            [*prefix, *CLI, *args, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        path = "/health" if args[0] == "sim-engine" else "/ready"
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def pin_client() -> None:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})


def unpin_client() -> None:
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(url: str, concurrency: int, total: int, body: dict[str, object]) -> tuple[list[float], float]:
    """Closed loop: `concurrency` clients send `total` requests; latencies (s) and wall time."""
    latencies: list[float] = []
    remaining = total
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                async with http.post(url, json=body) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies.append(time.perf_counter() - start)

        # Warm-up (connections, first-request paths), not measured.
        for _ in range(min(20, total)):
            async with http.post(url, json=body) as r:
                await r.read()
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def bench_latency(quick: bool) -> list[str]:
    sim = ["--engine", "sim", "--time-scale", "1000", "--precision", "fp8"]
    engine_port, front_port, proxy_port = free_port(), free_port(), free_port()
    # Servers on core 0, the load generator on core 1 (the proxy path's two processes share core 0).
    engine = Proc(["sim-engine", "--time-scale", "1000", "--precision", "fp8"], engine_port, cpu=0)
    front = Proc(["serve", *sim], front_port, cpu=0)
    proxy = Proc(
        ["serve", "--engine", "vllm", "--engine-url", f"http://127.0.0.1:{engine_port}"], proxy_port, cpu=0
    )
    body = {"prompt": "Score this answer briefly.", "max_tokens": 16}
    rows = []
    pin_client()
    try:
        for concurrency, total in ((1, 200 if quick else 1000), (64, 640 if quick else 4000)):
            # Interleave the three paths in 5 rounds and pool the latencies, so that load from
            # other processes on this shared machine falls on all paths alike.
            pooled: dict[str, list[float]] = {"engine": [], "front": [], "proxy": []}
            for _ in range(5):
                for name, port in (("engine", engine_port), ("front", front_port), ("proxy", proxy_port)):
                    url = f"http://127.0.0.1:{port}/v1/completions"
                    latencies, _ = asyncio.run(load(url, concurrency, total // 5, body))
                    pooled[name] += latencies
            results = {name: (pct(v, 0.5) * 1e3, pct(v, 0.99) * 1e3) for name, v in pooled.items()}
            e50, e99 = results["engine"]
            for name, label in (
                ("front", "front, engine in-process"),
                ("proxy", "front → engine over loopback"),
            ):
                p50, p99 = results[name]
                rows.append(
                    f"| {concurrency} | {label} | {e50:.2f} / {e99:.2f} | {p50:.2f} / {p99:.2f} "
                    f"| {p50 - e50:+.2f} / {p99 - e99:+.2f} |"
                )
    finally:
        unpin_client()
        for p in (proxy, front, engine):
            p.stop()
    return [
        "| concurrent | path | engine directly p50 / p99 ms | via the front p50 / p99 ms "
        "| added p50 / p99 ms |",
        "|---|---|---|---|---|",
        *rows,
    ]


def bench_throughput(quick: bool) -> list[str]:
    rows = []
    for max_tokens in (16, 128):
        port = free_port()
        worker = Proc(["serve", "--engine", "sim", "--time-scale", "1000", "--precision", "fp8"], port, cpu=0)
        pin_client()
        try:
            total = 1000 if quick else 5000
            body = {"prompt": "x" * 400, "max_tokens": max_tokens}
            latencies, wall = asyncio.run(load(f"http://127.0.0.1:{port}/v1/completions", 64, total, body))
            rows.append(
                f"| {max_tokens} | {total / wall:.0f} | {total * max_tokens / wall:.0f} "
                f"| {pct(latencies, 0.5) * 1e3:.1f} |"
            )
        finally:
            unpin_client()
            worker.stop()
    return [
        "| output tokens / request | requests/s | output tokens/s | p50 latency ms |",
        "|---|---|---|---|",
        *rows,
    ]


Distribution = Callable[[random.Random], list[int]]


def noisy(qualities: Sequence[int], spread: int) -> Distribution:
    def draw(rng: random.Random) -> list[int]:
        return [min(10, max(1, q + rng.randint(-spread, spread))) for q in qualities]

    return draw


DISTRIBUTIONS: dict[str, Distribution] = {
    "clear winner: 2 responses, quality 9 vs 3, ±1": noisy([9, 3], 1),
    "close: 2 responses, 7 vs 6, ±2": noisy([7, 6], 2),
    "tie: 2 responses, 6 vs 6, ±2": noisy([6, 6], 2),
    "4 responses, 8/6/5/3, ±2": noisy([8, 6, 5, 3], 2),
    "8 responses, uniform 1–10 (no signal)": lambda rng: [rng.randint(1, 10) for _ in range(8)],
}


def scripted(samples: list[list[int]], names: list[str]) -> Sampler:
    """An engine answering with the given score vectors, in the order each prompt shows them."""
    queue = list(samples)

    async def sampler(prompts: list[str], per_prompt: int) -> list[str]:
        out = []
        for prompt in prompts:
            shown = sorted(range(len(names)), key=lambda i: prompt.index(names[i]))
            for _ in range(per_prompt):
                values = queue.pop(0)
                out.append("Scores: \\boxed{" + ", ".join(str(values[i]) for i in shown) + "}")
        return out

    return sampler


def bench_early_exit(quick: bool) -> list[str]:
    trials = 300 if quick else 2000
    rows = []
    for k, per_round in ((8, 1), (8, 2), (8, 4), (32, 4), (32, 8)):
        for name, draw in DISTRIBUTIONS.items():
            rng = random.Random(7)
            used_total = 0
            for trial in range(trials):
                samples = [draw(rng) for _ in range(k)]
                n = len(samples[0])
                names = [f"<response {i:03d}>" for i in range(n)]
                sampler = scripted(samples, names)
                request = ScoreRequest(
                    query="q", responses=tuple(names), samples=k, samples_per_round=per_round, seed=trial
                )
                result = asyncio.run(score(request, sampler))
                assert result.winner == leader(vote(samples, n)), (name, samples)
                used_total += result.samples_used
            mean = used_total / trials
            rows.append(f"| {k} | {per_round} | {name} | {mean:.2f} | {100 * (1 - mean / k):.0f} % |")
    return [
        "| budget k | samples per round | score distribution | mean samples drawn | saved |",
        "|---|---|---|---|---|",
        *rows,
    ]


def bench_sampling_modes(quick: bool) -> list[str]:
    good = next(f"answer {i}" for i in range(1000) if response_quality(f"answer {i}") == 8)
    bad = next(f"answer {i}" for i in range(1000) if response_quality(f"answer {i}") == 5)
    responses = [good + " " + "detail " * 150, bad + " " + "detail " * 150]  # ~300-token responses
    rows = []
    for mode in ("shuffled", "shared-prefill"):
        config = WorkerConfig.model_validate(
            {
                "engine": "sim",
                "precision": "fp8",
                # 10× keeps the step loop ahead of the wall clock (at 1000× Python, not the
                # model, would set the pace and stretch the simulated makespan).
                "sim": {"time_scale": 10.0},
                "scoring": {"samples_max": 8},
            }
        )

        async def run(cfg: WorkerConfig = config, sampling: str = mode) -> tuple[float, float, float]:
            engine = SimEngine(cfg)
            await engine.start()

            async def sampler(prompts: list[str], n: int) -> list[str]:
                return await engine.sample(prompts, n, max_tokens=512, temperature=1.0)

            requests = 10 if quick else 40
            tasks = [
                score(
                    ScoreRequest(
                        query="Which answer is better?",
                        responses=tuple(responses),
                        samples=8,
                        sampling=sampling,  # type: ignore[arg-type]
                        early_exit=False,
                        samples_per_round=8,
                        seed=i,
                    ),
                    sampler,
                )
                for i in range(requests)
            ]
            start = engine.now()
            await asyncio.gather(*tasks)
            elapsed = engine.now() - start
            text = await engine.metrics_text()
            await engine.stop()
            prompt = next(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("vllm:prompt_tokens_total")
            )
            return prompt / requests, engine.busy_seconds / requests, elapsed

        prefill, busy, elapsed = asyncio.run(run())
        rows.append(f"| {mode} | {prefill:.0f} | {busy:.3f} | {elapsed:.2f} |")
    prompt_tokens = len(build_prompt("Which answer is better?", responses)) // 4
    return [
        f"8 samples per request, {prompt_tokens}-token prompt, 300-token critiques, fp8 profile, "
        f"{10 if quick else 40} concurrent requests, early exit off:",
        "",
        "| sampling | prefill tokens / request | engine-seconds / request (simulated) "
        "| makespan s (simulated) |",
        "|---|---|---|---|",
        *rows,
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    print("## Worker\n")
    print(
        f"`.venv/bin/python bench/worker_bench.py` on {os.cpu_count()} CPU cores "
        f"(Python {sys.version.split()[0]}).\n"
    )
    print("### Front's added latency (sim engine at 1000×, 16-token completions)\n")
    print("\n".join(bench_latency(args.quick)) + "\n")
    print("### One sim worker on one core (64 concurrent clients on the other core)\n")
    print("\n".join(bench_throughput(args.quick)) + "\n")
    print("### Samples saved by exact early exit (winner identical to full voting in every trial)\n")
    print("\n".join(bench_early_exit(args.quick)) + "\n")
    print("### Shuffled vs shared-prefill sampling (sim engine accounting)\n")
    print("\n".join(bench_sampling_modes(args.quick)) + "\n")
    load = os.getloadavg()
    print(
        f"_Total bench time {time.monotonic() - started:.0f} s; load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) on a machine shared with other work._"
    )


if __name__ == "__main__":
    main()
