"""Quantize a bf16 Hugging Face checkpoint to an INT8 W8A8 compressed-tensors checkpoint, by hand.

Run with the vLLM interpreter (it has torch and safetensors)::

    .venv-vllm/bin/python e2e/w8a8_checkpoint.py BF16_DIR OUT_DIR

What llm-compressor's W8A8 int8 recipe writes, without its calibration (random weights need none):
every Linear weight of the decoder layers becomes int8 with one symmetric float32 scale per output
channel (``weight_scale``, shape ``[out, 1]``: round(w / (max|w_row| / 127))), and activations are
quantized per token at run time (dynamic, so the checkpoint holds no input scales). Activations are
*asymmetric*: vLLM's CPU int8 GEMM then takes the oneDNN path; the symmetric case picks the AMX
"sgl" kernel whenever K % 32 == 0, and AMX dies with SIGILL on the development VM (tiny_llama.py).
Embeddings, norms and ``lm_head`` stay bf16 (``ignore``), as in llm-compressor's recipes.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

QUANTIZATION_CONFIG = {
    "quant_method": "compressed-tensors",
    "format": "int-quantized",
    "quantization_status": "compressed",
    "ignore": ["lm_head"],
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {
                "num_bits": 8,
                "type": "int",
                "symmetric": True,
                "strategy": "channel",
                "dynamic": False,
            },
            "input_activations": {
                "num_bits": 8,
                "type": "int",
                "symmetric": False,
                "strategy": "token",
                "dynamic": True,
            },
        }
    },
}

# The decoder's Linear layers (Llama naming); everything else is copied unchanged.
LINEAR_SUFFIXES = (
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "o_proj.weight",
    "gate_proj.weight",
    "up_proj.weight",
    "down_proj.weight",
)


def quantize(src: Path, out: Path) -> None:
    # Only the vLLM interpreter has these (the operator's venv, which mypy checks with, has not).
    import torch  # type: ignore[import-not-found, unused-ignore]
    from safetensors.torch import load_file, save_file  # type: ignore[import-not-found, unused-ignore]

    out.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name != "model.safetensors" and item.is_file():
            shutil.copy2(item, out / item.name)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in load_file(str(src / "model.safetensors")).items():
        if name.endswith(LINEAR_SUFFIXES):
            w = tensor.float()
            scale = (w.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-8)
            tensors[name] = torch.round(w / scale).clamp(-128, 127).to(torch.int8).contiguous()
            tensors[name.removesuffix("weight") + "weight_scale"] = scale.contiguous()
        else:
            tensors[name] = tensor.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = QUANTIZATION_CONFIG
    (out / "config.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    quantize(Path(sys.argv[1]), Path(sys.argv[2]))
