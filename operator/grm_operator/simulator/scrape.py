"""The simulated metrics pipeline: what a scrape of the workers' vLLM histograms and gauges over
the metrics window would give the operator, as :class:`grm_operator.policy.signals.Signals`.
"""

from __future__ import annotations

import numpy as np

from grm_operator.policy.signals import Signals
from grm_operator.simulator.engine import Group, StepSample
from grm_operator.simulator.pod import Pod


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile of ``values`` (None when there are none)."""
    return float(np.percentile(values, q)) if values else None


def token_weighted_percentile(samples: list[StepSample], q: float) -> float | None:
    """The ``q``-th percentile of step times weighted by the tokens each step produced: vLLM's
    inter-token latency histogram has one value per output token."""
    if not samples:
        return None
    steps = np.array([s.step_s for s in samples])
    weights = np.array([s.tokens for s in samples], dtype=np.float64)
    order = np.argsort(steps)
    cum = np.cumsum(weights[order])
    idx = int(np.searchsorted(cum, q / 100.0 * cum[-1]))
    return float(steps[order][min(idx, len(steps) - 1)])


def window_signals(
    groups: list[Group], steps: list[StepSample], pods: list[Pod], now: float, window_s: float
) -> Signals:
    """The Signals of one scrape at ``now``: ``groups`` completed in the window, the engines'
    ``steps`` in it, and the gauges of the Ready ``pods`` (whose GPU-busy marks it advances)."""
    # Rates over the window, or over the time since the start when that is shorter (as
    # Prometheus' rate() extrapolates a partial window).
    w = min(window_s, max(now, 1.0))
    seqs = sum(g.samples for g in groups)
    # vLLM's TTFT histogram has one value per sequence: the k samples' first tokens are spread
    # from the first sample's to the last one's (their prompts prefill one after another).
    ttft: list[float] = []
    for g in groups:
        first = g.first_token if g.first_token is not None else g.arrival
        last = g.last_first_token if g.last_first_token is not None else first
        if g.samples == 1:
            ttft.append(first - g.arrival)
        else:
            step = (last - first) / (g.samples - 1)
            ttft.extend(first - g.arrival + j * step for j in range(g.samples))
    # e2e: one value per GRM score (all its samples), as the front's grm_score_latency_seconds.
    e2e = [g.finished - g.arrival for g in groups if g.finished is not None]
    queue = [g.admitted - g.arrival for g in groups if g.admitted is not None]
    utils: list[float] = []
    kv: list[float] = []
    running = waiting = 0
    for p in pods:
        e = p.engine
        p.busy_marks.append((now, e.busy_s))
        while len(p.busy_marks) > 1 and p.busy_marks[1][0] <= now - w:
            p.busy_marks.popleft()
        t0, b0 = p.busy_marks[0]
        span = now - t0 if now - t0 > 0 else w
        utils.append(min(1.0, (e.busy_s - b0) / span) if now > t0 else 0.0)
        used = sum(g.kv_now for g in e.running)
        kv.append(min(1.0, used / e.profile.kv_cache_tokens))
        running += e.seqs
        waiting += e.waiting_seqs()
    return Signals(
        rps=seqs / w if groups else (0.0 if pods else None),
        prompt_tps=sum(g.prompt_tokens for g in groups) / w,
        generation_tps=sum(g.output * g.samples for g in groups) / w,
        shed_sps=sum(g.shed for g in groups) / w,
        ttft_p50=percentile(ttft, 50),
        ttft_p95=percentile(ttft, 95),
        itl_p50=token_weighted_percentile(steps, 50),
        itl_p95=token_weighted_percentile(steps, 95),
        e2e_p50=percentile(e2e, 50),
        e2e_p95=percentile(e2e, 95),
        queue_time_p95=percentile(queue, 95),
        running=float(running),
        waiting=float(waiting),
        kv_cache_usage=float(np.mean(kv)) if kv else None,
        gpu_util=float(np.mean(utils)) if utils else None,
        pods_reporting=len(pods),
        sample_age_s=0.0,
    )
