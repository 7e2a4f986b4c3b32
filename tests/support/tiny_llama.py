"""Build a tiny random Llama and a locally trained BPE tokenizer for real-vLLM tests (no downloads).

Run with the vLLM interpreter (it has torch, transformers and tokenizers)::

    .venv-vllm/bin/python tests/support/tiny_llama.py OUT_DIR

2 layers, hidden 64, 2 query heads / 1 KV head of head_dim 80, vocabulary 512: ~0.1 M
parameters, so vLLM's CPU backend loads it in well under a second and the engine start is
dominated by vLLM itself. The tokenizer is trained on text shaped like the GRM scoring prompt,
so prompts stay a few hundred tokens long.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def corpus() -> list[str]:
    # Run by .venv-vllm's Python, where grm-elastic is not installed: the worker package by path.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "worker"))
    from grm_worker.scoring import build_prompt

    words = [
        "the",
        "a",
        "response",
        "is",
        "correct",
        "helpful",
        "clear",
        "score",
        "analysis",
        "criteria",
        "answer",
        "question",
    ]
    lines = [build_prompt(f"question {i}", [f"answer {i} {w}" for w in words[:3]]) for i in range(20)]
    lines += [" ".join(words[(i * 7 + j) % len(words)] for j in range(30)) for i in range(200)]
    lines += ["Scores: \\boxed{" + f"{i % 10 + 1}, {(i * 3) % 10 + 1}" + "}" for i in range(100)]
    return lines


def build(out: Path, *, group_aligned: bool = False) -> None:
    """The tiny Llama, random weights. ``group_aligned``: hidden 128, 8 query heads, intermediate
    256, so every Linear's input width is a multiple of 128 — what W4A16's groups of 128 need
    (llm-compressor refuses the default's o_proj of 2 × 80 = 160 columns)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128 if group_aligned else 64,
        intermediate_size=256 if group_aligned else 128,
        num_hidden_layers=2,
        # head_dim 80 (not 32/64): with bf16 and head_dim % 32 == 0 vLLM's CPU attention picks its
        # AMX kernel, which dies with SIGILL on this VM although the CPU flags advertise AMX;
        # head_dim % 32 == 16 selects the portable "vec16" kernel (cpu_attn._get_attn_isa).
        num_attention_heads=8 if group_aligned else 2,
        num_key_value_heads=1,
        head_dim=80,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # vLLM reads generation defaults from here; keep sampling ours (the request's).
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))


if __name__ == "__main__":
    build(Path(sys.argv[1]), group_aligned="--group-aligned" in sys.argv[2:])
