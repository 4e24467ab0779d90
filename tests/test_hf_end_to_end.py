"""A spec pointing at a local Hugging Face checkpoint dir trains with LoRA; peft loads the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import losses, run_recipe, tunegen_in_process

# Every test here trains (in this process, through `tunegen run`): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
tokenizers = pytest.importorskip("tokenizers")

SPEC = """\
name: hf_lora
method: lora
model: checkpoint
data: {path: data/train.jsonl, format: instruct, template: plain, max_seq_len: 96}
lora: {rank: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
training: {max_steps: 12, batch_size: 4, lr: 5e-3, warmup_steps: 1}
checkpoint: {output_dir: runs/hf_lora, export_merged: true}
"""


def make_checkpoint(folder: Path, corpus: list[str]) -> None:
    """A random-init Llama checkpoint with a byte-level BPE tokenizer, written by transformers."""
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer)
    bpe.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>"
    )
    tok.save_pretrained(folder)
    config = transformers.LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder, max_shard_size="100KB")


def test_lora_on_a_hf_checkpoint_exports_an_adapter_peft_loads(workdir):
    records = [
        {"instruction": "Repeat the words.", "input": f"w{i} x{i % 7}", "output": f"w{i} x{i % 7}"}
        for i in range(64)
    ]
    Path("data").mkdir()
    Path("data/train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    corpus = [f"{r['instruction']} {r['input']} {r['output']}" for r in records] * 4
    make_checkpoint(Path("checkpoint"), corpus)
    assert len(list(Path("checkpoint").glob("model-*.safetensors"))) > 1  # sharded, with an index

    Path("spec.yaml").write_text(SPEC)
    made = tunegen_in_process("new", "--spec", "spec.yaml")
    assert made.returncode == 0, made.stderr
    run_recipe("generated/hf_lora.py")
    by_step = losses(Path("runs/hf_lora/metrics.jsonl"))
    assert sorted(by_step) == list(range(1, 13))
    assert by_step[12] < by_step[1]

    # peft loads the exported adapter onto the original checkpoint: same logits as our model.
    from tunegen.runtime import load_model, load_peft_adapter

    tokens = torch.randint(0, 300, (2, 16))
    ours = load_model(Path("checkpoint"), dtype="fp32")
    load_peft_adapter(ours, "runs/hf_lora/peft_adapter")
    base = transformers.AutoModelForCausalLM.from_pretrained("checkpoint", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, "runs/hf_lora/peft_adapter")
    with torch.no_grad():
        expected = ours(tokens)
        assert torch.allclose(theirs(tokens).logits, expected, atol=1e-4)
        merged = transformers.AutoModelForCausalLM.from_pretrained("runs/hf_lora/hf_model")
        assert torch.allclose(merged(tokens).logits, expected, atol=1e-4)
    # the merged export carries the checkpoint's tokenizer
    assert (Path("runs/hf_lora/hf_model") / "tokenizer.json").is_file()


CHAT_SPEC = """\
name: hf_chat
method: full
model: checkpoint
data: {path: data/chat.jsonl, format: chat, template: tokenizer, max_seq_len: 96}
training: {max_steps: 3, batch_size: 2, lr: 1e-3}
checkpoint: {output_dir: runs/hf_chat}
"""
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_full_fine_tune_on_chat_data_with_the_checkpoints_own_template(workdir):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"hi {i}"},
                {"role": "assistant", "content": f"ok {i}"},
            ]
        }
        for i in range(8)
    ]
    Path("data").mkdir()
    Path("data/chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    make_checkpoint(Path("checkpoint"), [f"hi ok {i} user assistant" for i in range(50)])
    config_path = Path("checkpoint/tokenizer_config.json")
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHATML
    config_path.write_text(json.dumps(config))
    Path("spec.yaml").write_text(CHAT_SPEC)
    assert tunegen_in_process("new", "--spec", "spec.yaml").returncode == 0
    run = tunegen_in_process("run", "generated/hf_chat.py")
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(losses(Path("runs/hf_chat/metrics.jsonl"))) == [1, 2, 3]
    exported = transformers.AutoModelForCausalLM.from_pretrained("runs/hf_chat/hf_model")
    assert exported.config.num_hidden_layers == 2
