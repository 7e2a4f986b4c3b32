"""``grm-operator quantize``: build a compressed variant of a checkpoint with llm-compressor.

::

    grm-operator quantize --source DIR --scheme FP8_DYNAMIC|W8A8|W4A16 [--prune 2:4]
                          [--calibration FILE] --out DIR

The recipe (:class:`grm_operator.quality.recipe.BuildRecipe`) runs in llm-compressor's ``oneshot``
(:mod:`grm_operator.tools.compress_job`) under the interpreter that has it: ``--python``, else
``$GRM_COMPRESS_PYTHON``, else this one (``pip install 'grm-elastic[compress]'``). Calibration
texts are GRM scoring prompts rendered from an evaluation set (``--calibration``, the JSONL of
``grm-operator evaluate``; default: the shipped set), so GPTQ and SparseGPT see the activations
the reward model sees in production.

The result is a compressed-tensors checkpoint in ``--out`` with a manifest,
``grm-build.json``: the recipe and its digest, the source's content digest, the output's content
digest (sha256 over every file, :func:`tree_digest`), the tool versions and the build time. A
build is idempotent: when ``--out`` already holds a manifest of the same recipe and source digests
whose output digest still matches the files, nothing is rebuilt. A build writes into a sibling
directory first and renames it into place at the end, so an interrupted build (a Job's pod killed)
leaves no half checkpoint under ``--out``.

The manifest is printed on stdout. Exit status: 0 built or up to date, 1 the compression failed,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from grm_operator.quality.evalset import EvalSetError
from grm_operator.quality.recipe import PRUNE_STRUCTURES, SCHEMES, BuildRecipe, RecipeError, recipe_digest
from grm_operator.tools.evaluate import load_evalset
from grm_worker.scoring import build_prompt

__all__ = ["MANIFEST", "add_arguments", "command", "tree_digest", "up_to_date"]

#: The manifest's file name inside a built checkpoint.
MANIFEST = "grm-build.json"
JOB_SCRIPT = Path(__file__).with_name("compress_job.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", type=Path, required=True, help="the Hugging Face checkpoint to compress (a DIR)"
    )
    parser.add_argument("--scheme", required=True, choices=SCHEMES, help="quantization scheme")
    parser.add_argument(
        "--prune", choices=PRUNE_STRUCTURES, default=None, help="SparseGPT pruning first (2:4)"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="evaluation-set JSONL whose items become calibration prompts (default: the shipped set)",
    )
    parser.add_argument("--calibration-samples", type=int, default=512, help="calibration prompts used (512)")
    parser.add_argument(
        "--max-seq-length", type=int, default=2048, help="tokens per calibration prompt (2048)"
    )
    parser.add_argument(
        "--symmetric-activations",
        action="store_true",
        help="W8A8 only: llm-compressor's symmetric preset instead of per-token zero points",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="where the compressed checkpoint goes (a DIR)"
    )
    parser.add_argument(
        "--python",
        default=os.environ.get("GRM_COMPRESS_PYTHON") or sys.executable,
        help="interpreter that has llm-compressor (default $GRM_COMPRESS_PYTHON, else this one)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when --out is up to date")


def tree_digest(directory: Path, *, exclude: frozenset[str] = frozenset()) -> str:
    """``sha256:<hex>`` over every file below ``directory``: sha256 of the sorted lines
    ``<relative path> <sha256 of the file>`` (names and contents count, timestamps do not)."""
    lines = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative in exclude:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{relative} {digest.hexdigest()}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def up_to_date(out: Path, recipe_sha: str, source_sha: str) -> dict[str, Any] | None:
    """The manifest in ``out`` when it is a finished build of this recipe and source whose files
    still match its digest; None otherwise (missing, another recipe, or files changed)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("recipe_digest") != recipe_sha or manifest.get("source_digest") != source_sha:
        return None
    if manifest.get("digest") != tree_digest(out, exclude=frozenset({MANIFEST})):
        return None
    return manifest


def write_calibration(path: Path, source: Path | None, samples: int) -> int:
    """Write up to ``samples`` GRM scoring prompts (JSON strings, one a line); returns how many."""
    items, _, _ = load_evalset(source)
    prompts = [build_prompt(item.prompt, item.responses) for item in items][:samples]
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return len(prompts)


def _fail(message: str, status: int) -> int:
    print(f"grm-operator quantize: {message}", file=sys.stderr)
    return status


def command(args: argparse.Namespace) -> int:
    try:
        recipe = BuildRecipe(
            scheme=args.scheme,
            prune=args.prune,
            calibration_samples=args.calibration_samples,
            max_seq_length=args.max_seq_length,
            symmetric_activations=args.symmetric_activations,
        )
    except RecipeError as error:
        return _fail(str(error), 2)
    source: Path = args.source
    out: Path = args.out
    if not (source / "config.json").is_file():
        return _fail(f"--source {source}: not a Hugging Face checkpoint (no config.json)", 2)
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        return _fail(f"--out {out} must not be --source or inside it", 2)
    if out.exists() and not out.is_dir():
        return _fail(f"--out {out} exists and is not a directory", 2)
    if args.calibration is not None and not args.calibration.is_file():
        return _fail(f"--calibration {args.calibration}: no such file", 2)

    job_recipe = recipe.job_recipe()
    recipe_sha = recipe_digest(job_recipe)
    source_sha = tree_digest(source)
    if not args.force:
        existing = up_to_date(out, recipe_sha, source_sha)
        if existing is not None:
            print(f"{out}: up to date ({existing['digest']})", file=sys.stderr)
            print(json.dumps(existing, indent=2))
            return 0

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        staging = work / "checkpoint"
        report = work / "report.json"
        command_line = [
            args.python,
            str(JOB_SCRIPT),
            "--source",
            str(source),
            "--out",
            str(staging),
            "--recipe",
            json.dumps(job_recipe),
            "--report",
            str(report),
        ]
        if recipe.needs_calibration:
            calibration = work / "calibration.jsonl"
            try:
                count = write_calibration(calibration, args.calibration, recipe.calibration_samples)
            except EvalSetError as error:
                return _fail(f"bad calibration set: {error}", 2)
            print(f"calibrating on {count} GRM prompts", file=sys.stderr)
            command_line += ["--calibration", str(calibration)]
        started = time.monotonic()
        completed = subprocess.run(command_line, check=False)
        seconds = time.monotonic() - started
        if completed.returncode != 0:
            return _fail(
                f"the compression run exited with status {completed.returncode} after {seconds:.0f} s", 1
            )
        try:
            tools = json.loads(report.read_text())
        except (OSError, ValueError):
            tools = {}
        manifest = {
            "recipe": job_recipe,
            "recipe_digest": recipe_sha,
            "source": str(source),
            "source_digest": source_sha,
            "digest": tree_digest(staging),
            "tools": tools,
            "build_seconds": round(seconds, 1),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            # A stale build (another recipe or source): moved aside before the new one takes its place.
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{out}: built in {seconds:.0f} s ({manifest['digest']})", file=sys.stderr)
    print(json.dumps(manifest, indent=2))
    return 0
