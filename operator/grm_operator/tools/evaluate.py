"""``grm-operator evaluate``: measure a variant's GRM verdicts against the reference's.

::

    grm-operator evaluate --variant URL|DIR --reference URL|DIR [--dataset FILE] --json OUT

A DIR is a checkpoint served for the evaluation on the real engine, the worker's own vLLM path
(:class:`grm_worker.engines.vllm.VllmEngine`, the interpreter of ``--vllm-python`` or
``$GRM_VLLM_PYTHON``, else this one); its precision is read from its ``config.json`` (a
compressed-tensors, AWQ or GPTQ ``quantization_config``, else bf16). A URL is an OpenAI-compatible
server already running (``/v1/completions``; the model is the first of its ``/v1/models`` unless
``--variant-model``/``--reference-model`` says). The two sides run one after the other, the
reference first, so one machine needs memory for one engine at a time.

Every item is scored by both with the worker's GRM scoring (:func:`grm_worker.scoring.score`:
k critiques, exact early exit) and the same seeds on both sides (common random numbers: where the
two models' next-token distributions agree, so do their samples, and the measured disagreement is
the models' rather than the sampler's). The JSON written to ``--json`` holds the measurement of
:func:`grm_operator.quality.measure.measure` (``agreement``, ``agreement_low``, ``agreement_high``,
``n``, ``rank_correlation``, ``accuracy``, …), ``dataset_digest``, the settings, and each item's
verdicts. With ``--floor`` it also holds ``passed`` (``agreement_low >= floor``).

Exit status: 0 measured (passed or not), 1 the measurement failed (an engine did not start, the
reference reached no verdict), 2 bad arguments or a bad evaluation set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from grm_operator.quality.evalset import DEFAULT_SET, EvalItem, EvalSetError, dataset_digest, parse_evalset
from grm_operator.quality.measure import MeasureError, Verdict, measure
from grm_operator.quality.stats import DEFAULT_CONFIDENCE
from grm_worker.contract.config import ConfigError, WorkerConfig
from grm_worker.engines.base import Engine, EngineError
from grm_worker.engines.vllm import ProxyEngine, VllmEngine
from grm_worker.scoring import ScoreRequest, score

__all__ = ["add_arguments", "checkpoint_precision", "command", "load_evalset"]


class EvaluateError(RuntimeError):
    """The evaluation could not run (the message says which side and why): exit status 1."""


class UsageError(EvaluateError):
    """Bad arguments: exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant", required=True, help="URL of a running OpenAI-compatible server, or a checkpoint DIR"
    )
    parser.add_argument("--reference", required=True, help="the reference: URL or checkpoint DIR")
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="JSONL evaluation set ({prompt, responses, label}); default: the small shipped set",
    )
    parser.add_argument("--json", type=Path, required=True, dest="json_out", help="where to write the result")
    parser.add_argument(
        "--samples", type=int, default=4, help="critiques per item (k of the GRM voting; default 4)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=512, help="token limit of one critique (default 512)"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument(
        "--seed", type=int, default=0, help="base seed; item i uses the same seeds on both sides"
    )
    parser.add_argument(
        "--confidence", type=float, default=DEFAULT_CONFIDENCE, help="two-sided confidence (0.95)"
    )
    parser.add_argument("--interval", choices=("wilson", "clopper-pearson"), default="wilson")
    parser.add_argument(
        "--floor", type=float, default=None, help="also report passed = agreement_low >= FLOOR"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="items scored at once per engine (default 8)"
    )
    parser.add_argument(
        "--variant-model", default=None, help="model name at a variant URL (default: its first)"
    )
    parser.add_argument(
        "--reference-model", default=None, help="model name at a reference URL (default: its first)"
    )
    parser.add_argument(
        "--vllm-python",
        default=os.environ.get("GRM_VLLM_PYTHON"),
        help="interpreter with vLLM for DIR targets (default $GRM_VLLM_PYTHON, else this one)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cuda", "cpu"), default="auto", help="where DIR targets run"
    )
    parser.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="worker config override for DIR targets, e.g. vllm.max_model_len=4096 (repeatable; YAML values)",
    )


# --- the evaluation set ---------------------------------------------------------------------------


def load_evalset(path: Path | None) -> tuple[list[EvalItem], str, str]:
    """The items, their digest and where they came from (``path`` or the shipped default)."""
    if path is None:
        data = resources.files("grm_operator").joinpath("data", DEFAULT_SET).read_bytes()
        source = f"(default) {DEFAULT_SET}"
    else:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise EvalSetError(f"{path}: cannot read: {error.strerror}") from None
        source = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise EvalSetError(f"{source}: not UTF-8 ({error.reason} at byte {error.start})") from None
    try:
        items = parse_evalset(text)
    except EvalSetError as error:
        raise EvalSetError(f"{source}: {error}") from None
    return items, dataset_digest(data), source


# --- targets: a running server or a checkpoint served here -------------------------------------------


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def checkpoint_precision(directory: Path) -> tuple[str, str]:
    """``(precision, checkpoint_quantization)`` of the worker config that serves ``directory``,
    read from its ``config.json``."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except OSError:
        raise EvaluateError(f"{directory}: no config.json (not a Hugging Face checkpoint)") from None
    except ValueError as error:
        raise EvaluateError(f"{directory}/config.json: not JSON ({error})") from None
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quantization, dict):
        return "bf16", "none"
    method = quantization.get("quant_method")
    if method == "awq":
        return "awq-int4", "awq"
    if method == "gptq":
        return "gptq-int4", "gptq"
    if method != "compressed-tensors":
        raise EvaluateError(f"{directory}: quantization {method!r} is not one the worker serves")
    groups = quantization.get("config_groups") or {}
    weights = [g.get("weights") or {} for g in groups.values() if isinstance(g, dict)]
    if any(w.get("type") == "float" and w.get("num_bits") == 8 for w in weights):
        return "fp8", "compressed-tensors"
    # Int weights of any width are served by the same flags (--quantization compressed-tensors);
    # the worker's precision for them is int8. vLLM picks the kernel (int8 GEMM, Marlin W4A16).
    return "int8", "compressed-tensors"


def _overrides(options: Sequence[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise UsageError(f"--engine-option {option!r}: expected KEY=VALUE")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def worker_config(directory: Path, args: argparse.Namespace) -> WorkerConfig:
    precision, quantization = checkpoint_precision(directory)
    data: dict[str, Any] = {
        "model": {
            "name": directory.name or "variant",
            "served_name": "evaluated",
            "path": str(directory),
            "checkpoint_quantization": quantization,
        },
        "precision": precision,
        "engine": "vllm",
        "device": args.device,
        # A private Unix socket: no port to choose, none taken from other engines on the host.
        "engine_transport": "unix",
        "vllm": {"python": args.vllm_python} if args.vllm_python else {},
    }
    for dotted, value in _overrides(args.engine_option).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise UsageError(f"--engine-option {dotted}: {key} is not a section")
            node = child
        node[leaf] = value
    try:
        return WorkerConfig.model_validate(data)
    except ValueError as error:
        raise UsageError(f"{directory}: bad engine options: {error}") from None


async def _first_model(engine: ProxyEngine) -> str:
    reply = await engine.models()
    models = (reply.body or {}).get("data") if reply.status == 200 else None
    if not isinstance(models, list) or not models or not isinstance(models[0], dict):
        raise EvaluateError(f"{engine.base_url}/v1/models answered {reply.status} without a model")
    return str(models[0].get("id"))


@contextlib.asynccontextmanager
async def serving(
    target: str, model: str | None, args: argparse.Namespace, side: str
) -> AsyncIterator[Engine]:
    """An engine answering for ``target``: the server at a URL, or vLLM started on a DIR (stopped
    on exit)."""
    if is_url(target):
        proxy = ProxyEngine(target, model or "")
        try:
            if not await proxy.ready(timeout=30):
                raise EvaluateError(f"{side} {target}: /health does not answer 200")
            if model is None:
                proxy.model_name = await _first_model(proxy)
            yield proxy
        finally:
            await proxy.stop()
        return
    directory = Path(target)
    if not directory.is_dir():
        raise EvaluateError(f"{side} {target}: neither an http(s):// URL nor a directory")
    config = worker_config(directory, args)
    try:
        engine = VllmEngine(config)
    except ConfigError as error:
        raise EvaluateError(f"{side} {target}: {error}") from None
    started = time.monotonic()
    print(f"{side}: starting vLLM on {target} ({config.precision}, {engine.device})", file=sys.stderr)
    await engine.start()
    try:
        dead = asyncio.create_task(engine.wait_dead())
        while not await engine.ready():
            if dead.done():
                raise EvaluateError(f"{side} {target}: vLLM did not start: {dead.result()}")
            await asyncio.wait({dead}, timeout=0.5)
        dead.cancel()
        print(f"{side}: vLLM ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
        yield engine
    finally:
        await engine.stop()


async def score_all(engine: Engine, items: Sequence[EvalItem], args: argparse.Namespace) -> list[Verdict]:
    """Every item's verdict on ``engine``, ``--concurrency`` items at a time."""
    gate = asyncio.Semaphore(args.concurrency)

    async def one(index: int, item: EvalItem) -> Verdict:
        rounds = 0

        async def sampler(prompts: list[str], n: int) -> list[str]:
            nonlocal rounds
            rounds += 1
            # The same seed for item i, round r on both sides (see the module docstring).
            seed = (args.seed * 1_000_003 + index * 1_009 + rounds) % (2**31)
            return await engine.sample(
                prompts, n, max_tokens=args.max_tokens, temperature=args.temperature, seed=seed
            )

        request = ScoreRequest(
            query=item.prompt, responses=item.responses, samples=args.samples, seed=args.seed + index
        )
        async with gate:
            result = await score(request, sampler)
        valid = result.samples_used - result.parse_failures
        means = tuple(s / valid for s in result.scores) if valid else None
        return Verdict(result.winner, means, result.samples_used, result.parse_failures)

    return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))


@dataclass
class SideRun:
    verdicts: list[Verdict]
    seconds: float
    model: str


async def run_side(
    target: str, model: str | None, items: Sequence[EvalItem], args: argparse.Namespace, side: str
) -> SideRun:
    async with serving(target, model, args, side) as engine:
        started = time.monotonic()
        try:
            verdicts = await score_all(engine, items, args)
        except (EngineError, aiohttp.ClientError) as error:
            raise EvaluateError(f"{side} {target}: scoring failed: {error}") from None
        seconds = time.monotonic() - started
        print(f"{side}: {len(items)} items scored in {seconds:.1f} s", file=sys.stderr)
        return SideRun(verdicts, seconds, engine.model_name)


def _validate(args: argparse.Namespace) -> None:
    if args.samples < 1:
        raise UsageError(f"--samples must be ≥ 1, got {args.samples}")
    if args.max_tokens < 16:
        raise UsageError(f"--max-tokens must be ≥ 16, got {args.max_tokens}")
    if not 0.0 <= args.temperature <= 2.0:
        raise UsageError(f"--temperature must be within [0, 2], got {args.temperature}")
    if not 0.0 < args.confidence < 1.0:
        raise UsageError(f"--confidence must be within (0, 1), got {args.confidence}")
    if args.floor is not None and not 0.0 <= args.floor <= 1.0:
        raise UsageError(f"--floor must be within [0, 1], got {args.floor}")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be ≥ 1, got {args.concurrency}")
    for side, target in (("--variant", args.variant), ("--reference", args.reference)):
        if not is_url(target) and not Path(target).is_dir():
            raise UsageError(f"{side} {target}: neither an http(s):// URL nor an existing directory")
        if not is_url(target):
            worker_config(Path(target), args)  # bad options or checkpoint: fail before any engine starts
    _overrides(args.engine_option)


async def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation's JSON document (raises EvalSetError, EvaluateError, MeasureError)."""
    _validate(args)
    items, digest, source = load_evalset(args.dataset)
    reference = await run_side(args.reference, args.reference_model, items, args, "reference")
    variant = await run_side(args.variant, args.variant_model, items, args, "variant")
    result = measure(
        items, reference.verdicts, variant.verdicts, confidence=args.confidence, method=args.interval
    )
    document: dict[str, Any] = {
        **result,
        "dataset_digest": digest,
        "dataset": source,
        "variant": {"target": args.variant, "model": variant.model, "seconds": round(variant.seconds, 3)},
        "reference": {
            "target": args.reference,
            "model": reference.model,
            "seconds": round(reference.seconds, 3),
        },
        "scoring": {
            "samples": args.samples,
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "seed": args.seed,
        },
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "verdicts": [
            {
                "line": item.line,
                "label": item.label,
                "reference": r.winner,
                "variant": v.winner,
                "reference_scores": r.mean_scores,
                "variant_scores": v.mean_scores,
            }
            for item, r, v in zip(items, reference.verdicts, variant.verdicts, strict=True)
        ],
    }
    if args.floor is not None:
        document["floor"] = args.floor
        document["passed"] = result["agreement_low"] >= args.floor
    return document


def command(args: argparse.Namespace) -> int:
    try:
        document = asyncio.run(evaluate(args))
    except EvalSetError as error:
        print(f"grm-operator evaluate: bad evaluation set: {error}", file=sys.stderr)
        return 2
    except EvaluateError as error:
        print(f"grm-operator evaluate: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    except MeasureError as error:
        print(f"grm-operator evaluate: {error}", file=sys.stderr)
        return 1
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    low, high = document["agreement_low"], document["agreement_high"]
    summary = f"agreement {document['agreement']:.3f} [{low:.3f}, {high:.3f}] on n={document['n']}"
    if "passed" in document:
        summary += f"; floor {document['floor']}: {'passed' if document['passed'] else 'REJECTED'}"
    print(summary)
    return 0
