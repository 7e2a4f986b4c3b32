"""Compression recipes: a scheme (and optional 2:4 pruning) as llm-compressor modifiers.

A :class:`BuildRecipe` is what a user asks for (``--scheme W8A8 --prune 2:4``); :meth:`job_recipe`
is the exact list of llm-compressor modifiers with their arguments that the compression run
instantiates, and :func:`recipe_digest` its identity: same recipe digest + same source digest →
same checkpoint, so a finished build is never redone.

=============  ======================================================  ============================
scheme         llm-compressor                                          what vLLM runs
=============  ======================================================  ============================
FP8_DYNAMIC    ``QuantizationModifier(scheme="FP8_DYNAMIC")``: fp8     fp8 GEMMs (Hopper, Ada; CPU:
               e4m3 weights per output channel, activations per        fp8 weights dequantized)
               token at run time; no calibration data
W8A8           ``GPTQModifier``: int8 weights per output channel       int8 GEMMs (CUTLASS on GPU,
               (GPTQ on calibration data), int8 activations per        oneDNN on CPU)
               token at run time (asymmetric by default, see below)
W4A16          ``GPTQModifier(scheme="W4A16")``: int4 weights in       Marlin (GPU); CPUWNA16 (CPU)
               groups of 128, 16-bit activations
=============  ======================================================  ============================

``prune: 2:4`` runs ``SparseGPTModifier(sparsity=0.5, mask_structure="2:4")`` first (two of every
four weights zero, chosen on the calibration data, the survivors updated to make up for them), then
quantizes with round-to-nearest ``QuantizationModifier`` of the same scheme instead of GPTQ:
GPTQ's error feedback writes into the zeros (measured on the tiny test model with llm-compressor
0.14: W8A8 GPTQ after SparseGPT left 79–98 % of the groups of four 2:4, RTN 100 %), and a
checkpoint that is not exactly 2:4 can never take a sparse kernel. The checkpoint stores the pruned
weights dense (``sparse_format: dense``): every vLLM backend loads that; docs/quality.md says where
2:4 sparse kernels speed it up.

W8A8 activations are asymmetric (a zero point per token) unless ``symmetric_activations`` is set:
vLLM serves both (CUTLASS "azp" kernels on GPU, an extra rank-1 correction per GEMM); on x86 CPUs
vLLM's symmetric int8 path takes an AMX kernel whenever K % 32 == 0, which dies with SIGILL on VMs
that advertise AMX without enabling it, while the asymmetric one takes oneDNN. llm-compressor's
own "W8A8" preset is the symmetric one.

Pure: data in, data out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "PRUNE_STRUCTURES",
    "SCHEMES",
    "BuildRecipe",
    "RecipeError",
    "Scheme",
    "recipe_digest",
]

Scheme = Literal["FP8_DYNAMIC", "W8A8", "W4A16"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
#: Pruning structures llm-compressor's SparseGPT takes that vLLM can load (N:M semi-structured).
PRUNE_STRUCTURES = ("2:4",)

# Layers never quantized: the output head (quantizing it costs the most accuracy for the least
# memory, and llm-compressor's examples all keep it 16-bit).
IGNORE = ["lm_head"]


class RecipeError(ValueError):
    """A recipe that cannot be built (the message says which field and why)."""


@dataclass(frozen=True)
class BuildRecipe:
    """What to build: a scheme, optional pruning, and the calibration budget."""

    scheme: str
    prune: str | None = None
    #: Calibration texts (GRM scoring prompts) GPTQ/SparseGPT see; llm-compressor's examples use 512.
    calibration_samples: int = 512
    #: Tokens per calibration text (longer ones are truncated); 2048 in llm-compressor's examples.
    max_seq_length: int = 2048
    symmetric_activations: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise RecipeError(f"unknown scheme {self.scheme!r}: expected one of {', '.join(SCHEMES)}")
        if self.prune is not None and self.prune not in PRUNE_STRUCTURES:
            raise RecipeError(
                f"unknown pruning structure {self.prune!r}: expected one of {', '.join(PRUNE_STRUCTURES)}"
            )
        if self.calibration_samples < 1:
            raise RecipeError(f"calibration samples must be ≥ 1, got {self.calibration_samples}")
        if self.max_seq_length < 16:
            raise RecipeError(f"max sequence length must be ≥ 16, got {self.max_seq_length}")
        if self.symmetric_activations and self.scheme != "W8A8":
            raise RecipeError("symmetric_activations applies to W8A8 only")

    @property
    def needs_calibration(self) -> bool:
        """GPTQ and SparseGPT solve for weights on calibration activations; FP8_DYNAMIC's
        round-to-nearest with min-max scales needs none."""
        return self.prune is not None or self.scheme != "FP8_DYNAMIC"

    def modifiers(self) -> list[dict[str, Any]]:
        """llm-compressor modifiers in the order they run: ``{"type": ..., "args": {...}}``."""
        stages: list[dict[str, Any]] = []
        if self.prune is not None:
            stages.append(
                {
                    "type": "SparseGPTModifier",
                    "args": {
                        "sparsity": 0.5,
                        "mask_structure": self.prune,
                        "targets": ["Linear"],
                        "ignore": IGNORE,
                    },
                }
            )
        # After pruning, round-to-nearest keeps the 2:4 zeros; GPTQ would fill them (module doc).
        quantizer = "GPTQModifier" if self.prune is None else "QuantizationModifier"
        if self.scheme == "FP8_DYNAMIC":
            stages.append(
                {
                    "type": "QuantizationModifier",
                    "args": {"targets": ["Linear"], "scheme": "FP8_DYNAMIC", "ignore": IGNORE},
                }
            )
        elif self.scheme == "W4A16":
            stages.append(
                {"type": quantizer, "args": {"targets": ["Linear"], "scheme": "W4A16", "ignore": IGNORE}}
            )
        elif self.symmetric_activations:
            stages.append(
                {"type": quantizer, "args": {"targets": ["Linear"], "scheme": "W8A8", "ignore": IGNORE}}
            )
        else:
            group = {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"},
                "input_activations": {
                    "num_bits": 8,
                    "type": "int",
                    "symmetric": False,
                    "strategy": "token",
                    "dynamic": True,
                },
            }
            stages.append(
                {"type": quantizer, "args": {"config_groups": {"group_0": group}, "ignore": IGNORE}}
            )
        return stages

    def job_recipe(self) -> dict[str, Any]:
        """The whole recipe the compression run executes (and the manifest records)."""
        recipe: dict[str, Any] = {
            "scheme": self.scheme,
            "prune": self.prune,
            "modifiers": self.modifiers(),
            "save": {"sparse_format": "dense"},
        }
        if self.needs_calibration:
            recipe["calibration"] = {
                "samples": self.calibration_samples,
                "max_seq_length": self.max_seq_length,
            }
        return recipe


def recipe_digest(recipe: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the recipe's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
