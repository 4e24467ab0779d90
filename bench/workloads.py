"""The benchmark workloads' inputs: the W1 checkpoint and the W1 / W2 data, written once.

    .venv/bin/python bench/workloads.py OUT_DIR [--quick]

- `write_checkpoint`: a random-init Llama-3-style model in Hugging Face format (config.json +
  model.safetensors, untied head) with the bundled sentencepiece tokenizer beside it; tunegen,
  torchtune (FullModelHFCheckpointer, LLAMA3) and transformers all load it. W1: vocab 8192, dim
  512, 8 layers, 8 query / 4 key-value heads, MLP 1536 (33.6 M parameters).
- `write_w1_data`: text records long enough that every sample is cut to exactly `seq` tokens
  (fixed-length batches, every token carries loss).
- `write_w2_data`: instruct records (instruction / output) whose total length is log-uniform
  between 32 and 512 tokens, about 30% of it prompt (masked out of the loss).

Only tunegen's runtime and torch are needed (the tokenizer measures the lengths), so the data
is the same whichever framework reads it. Seeds are fixed: the files are identical every time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from tunegen.runtime.hf_checkpoint import save_hf_checkpoint
from tunegen.runtime.models import llama
from tunegen.runtime.tokenizers import builtin_tokenizer

ASSETS = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "tiny"


@dataclass(frozen=True)
class Shape:
    """A model shape and the workloads' sizes."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    w1_batch: int
    w1_seq: int
    w1_steps: int
    w2_samples: int
    w2_min: int
    w2_max: int

    def model_kwargs(self) -> dict[str, int]:
        keys = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim")
        return {key: getattr(self, key) for key in keys}

    def matmul_params(self) -> int:
        """Parameters of the linear layers (attention, MLP, head): what 6N per token counts."""
        head_dim = self.dim // self.n_heads
        attention = 2 * self.dim * self.dim + 2 * self.dim * self.n_kv_heads * head_dim
        mlp = 3 * self.dim * self.hidden_dim
        return self.n_layers * (attention + mlp) + self.vocab_size * self.dim


FULL = Shape(8192, 512, 8, 8, 4, 1536, w1_batch=4, w1_seq=256, w1_steps=30,
             w2_samples=400, w2_min=32, w2_max=512)  # fmt: skip
QUICK = Shape(1024, 64, 2, 4, 2, 128, w1_batch=2, w1_seq=64, w1_steps=4,
              w2_samples=24, w2_min=16, w2_max=64)  # fmt: skip
# G1 (a lent GPU): Llama-3.2-1B's shape (1.24 B parameters with its 128k vocabulary), W2's data
# at sequence length 2048. The bundled tokenizer uses only the first ids of the vocabulary.
G1 = Shape(128256, 2048, 16, 32, 8, 8192, w1_batch=1, w1_seq=2048, w1_steps=0,
           w2_samples=2000, w2_min=64, w2_max=2048)  # fmt: skip


def write_checkpoint(
    folder: Path, shape: Shape, max_seq_len: int, dtype: torch.dtype = torch.float32
) -> Path:
    """The random-init model (seed 0) in HF format, with `tokenizer.model` beside it."""
    torch.manual_seed(0)
    model = llama(**shape.model_kwargs(), max_seq_len=max_seq_len, rope_base=500000.0)
    model.to(dtype)
    save_hf_checkpoint(model, folder, tokenizer=builtin_tokenizer("tiny"))
    shutil.copy(ASSETS / "tokenizer.model", folder / "tokenizer.model")
    return folder


def _words() -> list[str]:
    text = (ASSETS / "corpus.txt").read_text(encoding="utf-8")
    return sorted({word for word in text.split() if word.isalpha()})


def _text_of(tokens: int, words: list[str], rng: random.Random) -> str:
    """Random words that the tiny tokenizer encodes to about `tokens` tokens (within a word)."""
    tokenizer = builtin_tokenizer("tiny")
    picked: list[str] = []
    while len(tokenizer.encode(" ".join(picked), add_bos=False, add_eos=False)) < tokens:
        picked += rng.choices(words, k=max(1, (tokens - len(picked)) // 3))
    while len(tokenizer.encode(" ".join(picked), add_bos=False, add_eos=False)) > tokens:
        picked.pop()
    return " ".join(picked)


def write_w1_data(path: Path, shape: Shape) -> Path:
    """`w1_batch * w1_steps` text records, each longer than `w1_seq` tokens."""
    rng, words = random.Random(1), _words()
    count = shape.w1_batch * shape.w1_steps
    with path.open("w", encoding="utf-8") as out:
        for _ in range(count):
            out.write(json.dumps({"text": _text_of(shape.w1_seq + 16, words, rng)}) + "\n")
    return path


def write_w2_data(path: Path, shape: Shape) -> Path:
    """`w2_samples` instruct records of log-uniform total length, ~30% of it prompt."""
    rng, words = random.Random(2), _words()
    with path.open("w", encoding="utf-8") as out:
        for _ in range(shape.w2_samples):
            total = math.exp(rng.uniform(math.log(shape.w2_min), math.log(shape.w2_max - 8)))
            prompt = max(2, round(0.3 * total))
            record = {
                "instruction": _text_of(prompt, words, rng),
                "input": "",
                "output": _text_of(max(2, round(total) - prompt), words, rng),
            }
            out.write(json.dumps(record) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    shape = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    write_checkpoint(args.out / "model", shape, max(shape.w1_seq, shape.w2_max))
    write_w1_data(args.out / "w1.jsonl", shape)
    write_w2_data(args.out / "w2.jsonl", shape)
    print(f"wrote {args.out}/model, w1.jsonl, w2.jsonl")


if __name__ == "__main__":
    main()
