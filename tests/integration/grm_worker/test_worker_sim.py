"""`grm-worker serve --engine sim` as a real subprocess: completions, streamed chat, score,
metrics, a SIGTERM drain that lets an in-flight request finish and still serves new ones (with
`Connection: close`), and exit 1 on engine death."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.sse import streamed_usage
from support.workerproc import WorkerProcess


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[WorkerProcess]:
    config = {
        "engine": "sim",
        "variant": "fp8",
        "precision": "fp8",
        "model": {"name": "deepseek-ai/DeepSeek-GRM-27B", "served_name": "grm"},
        "scoring": {"samples_min": 1, "samples_max": 8, "samples_default": 8},
        "sim": {"time_scale": 1.0, "output_tokens": 60},  # short critiques: 2 rounds in ~1.6 s
        "drain_timeout_s": 20,
    }
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = WorkerProcess("--config", str(path), "--log-level", "INFO", admin_port=True)
    try:
        proc.wait_ready(30)
        yield proc
    finally:
        proc.kill()


async def test_openai_score_metrics_and_sigterm_drain(worker: WorkerProcess) -> None:
    async with aiohttp.ClientSession(worker.url) as http:
        r = await http.post("/v1/completions", json={"model": "grm", "prompt": "Hello", "max_tokens": 4})
        assert r.status == 200 and (await r.json())["choices"][0]["finish_reason"] == "length"
        r = await http.post(
            "/v1/chat/completions",
            json={
                "model": "grm",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 3,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        # Tokens from the usage chunk: an SSE event is not a token (vLLM may carry several).
        assert streamed_usage(await r.text())["completion_tokens"] == 3
        r = await http.post("/v1/grm/score", json={"query": "2+2?", "responses": ["4", "5", "22"]})
        body = await r.json()
        assert r.status == 200 and len(body["scores"]) == 3 and 1 <= body["samples_used"] <= 8
        assert body["winner"] in (0, 1, 2)
        # The admin API is not on the front's (the Service's) port, only on its own.
        assert (await http.post("/admin/samples", json={"samples": 3})).status == 404
        assert worker.admin_url is not None
        async with aiohttp.ClientSession(worker.admin_url) as admin:
            # Authenticated: without the bearer token (or with another) the budget stays.
            assert (await admin.post("/admin/samples", json={"samples": 3})).status == 401
            wrong = {"Authorization": "Bearer " + "x" * len(worker.admin_token)}
            assert (await admin.post("/admin/samples", json={"samples": 3}, headers=wrong)).status == 401
            r = await admin.post("/admin/samples", json={"samples": 3}, headers=worker.admin_headers)
            assert (await r.json())["samples"] == 3
        text = await (await http.get("/metrics")).text()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"vllm:time_to_first_token_seconds", "vllm:num_requests_running", "grm_score_samples"} <= names
        assert {"grm_requests_in_flight", "grm_sample_budget", "grm_worker_gpu_utilization_ratio"} <= names

        # ~600 decode steps of ≥ 12.5 ms: in flight for ≥ 7.5 s when SIGTERM arrives. The checks
        # below must see the drain before it ends; 150 steps (2 s) left too little room for a
        # machine whose other jobs hold the cores (the worker would have exited: refused).
        slow = asyncio.create_task(http.post("/v1/completions", json={"prompt": "x", "max_tokens": 600}))
        deadline = asyncio.get_running_loop().time() + 10
        while "grm_requests_in_flight 1.0" not in await (await http.get("/metrics")).text():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        worker.terminate()
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # readiness fails while the slow request drains
            r = await http.get("/ready")
            if r.status == 503:
                break
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        # New work is still served (kube-proxy never retries elsewhere), with Connection: close.
        r = await http.post("/v1/completions", json={"prompt": "y", "max_tokens": 1})
        assert r.status == 200 and r.headers["Connection"] == "close"
        response = await slow
        assert response.status == 200
        assert (await response.json())["usage"]["completion_tokens"] == 600
    assert await asyncio.to_thread(worker.wait, 30) == 0
    assert "draining" in worker.log()


def test_engine_death_exits_non_zero(worker: WorkerProcess) -> None:
    import urllib.request

    assert worker.admin_url is not None
    request = urllib.request.Request(
        worker.admin_url + "/admin/sim",
        data=b'{"crash": true}',
        headers={"Content-Type": "application/json", **worker.admin_headers},
    )
    urllib.request.urlopen(request, timeout=5).read()
    assert worker.wait(30) == 1
    assert "engine died" in worker.log()


def test_invalid_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("engine: vllm\nprecision: awq-int4\nmodel: {path: /nonexistent}\ndevice: cpu\n")
    proc = WorkerProcess("--config", str(path))
    try:
        assert proc.wait(60) == 2
        assert "pre-quantized awq checkpoint" in proc.log()
    finally:
        proc.kill()


async def test_a_full_batch_sheds_new_score_requests_to_the_floor(tmp_path: Path) -> None:
    """The worker process the operator configures (scoring.shed_floor from the spec): with its
    sim engine's batch full, a new score request runs at the floor and the counter says so."""
    config = {
        "engine": "sim",
        "variant": "bf16",
        "precision": "bf16",
        "model": {"name": "deepseek-ai/DeepSeek-GRM-27B", "served_name": "grm"},
        "vllm": {"max_num_seqs": 2},
        "scoring": {
            "samples_min": 1,
            "samples_max": 8,
            "samples_default": 8,
            "shed_floor": 2,
            "shed_poll_s": 0.05,
        },
        "sim": {"time_scale": 1.0, "output_tokens": 20},
    }
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = WorkerProcess("--config", str(path))
    try:
        proc.wait_ready(30)
        async with aiohttp.ClientSession(proc.url) as http:
            score = {"query": "2+2?", "responses": ["4", "5"], "early_exit": "off"}
            idle = await (await http.post("/v1/grm/score", json=score)).json()
            assert (idle["shed"], idle["samples_used"]) == (0, 8)
            # Four long completions on a batch of 2: two wait for seconds.
            long = {"model": "grm", "prompt": "x", "max_tokens": 400}
            fill = [asyncio.create_task(http.post("/v1/completions", json=long)) for _ in range(4)]
            deadline = asyncio.get_running_loop().time() + 10
            while True:  # until the front's own reading (every 50 ms) shows the queue
                text = await (await http.get("/metrics")).text()
                queue = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
                if queue["grm_engine_queue"] > 0:
                    break
                assert asyncio.get_running_loop().time() < deadline, "the front never saw a queue"
            body = await (await http.post("/v1/grm/score", json=score)).json()
            assert (body["shed"], body["samples_used"], body["samples_budget"]) == (6, 2, 8)
            text = await (await http.get("/metrics")).text()
            values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
            assert values["grm_score_samples_shed_total"] >= 6 and values["grm_shed_floor"] == 2
            for task in fill:
                task.cancel()
    finally:
        proc.kill()


def _metric_values(text: str) -> dict[str, float]:
    """Every sample of an exposition text by its name and labels (``name{a="b",…}`` sorted)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(
                f'{k}="{v}"' for k, v in sorted(s.labels.items()) if k == "endpoint" or k == "finished_reason"
            )
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def _wait_metrics(
    http: aiohttp.ClientSession, predicate: Any, what: str, timeout_s: float = 20
) -> dict[str, float]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        values = _metric_values(await (await http.get("/metrics")).text())
        if predicate(values):
            return values
        assert asyncio.get_running_loop().time() < deadline, f"{what}: {values}"
        await asyncio.sleep(0.05)


async def test_a_client_that_leaves_a_non_streamed_request_stops_its_work(worker: WorkerProcess) -> None:
    """A score request and a non-streamed chat (the official openai client) whose clients
    disconnect mid-request: the worker cancels them, the sim engine aborts every sequence they
    started (vLLM's ``finished_reason="abort"``) and ``grm_requests_abandoned_total`` counts them."""
    import openai

    assert worker.admin_url is not None
    async with aiohttp.ClientSession(worker.admin_url, headers=worker.admin_headers) as admin:
        # 50× slower steps: a score of 8 samples would take minutes, so the clients surely leave first.
        assert (await admin.post("/admin/sim", json={"slowdown": 50.0})).status == 200
    client = openai.AsyncOpenAI(base_url=worker.url + "/v1", api_key="unused", max_retries=0)
    async with aiohttp.ClientSession(worker.url) as http, aiohttp.ClientSession(worker.url) as leaving:
        requests = {
            "score": asyncio.create_task(
                leaving.post(
                    "/v1/grm/score", json={"query": "2+2?", "responses": ["4", "5"], "early_exit": "off"}
                )
            ),
            "chat": asyncio.create_task(
                client.chat.completions.create(
                    model="grm", messages=[{"role": "user", "content": "Hi"}], max_tokens=500
                )
            ),
        }
        # Both are in the engine's batch: 8 score samples (2 responses × … per round) and 1 chat.
        await _wait_metrics(
            http,
            lambda v: (
                v["grm_requests_in_flight"] == 2
                and v["vllm:num_requests_running"] + v["vllm:num_requests_waiting"] >= 2
            ),
            "both requests in the engine",
        )
        for task in requests.values():
            task.cancel()  # the client gives up: its connection closes
        await asyncio.gather(*requests.values(), return_exceptions=True)
        values = await _wait_metrics(
            http,
            lambda v: (
                v['grm_requests_abandoned_total{endpoint="score"}'] == 1
                and v['grm_requests_abandoned_total{endpoint="chat"}'] == 1
                and v["vllm:num_requests_running"] + v["vllm:num_requests_waiting"] == 0
            ),
            "both abandoned and the engine's batch empty",
        )
        assert values["grm_requests_in_flight"] == 0
        assert values['vllm:request_success_total{finished_reason="abort"}'] >= 2
        assert values['grm_requests_abandoned_total{endpoint="completions"}'] == 0
    await client.close()
