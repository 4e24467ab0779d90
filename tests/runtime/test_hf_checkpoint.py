"""HF checkpoints in and out: logit parity with transformers for every supported architecture,
sharded round trips, dtypes, memory-sane loading and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tunegen.runtime import hf_checkpoint, hf_config_for, load_model, save_hf_checkpoint
from tunegen.runtime.errors import CheckpointError
from tunegen.runtime.models import llama

transformers = pytest.importorskip("transformers")
from helpers import HF_TEST_SIZES  # noqa: E402 (after the importorskip)

SIZES = HF_TEST_SIZES
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # shorter than the test sequences, so it matters
}
SHARD = "50KB"  # the tiny models are ~200 KB: several shards and an index

# name -> (config, load_model kwargs). Each exercises what its architecture adds to Llama.
ARCHITECTURES = {
    "llama3.1": (lambda: transformers.LlamaConfig(**SIZES, rope_parameters=dict(LLAMA3_ROPE)), {}),
    "llama3.2-tied": (
        lambda: transformers.LlamaConfig(**SIZES, tie_word_embeddings=True, attention_bias=True),
        {},
    ),
    # A window shorter than max_position_embeddings: loads only within the window.
    "mistral": (
        lambda: transformers.MistralConfig(**SIZES, sliding_window=48, head_dim=32),
        {"max_seq_len": 48},
    ),
    "qwen2": (
        lambda: transformers.Qwen2Config(**SIZES, use_sliding_window=False, rope_theta=1e6),
        {},
    ),
    "qwen3": (lambda: transformers.Qwen3Config(**SIZES, head_dim=32, tie_word_embeddings=True), {}),
    "phi3": (
        lambda: transformers.Phi3Config(**SIZES, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        {},
    ),
}


def random_hf(config, *, seed: int = 0):
    """A random HF model whose norms and biases are not at their trivial init, so they matter."""
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(mean=1.0, std=0.1)
            elif name.endswith(".bias"):
                param.normal_(std=0.1)
    return hf


def save_hf(hf, folder: Path, **kwargs) -> Path:
    hf.save_pretrained(folder, max_shard_size=SHARD, **kwargs)
    (folder / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    return folder


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


def weight_names(folder: Path) -> set[str]:
    index = folder / hf_checkpoint.INDEX_FILE
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    return set(load_file(folder / hf_checkpoint.WEIGHTS_FILE))


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def checkpoint(request, tmp_path_factory):
    """(arch name, HF model, its saved dir, load kwargs) for each architecture."""
    make_config, load_kwargs = ARCHITECTURES[request.param]
    hf = random_hf(make_config())
    folder = save_hf(hf, tmp_path_factory.mktemp(request.param))
    return request.param, hf, folder, load_kwargs


def test_load_matches_transformers_and_saves_back(checkpoint, tmp_path: Path) -> None:
    _, hf, folder, load_kwargs = checkpoint
    assert len(json.loads((folder / hf_checkpoint.INDEX_FILE).read_text())["weight_map"]) > 1
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    ours = load_model(folder, **load_kwargs).eval()
    tokens = torch.randint(0, 128, (2, ours.max_seq_len - 8))
    expected = logits(hf, tokens)
    torch.testing.assert_close(logits(ours, tokens), expected, rtol=0, atol=1e-4)
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    assert ours.hf_config["architectures"] == hf.config.architectures

    out = save_hf_checkpoint(ours, tmp_path / "out", folder, max_shard_size=SHARD)
    assert weight_names(out) == weight_names(folder)  # Phi-3's fused names included
    # Sharded as transformers shards (huggingface_hub's splitter): the same shard files, index
    # keys and total size; tensors may sit in other shards, as our model orders them differently.
    ours_index = json.loads((out / hf_checkpoint.INDEX_FILE).read_text())
    hf_index = json.loads((folder / hf_checkpoint.INDEX_FILE).read_text())
    assert set(ours_index["weight_map"].values()) == set(hf_index["weight_map"].values())
    assert ours_index["weight_map"].keys() == hf_index["weight_map"].keys()
    assert ours_index["metadata"]["total_size"] == hf_index["metadata"]["total_size"]
    assert (out / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert (out / "generation_config.json").is_file()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(reloaded, tokens), expected, rtol=0, atol=1e-4)


def test_llama3_rope_scaling_matters_and_old_config_form_reads_the_same(tmp_path: Path) -> None:
    """Published Llama 3.1 configs carry rope_theta + rope_scaling instead of rope_parameters."""
    hf = random_hf(transformers.LlamaConfig(**SIZES, rope_parameters=dict(LLAMA3_ROPE)))
    folder = save_hf(hf, tmp_path / "new")
    tokens = torch.randint(0, 128, (1, 60))
    expected = logits(hf, tokens)
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    config = json.loads((old / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    (old / "config.json").write_text(json.dumps(config))
    torch.testing.assert_close(logits(load_model(old), tokens), expected, rtol=0, atol=1e-4)

    ours = load_model(folder)
    unscaled = llama(**{**ours.build_args, "rope_scaling": None})
    unscaled.load_state_dict(ours.state_dict())
    assert (logits(unscaled, tokens) - expected).abs().max() > 1e-3


def test_bf16_checkpoint_stays_bf16_unless_asked(tmp_path: Path) -> None:
    hf = random_hf(transformers.Qwen2Config(**SIZES)).to(torch.bfloat16)
    folder = save_hf(hf, tmp_path / "bf16")
    ours = load_model(folder).eval()
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert ours.model.rope_cos.dtype == torch.float32  # tables stay exact
    tokens = torch.randint(0, 128, (1, 16))
    torch.testing.assert_close(logits(ours, tokens), logits(hf, tokens), rtol=0, atol=3e-2)
    assert {p.dtype for p in load_model(folder, dtype="fp32").parameters()} == {torch.float32}
    assert {p.dtype for p in load_model(folder, dtype=torch.float16).parameters()} == {
        torch.float16
    }

    out = save_hf_checkpoint(ours, tmp_path / "out", folder)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}


def test_builtin_model_saves_as_a_transformers_llama(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tiny = load_model("tiny").eval()
    config = hf_config_for(tiny)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    out = save_hf_checkpoint(tiny, tmp_path / "tiny", max_shard_size="4MB")
    assert (out / hf_checkpoint.INDEX_FILE).is_file()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(0, 512, (2, 24))
    torch.testing.assert_close(logits(hf, tokens), logits(tiny, tokens), rtol=0, atol=1e-4)
    assert load_model("tiny", dtype="bf16").model.embed_tokens.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "features, architecture",
    [
        ({"qkv_bias": True}, "Qwen2ForCausalLM"),
        ({"qk_norm": True, "head_dim": 32, "attention_bias": True}, "Qwen3ForCausalLM"),
        (
            {"rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}},
            "LlamaForCausalLM",
        ),
    ],
)
def test_hf_config_for_other_features(features: dict, architecture: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = llama(
        vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96,
        max_seq_len=64, **features,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if name.endswith(".bias"):
                param.normal_(std=0.1)
    assert hf_config_for(ours)["architectures"] == [architecture]
    hf = transformers.AutoModelForCausalLM.from_pretrained(save_hf_checkpoint(ours, tmp_path / "m"))
    tokens = torch.randint(0, 128, (1, 40))
    torch.testing.assert_close(logits(hf.eval(), tokens), logits(ours, tokens), rtol=0, atol=1e-4)


def test_loading_is_shard_by_shard_into_a_meta_built_model(tmp_path, monkeypatch) -> None:
    """Structural memory check: the model is built on the meta device, each shard's tensors are
    assigned before the next shard is read, and the parameters are the tensors read (no copy)."""
    folder = save_hf(random_hf(transformers.LlamaConfig(**SIZES)), tmp_path / "ckpt")
    built, reads = [], []
    real_open = hf_checkpoint.safe_open

    def spy_llama(**kwargs):
        model = llama(**kwargs)
        built.append(model)
        return model

    class SpyOpen:
        def __init__(self, file, **kwargs):
            self.file, self.inner = file, real_open(file, **kwargs)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def get_tensor(self, key):
            tensor = self.f.get_tensor(key)
            on_meta = sum(p.is_meta for p in built[0].parameters())
            reads.append((self.file, tensor.data_ptr(), on_meta))
            return tensor

    monkeypatch.setattr(hf_checkpoint, "llama", spy_llama)
    monkeypatch.setattr(hf_checkpoint, "safe_open", SpyOpen)
    model = load_model(folder)

    assert len(built) == 1
    n_params = len(list(model.parameters()))
    shards = list(dict.fromkeys(file for file, _, _ in reads))
    assert len(shards) > 2
    done = 0
    for shard in shards:
        in_shard = [on_meta for file, _, on_meta in reads if file == shard]
        assert set(in_shard) == {n_params - done}  # earlier shards are already in the model
        done += len(in_shard)
    assert not any(p.is_meta for p in model.parameters())
    assert {p.data_ptr() for p in model.parameters()} <= {ptr for _, ptr, _ in reads}


# --- errors --------------------------------------------------------------------------------------


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    return save_hf(random_hf(transformers.LlamaConfig(**SIZES)), tmp_path / "llama")


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def single_file(folder: Path) -> dict[str, torch.Tensor]:
    """Rewrite a sharded checkpoint as one model.safetensors; return its tensors."""
    tensors = {}
    for shard in folder.glob("model-*.safetensors"):
        tensors.update(load_file(shard))
        shard.unlink()
    (folder / hf_checkpoint.INDEX_FILE).unlink()
    save_file(tensors, folder / "model.safetensors")
    return tensors


def test_missing_shard(llama_dir: Path) -> None:
    shard = sorted(llama_dir.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"names shard '{shard.name}', which is missing"):
        load_model(llama_dir)


def test_shape_mismatch_names_the_tensor(llama_dir: Path) -> None:
    edit_config(llama_dir, intermediate_size=80)
    with pytest.raises(
        CheckpointError,
        match=r"tensor 'model\.layers\.\d\.mlp\.\w+_proj\.weight' has shape \(\d+, \d+\) but"
        r" config.json implies",
    ):
        load_model(llama_dir)


def test_unsupported_architecture_names_it_and_the_supported_ones(llama_dir: Path) -> None:
    edit_config(llama_dir, architectures=["Gemma2ForCausalLM"], model_type="gemma2")
    with pytest.raises(CheckpointError) as error:
        load_model(llama_dir)
    message = str(error.value)
    assert "'Gemma2ForCausalLM' is not supported" in message
    assert "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM" in message
    assert "\n" not in message


def test_missing_and_unexpected_tensors(llama_dir: Path) -> None:
    tensors = single_file(llama_dir)
    save_file(
        {**tensors, "model.layers.0.extra.weight": torch.zeros(2)}, llama_dir / "model.safetensors"
    )
    with pytest.raises(
        CheckpointError, match=r"tensor 'model\.layers\.0\.extra\.weight' is not part"
    ):
        load_model(llama_dir)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, llama_dir / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"model tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing"
    ):
        load_model(llama_dir)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported for LlamaForCausalLM"),
        (
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
            "RoPE type 'yarn' is not supported; supported: default, linear, llama3",
        ),
        ({"hidden_size": None}, "required key 'hidden_size' is missing"),
        ({"dtype": "float64"}, "dtype: 'float64' is not one of"),
    ],
)
def test_config_values_we_do_not_implement_are_refused(llama_dir, changes, message) -> None:
    edit_config(llama_dir, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_model(llama_dir)


def test_short_sliding_window_is_refused_unless_max_seq_len_fits(tmp_path: Path) -> None:
    config = transformers.MistralConfig(**SIZES, sliding_window=32)
    folder = save_hf(random_hf(config), tmp_path / "mistral")
    with pytest.raises(CheckpointError, match=r"sliding_window=32 is shorter than max_seq_len=64"):
        load_model(folder)
    assert load_model(folder, max_seq_len=32).max_seq_len == 32
    edit_config(folder, sliding_window=None)
    assert load_model(folder).max_seq_len == 64


def test_missing_config_or_dir(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        load_model(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"not a checkpoint directory, nor a built-in model \(tiny\)"
    ):
        load_model(tmp_path / "nope")
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], **SIZES})
    )
    with pytest.raises(CheckpointError, match=r"has neither model\.safetensors nor"):
        load_model(tmp_path)


def test_save_refuses_non_empty_dir_and_foreign_config(llama_dir: Path, tmp_path: Path) -> None:
    model = load_model(llama_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists and is not empty"):
        save_hf_checkpoint(model, out, llama_dir)
    assert (out / "keep.txt").read_text() == "mine"
    save_hf_checkpoint(model, out, llama_dir, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    other = tmp_path / "other"
    shutil.copytree(llama_dir, other)
    edit_config(other, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="describes another model: n_layers is 3 there but 2"):
        save_hf_checkpoint(model, tmp_path / "out2", other)
    assert not (tmp_path / "out2").exists()


def test_the_training_tokenizer_goes_into_the_export(tmp_path) -> None:
    """A built-in model exported with its tokenizer is a complete checkpoint dir: a spec can
    name it as `model:` (SFT, then DPO or distillation from the result)."""
    from tunegen.runtime.models import tiny
    from tunegen.runtime.tokenizers import builtin_tokenizer, load_tokenizer

    tokenizer = builtin_tokenizer("tiny")
    out = save_hf_checkpoint(tiny(), tmp_path / "export", tokenizer=tokenizer)
    assert (out / "tokenizer.model").is_file()
    text = "Reverse the words.\nlion bed snow"
    assert load_tokenizer(out).encode(text) == tokenizer.encode(text)
    again = save_hf_checkpoint(tiny(), tmp_path / "again", out, tokenizer=load_tokenizer(out))
    assert (again / "tokenizer.model").read_bytes() == (out / "tokenizer.model").read_bytes()
