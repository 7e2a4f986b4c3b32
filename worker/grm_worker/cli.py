"""``grm-worker``: the worker pod's entrypoint.

    grm-worker serve --config worker.yaml            # what the operator's pods run
    grm-worker serve --engine sim --port 8000        # a simulated worker, no config file needed
    grm-worker sim-engine --port 8100                # the sim engine alone (a stand-in vLLM server)
    grm-worker command --config worker.yaml --device cpu   # print the vLLM command line
    grm-worker schema                                # WorkerConfig's JSON schema
    grm-worker fetch-model --config worker.yaml      # download s3:// or hf:// weights (init step)

``serve`` reads the admin API's bearer token from ``GRM_ADMIN_TOKEN`` (the operator's pods get
it from a Secret) and removes it from its environment, so the vLLM child never inherits it;
without it the admin API refuses every request unless ``--admin-insecure`` (local development).
``serve`` exits 0 after a SIGTERM drain, 1 when the engine died, 2 on an invalid config.
``fetch-model`` exits 0 when the weights are complete in ``model.path``, 1 when the download
failed (the kubelet retries the init container with back-off, and the next try resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from grm_worker.contract.admin import ADMIN_TOKEN_ENV
from grm_worker.contract.config import ConfigError, Device, WorkerConfig, load_config
from grm_worker.engines.base import Engine
from grm_worker.engines.vllm_args import describe_command, vllm_command

__all__ = ["main"]

log = logging.getLogger("grm_worker")

# CLI flag -> dotted config key (flags override the file).
_OVERRIDES = {
    "engine": "engine",
    "host": "host",
    "port": "port",
    "admin_port": "admin_port",
    "engine_port": "engine_port",
    "engine_transport": "engine_transport",
    "precision": "precision",
    "variant": "variant",
    "device": "device",
    "model_path": "model.path",
    "model_name": "model.name",
    "served_name": "model.served_name",
    "vllm_python": "vllm.python",
    "time_scale": "sim.time_scale",
    "startup_delay": "sim.startup_delay_s",
    "jitter": "sim.jitter",
    "seed": "sim.seed",
    "samples": "scoring.samples_default",
    "drain_timeout": "drain_timeout_s",
    "connection_max_age": "connection_max_age_s",
}


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _config(args: argparse.Namespace) -> WorkerConfig:
    overrides = {
        key: getattr(args, flag) for flag, key in _OVERRIDES.items() if getattr(args, flag, None) is not None
    }
    overrides.update(_parse_set(args.set or []))
    return load_config(args.config, overrides)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="WorkerConfig as YAML or JSON (the operator's ConfigMap)")
    p.add_argument("--engine", choices=["vllm", "sim"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--admin-port", type=int, help="port of the admin API (/admin/*); unset: none")
    p.add_argument("--engine-port", type=int, help="loopback port of the vLLM child")
    p.add_argument(
        "--engine-transport",
        choices=["tcp", "unix"],
        help="reach the vLLM child on --engine-port (tcp) or a private Unix socket (unix)",
    )
    p.add_argument("--precision")
    p.add_argument("--variant")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--model-path")
    p.add_argument("--model-name")
    p.add_argument("--served-name")
    p.add_argument("--vllm-python", help="interpreter with vLLM installed")
    p.add_argument("--time-scale", type=float, help="sim: run N× faster than real time")
    p.add_argument("--startup-delay", type=float, help="sim: simulated seconds of model load")
    p.add_argument("--jitter", type=float, help="sim: relative std-dev of step times")
    p.add_argument("--seed", type=int, help="sim: seed")
    p.add_argument("--samples", type=int, help="initial GRM sample budget")
    p.add_argument("--drain-timeout", type=float, help="seconds the drain after SIGTERM may take")
    p.add_argument(
        "--connection-max-age",
        type=float,
        help="seconds after which a client connection is answered with Connection: close",
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config field, dotted (JSON values)"
    )
    p.add_argument("--log-level", default="INFO")


def make_engine(config: WorkerConfig, engine_url: str | None = None) -> Engine:
    """The engine a config asks for (imports only the one it needs)."""
    if config.engine == "sim":
        from grm_worker.engines.sim import SimEngine

        return SimEngine(config)
    from grm_worker.engines.vllm import ProxyEngine, VllmEngine
    from grm_worker.gpu import NvmlGauges

    gpu = NvmlGauges.create()
    if engine_url:
        return ProxyEngine(engine_url, config.model.public_name, gpu=gpu)
    return VllmEngine(config, gpu=gpu)


def admin_token_from_env() -> str | None:
    """The admin API's bearer token from :data:`ADMIN_TOKEN_ENV`, taken out of the environment
    (child processes, the vLLM engine among them, do not inherit it); None when unset or blank."""
    token = os.environ.pop(ADMIN_TOKEN_ENV, "").strip()
    return token or None


async def serve(
    config: WorkerConfig,
    *,
    engine_url: str | None = None,
    admin_token: str | None = None,
    admin_insecure: bool = False,
) -> int:
    """Run the worker until SIGTERM/SIGINT (drain, exit 0) or the engine's death (exit 1)."""
    from grm_worker.server import RUNNER_OPTIONS, Front

    engine = make_engine(config, engine_url)
    front = Front(config, engine, admin_token=admin_token, admin_insecure=admin_insecure)
    # The drain already waited drain_timeout_s for the connections to finish; closing the listener
    # must not wait aiohttp's default 60 s again for the ones that overran it.
    runner = web.AppRunner(
        front.app, handle_signals=False, access_log=None, shutdown_timeout=2.0, **RUNNER_OPTIONS
    )
    # The admin API listens apart from the front: the Service forwards only the front's port.
    admin_runner = web.AppRunner(front.admin_app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    runners = [runner] if config.admin_port is None else [runner, admin_runner]
    try:
        for each in runners:
            await each.setup()
        await web.TCPSite(runner, config.host, config.port, reuse_address=True).start()
        if config.admin_port is not None:
            await web.TCPSite(admin_runner, config.host, config.admin_port, reuse_address=True).start()
    except BaseException:
        # A port is taken: nothing started, but the engine may own a socket directory already.
        for each in runners:
            await each.cleanup()
        await engine.stop()
        raise
    admin_auth = "bearer token" if admin_token else "NONE (--admin-insecure)" if admin_insecure else "refused"
    log.info(
        "serving variant=%s precision=%s engine=%s on http://%s:%d (admin port %s, admin auth %s)",
        config.variant, config.precision, config.engine, config.host, config.port, config.admin_port or "off",
        admin_auth,
    )  # fmt: skip
    if config.admin_port is not None and admin_token is None and not admin_insecure:
        log.warning("%s is not set: the admin API answers 401 to every request", ADMIN_TOKEN_ENV)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await engine.start()
        stop_wait = asyncio.create_task(stop.wait())
        dead_wait = asyncio.create_task(engine.wait_dead())
        done, _ = await asyncio.wait({stop_wait, dead_wait}, return_when=asyncio.FIRST_COMPLETED)
        if dead_wait in done:
            log.error("engine died (%s); exiting so the pod restarts", dead_wait.result())
            stop_wait.cancel()
            code = 1
        else:
            dead_wait.cancel()
            log.info("SIGTERM: draining up to %.1f s", config.drain_timeout_s)
            await front.drain(config.drain_timeout_s, runner.server)
    finally:
        front.draining = True
        for each in runners:
            await each.cleanup()
        await engine.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped code=%d", code)
    return code


async def serve_engine(config: WorkerConfig, unix_socket: str | None = None) -> int:
    """The sim engine alone over HTTP (like vLLM's own server), on host:port or, like vLLM's
    ``--uds``, on the Unix socket ``unix_socket``, until SIGTERM/SIGINT."""
    from grm_worker.engines.sim import SimEngine
    from grm_worker.server import engine_app

    engine = SimEngine(config)
    runner = web.AppRunner(engine_app(engine), handle_signals=False, access_log=None)
    await runner.setup()
    site: web.BaseSite = (
        web.UnixSite(runner, unix_socket)
        if unix_socket is not None
        else web.TCPSite(runner, config.host, config.port, reuse_address=True)
    )
    await site.start()
    await engine.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("sim engine on %s", site.name)
    await stop.wait()
    await runner.cleanup()
    await engine.stop()
    return 0


def fetch_model_command(config: WorkerConfig, progress_interval_s: float) -> int:
    """``fetch-model``: 0 when the weights are complete, 1 when the download failed."""
    from botocore.exceptions import BotoCoreError, ClientError
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    from grm_worker.fetch import FetchError, fetch_model

    failures = (
        FetchError,
        BotoCoreError,
        ClientError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
    )
    try:
        report = fetch_model(config.model, progress_interval_s=progress_interval_s)
    except (*failures, OSError) as error:
        log.error("fetch-model failed: %s", error)
        return 1
    log.info(
        "fetch-model done: %d files (%d already complete), %.2f GB downloaded of %.2f GB",
        report.files_total, report.files_skipped, report.bytes_downloaded / 1e9, report.bytes_total / 1e9,
    )  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grm-worker", description="GRM worker: engine + scoring front")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the worker (front + engine)")
    _add_config_flags(p_serve)
    p_serve.add_argument(
        "--engine-url", help="proxy to a running OpenAI-compatible engine instead of starting vLLM"
    )
    p_serve.add_argument(
        "--admin-insecure",
        action="store_true",
        help=f"serve the admin API without authentication when {ADMIN_TOKEN_ENV} is unset "
        "(local development only: anyone reaching the admin port may change the budget)",
    )
    p_engine = sub.add_parser("sim-engine", help="run the simulated engine alone (vLLM-like server)")
    _add_config_flags(p_engine)
    p_engine.add_argument("--uds", help="listen on this Unix socket instead of --host/--port (as vLLM)")
    p_cmd = sub.add_parser("command", help="print the vLLM command line of a config")
    _add_config_flags(p_cmd)
    sub.add_parser("schema", help="print WorkerConfig's JSON schema")
    p_fetch = sub.add_parser("fetch-model", help="download the config's s3:// or hf:// model into model.path")
    _add_config_flags(p_fetch)
    p_fetch.add_argument(
        "--progress-interval", type=float, default=10.0, help="seconds between progress log lines"
    )
    args = parser.parse_args(argv)
    if args.command == "schema":
        print(json.dumps(WorkerConfig.model_json_schema(), indent=2))
        return 0
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = _config(args)
        if args.command == "command":
            target: Device = "cpu" if config.device == "cpu" else "cuda"
            print(describe_command(vllm_command(config, device=target)))
            return 0
        if args.command == "fetch-model":
            return fetch_model_command(config, args.progress_interval)
        if args.command == "sim-engine":
            return asyncio.run(serve_engine(config, args.uds))
        if config.engine == "vllm" and not args.engine_url:
            from grm_worker.engines.vllm import detect_device

            device: Device = detect_device() if config.device == "auto" else config.device
            vllm_command(config, device=device)  # reject unsupported variants before binding a port
        return asyncio.run(
            serve(
                config,
                engine_url=args.engine_url,
                admin_token=admin_token_from_env(),
                admin_insecure=args.admin_insecure,
            )
        )
    except (ConfigError, ValidationError) as error:
        print(f"grm-worker: invalid configuration: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. the port is taken
        print(f"grm-worker: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
