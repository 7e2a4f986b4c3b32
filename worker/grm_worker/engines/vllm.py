"""The real engine: vLLM's OpenAI-compatible server as a child process, proxied over loopback
or a Unix socket.

:class:`ProxyEngine` relays calls to any OpenAI-compatible server (streams pass through chunk by
chunk) and fetches its ``/metrics``. :class:`VllmEngine` also owns the child: it starts
``vllm_command(config)`` in a session of its own (vLLM forks an engine-core process, and stopping
must reach it too), listening on ``engine_port`` or, with ``engine_transport: unix``, on a socket
in a directory made for this start (removed on stop). It is ready once the child's ``/health``
answers 200, reports the child's death (the worker then exits non-zero so Kubernetes restarts
the pod), and on stop sends SIGTERM to the whole process group, SIGKILL after a grace period.

This module never imports vLLM: the child may run under another interpreter
(``vllm.python``, e.g. ``.venv-vllm/bin/python``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from grm_worker.contract.config import Device, WorkerConfig
from grm_worker.engines.base import Engine, EngineError, EngineReply
from grm_worker.engines.vllm_args import describe_command, vllm_command, vllm_env
from grm_worker.gpu import NvmlGauges

__all__ = ["ProxyEngine", "VllmEngine", "detect_device"]

log = logging.getLogger("grm_worker.engines.vllm")


def detect_device() -> Device:
    """cuda when a GPU is visible, else cpu: an NVIDIA one (device node or NVIDIA_VISIBLE_DEVICES)
    or an AMD one (ROCm's /dev/kfd, which amd.com/gpu pods get; vLLM's ROCm build takes the same
    GPU flags)."""
    if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/kfd"):
        return "cuda"
    if os.environ.get("NVIDIA_VISIBLE_DEVICES", "") not in ("", "void", "none"):
        return "cuda"
    return "cpu"


class ProxyEngine(Engine):
    """An OpenAI-compatible server at ``base_url`` that someone else runs."""

    def __init__(
        self, base_url: str, model_name: str, *, gpu: NvmlGauges | None = None, unix_socket: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.gpu = gpu
        #: With a path, every call goes over this Unix socket (``base_url`` then only names the host).
        self.unix_socket = unix_socket
        self._session: aiohttp.ClientSession | None = None
        self._never = asyncio.Event()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No total timeout: a critique or a long stream may take minutes; connect fast or fail.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=self.unix_socket, limit=0)
                if self.unix_socket is not None
                else aiohttp.TCPConnector(limit=0, force_close=False)
            )
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ready(self, timeout: float = 5.0) -> bool:
        try:
            async with self.session.get(
                self.base_url + "/health", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_dead(self) -> str:
        await self._never.wait()
        return "unreachable"

    async def call(self, path: str, body: dict[str, Any]) -> EngineReply:
        try:
            response = await self.session.post(self.base_url + path, json=body)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineError(f"engine unreachable: {error}", 503) from error
        if body.get("stream") and response.status == 200:
            return EngineReply(200, stream=self._stream(response))
        async with response:
            try:
                payload = await response.json(content_type=None)
            except ValueError:
                text = await response.text()
                payload = {"error": {"message": text[:500], "type": "EngineError", "code": response.status}}
        return EngineReply(response.status, payload if isinstance(payload, dict) else {"data": payload})

    async def _stream(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        async with response:
            async for chunk in response.content.iter_any():
                yield chunk

    async def models(self) -> EngineReply:
        try:
            async with self.session.get(self.base_url + "/v1/models") as response:
                return EngineReply(response.status, await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineError(f"engine unreachable: {error}", 503) from error

    async def metrics_text(self) -> str:
        text = ""
        try:
            async with self.session.get(self.base_url + "/metrics") as response:
                if response.status == 200:
                    text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EngineError(f"engine metrics unreachable: {error}", 503) from error
        if self.gpu is not None:
            text = text.rstrip("\n") + "\n" + self.gpu.render()
        return text


class VllmEngine(ProxyEngine):
    """vLLM's OpenAI server as a child process of the worker."""

    def __init__(
        self, config: WorkerConfig, *, device: Device | None = None, gpu: NvmlGauges | None = None
    ) -> None:
        self.socket_dir: Path | None = None
        unix_socket: str | None = None
        if config.engine_transport == "unix":
            # A fresh directory per start: vLLM refuses a path that exists (a restart's old socket),
            # and nothing else can listen there. sun_path holds 107 bytes, so a long $TMPDIR (the
            # vLLM test sets one under the repository) gives way to /tmp.
            base = tempfile.gettempdir()
            self.socket_dir = Path(
                tempfile.mkdtemp(prefix="grm-vllm-", dir=base if len(base) <= 64 else "/tmp")
            )
            unix_socket = str(self.socket_dir / "vllm.sock")
        base_url = "http://localhost" if unix_socket else f"http://127.0.0.1:{config.engine_port}"
        super().__init__(base_url, config.model.public_name, gpu=gpu, unix_socket=unix_socket)
        self.config = config
        self.device: Device = device or (detect_device() if config.device == "auto" else config.device)
        try:
            # Validates the precision/device combination now: a bad variant fails at start.
            self.command = vllm_command(
                config,
                device=self.device,
                python=config.vllm.python or sys.executable,
                unix_socket=unix_socket,
            )
        except BaseException:
            if self.socket_dir is not None:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise
        self.process: asyncio.subprocess.Process | None = None
        self._ready = False
        self._stopping = False
        self._dead_reason: str | None = None
        self._dead = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        log.info("starting vLLM device=%s: %s", self.device, describe_command(self.command))
        env = vllm_env(self.config, device=self.device, base=os.environ)
        self.process = await asyncio.create_subprocess_exec(*self.command, env=env, start_new_session=True)
        self._watch = asyncio.create_task(self._watch_child(), name="vllm-child")

    async def _watch_child(self) -> None:
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + self.config.vllm.startup_timeout_s
        exit_wait = asyncio.create_task(self.process.wait())
        while not self._ready:
            if exit_wait.done():
                break
            if asyncio.get_running_loop().time() > deadline:
                self._die(f"vLLM not ready after {self.config.vllm.startup_timeout_s:.0f} s")
                return
            if await super().ready():
                self._ready = True
                log.info("vLLM ready pid=%d", self.process.pid)
                break
            await asyncio.wait({exit_wait}, timeout=0.5)
        # Liveness after start: a child that stays up but stops answering /health (a hung engine
        # core) is as dead as one that exited: health_check_failures misses in a row,
        # health_check_period_s apart (default 6 × 5 s = 30 s), end the worker so the pod restarts.
        period, limit = self.config.vllm.health_check_period_s, self.config.vllm.health_check_failures
        failures = 0
        while not exit_wait.done() and not self._stopping:
            await asyncio.wait({exit_wait}, timeout=period)
            if exit_wait.done() or self._stopping:
                break
            failures = 0 if await super().ready(timeout=period) else failures + 1
            if failures >= limit:
                self._die(f"vLLM /health failed {failures} times in a row")
                return
        code = await exit_wait
        if not self._stopping:
            self._die(f"vLLM exited with code {code}")

    def _die(self, reason: str) -> None:
        log.error("engine died: %s", reason)
        self._dead_reason = reason
        self._ready = False
        self._dead.set()

    async def ready(self, timeout: float = 5.0) -> bool:
        return self._ready and not self._dead.is_set()

    async def wait_dead(self) -> str:
        await self._dead.wait()
        return self._dead_reason or "vLLM died"

    async def stop(self, grace_s: float = 30.0) -> None:
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
                os.killpg(process.pid, signal.SIGCONT)  # a stopped (hung) child must see the SIGTERM
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                log.warning("vLLM ignored SIGTERM for %.0f s, killing it", grace_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if process is not None:
            # vLLM's engine-core child may outlive its parent: end what is left of the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await super().stop()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
