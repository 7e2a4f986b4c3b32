"""The compression run itself: llm-compressor's ``oneshot`` on a Hugging Face checkpoint.

This file is executed as a script by the interpreter that has llm-compressor (``llmcompressor``,
with torch and transformers; ``.venv-compress`` in development, the build image in a cluster), so
it imports nothing of grm-elastic: ``grm-operator quantize`` (:mod:`grm_operator.tools.quantize`)
hands it the recipe as JSON, already validated (:mod:`grm_operator.quality.recipe`)::

    python compress_job.py --source DIR --out DIR --recipe JSON [--calibration JSONL] [--report JSON]

The recipe is ``{"modifiers": [{"type": "GPTQModifier", "args": {...}}, ...], "calibration":
{"samples": N, "max_seq_length": L}, "save": {"sparse_format": "dense"|"auto"}}``; modifiers run in
order (SparseGPT's 2:4 pruning before the quantization, as llm-compressor's 2:4 examples do).
Calibration texts come one per line of the ``--calibration`` file (JSON strings); recipes that need
none (FP8_DYNAMIC) run without data. The checkpoint is written with compressed-tensors
(``save_compressed``), the format vLLM loads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

# The only modifiers a recipe may name (a recipe is data, never code to import).
MODIFIERS = {
    "QuantizationModifier": "llmcompressor.modifiers.quantization",
    "GPTQModifier": "llmcompressor.modifiers.quantization",
    "SparseGPTModifier": "llmcompressor.modifiers.pruning",
}


def build_modifiers(recipe: dict[str, Any]) -> list[Any]:
    import importlib

    modifiers = []
    for item in recipe["modifiers"]:
        module = importlib.import_module(MODIFIERS[item["type"]])
        modifiers.append(getattr(module, item["type"])(**item["args"]))
    return modifiers


def calibration_dataset(path: Path, tokenizer: Any, samples: int, max_seq_length: int) -> Any:
    from datasets import Dataset

    texts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:samples]
    encoded = tokenizer(texts, truncation=True, max_length=max_seq_length, add_special_tokens=False)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})


def versions() -> dict[str, str]:
    """The versions that made the checkpoint (recorded in the build's manifest)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("llmcompressor", "compressed-tensors", "torch", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def run(source: Path, out: Path, recipe: dict[str, Any], calibration: Path | None) -> None:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Deterministic calibration order and GPTQ: the same recipe on the same source gives the same
    # weights, so the content digest of a rebuild matches.
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    options: dict[str, Any] = {}
    settings = recipe.get("calibration") or {}
    if calibration is not None:
        samples, length = int(settings.get("samples", 512)), int(settings.get("max_seq_length", 2048))
        dataset = calibration_dataset(calibration, tokenizer, samples, length)
        options = {
            "dataset": dataset,
            "num_calibration_samples": len(dataset),
            "max_seq_length": length,
            "shuffle_calibration_samples": False,
        }
    oneshot(model=model, recipe=build_modifiers(recipe), **options)
    save: dict[str, Any] = {"save_compressed": True}
    if (recipe.get("save") or {}).get("sparse_format", "dense") == "dense":
        # 2:4-pruned weights stored dense (zeros kept): every vLLM backend loads them; the
        # sparse-24 format needs kernels only some GPUs have.
        save["disable_sparse_compression"] = True
    model.save_pretrained(out, **save)
    tokenizer.save_pretrained(out)
    for extra in ("generation_config.json", "chat_template.jinja"):
        if (source / extra).is_file() and not (out / extra).exists():
            (out / extra).write_bytes((source / extra).read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", required=True, help="the recipe as JSON")
    parser.add_argument("--calibration", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None, help="where to write the tool versions (JSON)")
    args = parser.parse_args(argv)
    try:
        import llmcompressor  # noqa: F401  (checked first: a clear message instead of a traceback)
    except ImportError:
        print(
            f"llm-compressor is not installed in {sys.executable}: pip install 'grm-elastic[compress]' "
            "there, or point --python / $GRM_COMPRESS_PYTHON at an interpreter that has it",
            file=sys.stderr,
        )
        return 3
    run(args.source, args.out, json.loads(args.recipe), args.calibration)
    if args.report is not None:
        args.report.write_text(json.dumps(versions()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
