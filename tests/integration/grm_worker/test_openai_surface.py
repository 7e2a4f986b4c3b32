"""The sim engine's OpenAI surface against the official ``openai`` client (every check of
:mod:`support.openai_surface`; ``test_worker_vllm.py`` runs the same checks on real vLLM), and an
``httpx`` connection pool sharing a few keep-alive connections among many requests, streams cut
short included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.openai_surface import SURFACE_CHECKS, client
from support.workerproc import WorkerProcess


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    config = {
        "engine": "sim",
        "variant": "fp8",
        "precision": "fp8",
        "model": {"name": "deepseek-ai/DeepSeek-GRM-27B", "served_name": "grm"},
        "vllm": {"max_model_len": 32768},
        # 10× real time: a 12-token answer takes ~15 ms, the checks test shapes, not speed.
        "sim": {"time_scale": 10.0},
    }
    path = tmp_path_factory.mktemp("openai") / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = WorkerProcess("--config", str(path))
    try:
        proc.wait_ready(30)
        yield proc
    finally:
        proc.kill()


@pytest.mark.parametrize("check", list(SURFACE_CHECKS))
async def test_openai_client_against_the_sim(worker: WorkerProcess, check: str) -> None:
    async with client(worker.url) as api:
        await SURFACE_CHECKS[check](api, "grm")


def _running(text: str) -> float:
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return values["vllm:num_requests_running"] + values["vllm:num_requests_waiting"]


async def test_httpx_pool_shares_connections_and_abandoned_streams_are_aborted(worker: WorkerProcess) -> None:
    """32 requests (half streamed) through a pool of 2 keep-alive connections all complete; a
    stream the client closes after its first chunk frees its connection and, as in vLLM, the
    engine aborts the request instead of generating the rest for nobody."""
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    async with httpx.AsyncClient(base_url=worker.url, limits=limits, timeout=60) as http:

        async def one(i: int) -> int:
            body = {"model": "grm", "prompt": f"p{i}", "max_tokens": 5, "stream": i % 2 == 1}
            if i % 2:
                body["stream_options"] = {"include_usage": True}
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
                assert lines[-1] == "data: [DONE]"
                return int(json.loads(lines[-2].removeprefix("data: "))["usage"]["completion_tokens"])
            r = await http.post("/v1/completions", json=body)
            return int(r.json()["usage"]["completion_tokens"])

        assert await asyncio.gather(*(one(i) for i in range(32))) == [5] * 32

        # 30 000 decode steps of ≥ 12.5 simulated ms at 10× take ≥ 37 s of wall clock: only an
        # abort ends this request within the 10 s waited below.
        long = {"model": "grm", "prompt": "x", "max_tokens": 30000, "stream": True}
        async with http.stream("POST", "/v1/completions", json=long) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break
        deadline = asyncio.get_running_loop().time() + 10
        while _running((await http.get("/metrics")).text) > 0:
            assert asyncio.get_running_loop().time() < deadline, "the abandoned stream still runs"
            await asyncio.sleep(0.05)
        r = await http.post("/v1/completions", json={"model": "grm", "prompt": "y", "max_tokens": 2})
        assert r.status_code == 200
