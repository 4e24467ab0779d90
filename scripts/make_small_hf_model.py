"""Write a small, randomly initialised Qwen2-shaped Hugging Face checkpoint, for the README walkthrough.

Nothing can be downloaded on the machines tunegen is tested on, so the README's real-model
walkthrough starts from this stand-in for `hf download Qwen/Qwen2.5-0.5B-Instruct`: the same files
a hub checkpoint has (`config.json`, `model.safetensors`, `generation_config.json`, `tokenizer.json`,
`tokenizer_config.json` with Qwen2's ChatML `chat_template`), at 0.6 M parameters instead of 494 M.
The tokenizer is a byte-level BPE trained on the bundled demo data, with Qwen's special tokens.
Both `transformers` and tunegen load the directory. Needs the test extras (transformers, tokenizers).

    python scripts/make_small_hf_model.py models/qwen
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DATA = Path(__file__).resolve().parent.parent / "specs" / "data"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 2000
# Qwen2-Instruct's template: a default system turn when the conversation has none.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus() -> Iterator[str]:
    """Every string value of the bundled demo data, plus the template's words."""
    yield "system user assistant You are a helpful assistant."
    for path in sorted(DATA.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for value in json.loads(line).values():
                if isinstance(value, str) and value:
                    yield value


def train_tokenizer() -> Tokenizer:
    """A byte-level BPE (as Qwen's) of about VOCAB_SIZE tokens, the special tokens first."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out: Path) -> None:
    """tokenizer.json and a tokenizer_config.json like Qwen2-Instruct's (EOS <|im_end|>, no BOS)."""
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    fast.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)  # keep it where Qwen's checkpoints do
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def save_model(tokenizer: Tokenizer, out: Path, seed: int) -> int:
    """A random Qwen2ForCausalLM scaled down (hidden 128, 4 layers, GQA 4/2); returns its size.

    With the usual init (std 0.02) the tied embeddings are so small that no logit can rise far
    above the others, and LoRA on the attention projections barely lowers the loss; std 0.1 lets
    the walkthrough's short run show the loss falling (a real checkpoint needs no such help).
    """
    config = transformers.Qwen2Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        initializer_range=0.1,  # not 0.02: logits wide enough for attention adapters to move
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=tokenizer.token_to_id("<|im_end|>"),
        pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
    )
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()  # one line of output, not a shard bar
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    save_tokenizer(tokenizer, args.out)
    size = save_model(tokenizer, args.out, args.seed)
    print(f"wrote {args.out}: Qwen2, {size:,} parameters, vocab {tokenizer.get_vocab_size()}")


if __name__ == "__main__":
    main()
