"""A tiny *trained* GRM for the quality tests: the tiny Llama of tiny_llama.py, taught in seconds to
answer a GRM scoring prompt with ``Scores: \\boxed{a, b}``, and a way to destroy a checkpoint.

Run with the vLLM interpreter (it has torch, transformers and safetensors)::

    .venv-vllm/bin/python tests/support/tiny_grm.py build OUT_DIR
    .venv-vllm/bin/python tests/support/tiny_grm.py dataset OUT_JSONL N
    .venv-vllm/bin/python tests/support/tiny_grm.py destroy SRC_DIR OUT_DIR

Why trained: a random model never writes a parsable ``\\boxed{}``, so every verdict would be
"none" and agreement could not be measured at all. The training set is GRM prompts of two answers,
one holding the word "correct" (scored 8) and one holding "wrong" (scored 3), in random order: the
model learns the answer format and, mostly, which answer wins. It remains a mechanism check, not a
reward model: what its agreement says about quantization of a real 27B GRM is nothing.

``destroy`` copies a checkpoint and overwrites every decoder Linear weight with seeded noise of the
same dtype and shape (int8 values for an int8 checkpoint): a variant the gate must reject.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "worker"))

from tiny_llama import build as build_tiny_llama

WORDS = ["the", "a", "response", "is", "helpful", "clear", "answer", "question", "score", "analysis"]
STEPS = 160
BATCH = 8


def item(rng: random.Random) -> tuple[str, list[str], int]:
    """A query, two answers (one with "correct", one with "wrong") and the index of the good one."""

    def answer(marker: str) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
        words.insert(rng.randint(0, len(words)), marker)
        return " ".join(words)

    good = 0 if rng.random() < 0.5 else 1
    answers = [answer("correct"), answer("wrong")] if good == 0 else [answer("wrong"), answer("correct")]
    return f"question {rng.randint(0, 99)}", answers, good


def example(rng: random.Random) -> tuple[str, str]:
    """A GRM prompt of two answers and the completion the model learns."""
    from grm_worker.scoring import build_prompt

    query, answers, good = item(rng)
    scores = "8, 3" if good == 0 else "3, 8"
    return build_prompt(query, answers), f"Scores: \\boxed{{{scores}}}"


def dataset(out: Path, count: int) -> None:
    """An evaluation set of ``count`` items drawn like the training ones (another seed), labelled."""
    rng = random.Random(12345)
    lines = []
    for _ in range(count):
        query, answers, good = item(rng)
        lines.append(json.dumps({"prompt": query, "responses": answers, "label": good}) + "\n")
    out.write_text("".join(lines))


def train(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    # One thread: on 2 shared cores OpenMP's spinning threads slow a model this small down.
    torch.set_num_threads(1)
    build_tiny_llama(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    for step in range(STEPS):
        batch_ids, batch_labels = [], []
        for _ in range(BATCH):
            prompt, completion = example(rng)
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos]
            batch_ids.append(p + c)
            batch_labels.append([-100] * len(p) + c)
        width = max(len(ids) for ids in batch_ids)
        ids = torch.tensor([x + [eos] * (width - len(x)) for x in batch_ids])
        labels = torch.tensor([y + [-100] * (width - len(y)) for y in batch_labels])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch_ids])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == STEPS - 1:
            print(f"step {step} loss {loss.item():.3f}", file=sys.stderr, flush=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)


def destroy(src: Path, out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out, dirs_exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, tensor in load_file(str(src / "model.safetensors")).items():
        if ".layers." in name and name.endswith("proj.weight"):
            if tensor.dtype == torch.int8:
                tensor = torch.randint(-127, 128, tensor.shape, dtype=torch.int8, generator=generator)
            else:
                noise = torch.randn(tensor.shape, generator=generator) * float(tensor.float().std()) * 4
                tensor = noise.to(tensor.dtype)
        tensors[name] = tensor.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    # A destroyed checkpoint is no build of anything: drop a copied manifest.
    (out / "grm-build.json").unlink(missing_ok=True)
    json.loads((out / "config.json").read_text())  # still a loadable checkpoint


if __name__ == "__main__":
    if sys.argv[1] == "build":
        train(Path(sys.argv[2]))
    elif sys.argv[1] == "dataset":
        dataset(Path(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "destroy":
        destroy(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} build OUT | dataset OUT N | destroy SRC OUT")
