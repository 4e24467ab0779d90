"""Packing: best-fit-decreasing packs, the resumable pack order, the packed collate, and packed
training equal to unpacked training (losses and gradients) for every model family's shape; and
length-bucketed batches, the padding-free mode for unpacked samples."""

from __future__ import annotations

import random

import pytest
import torch

from tunegen.runtime.data.collate import IGNORE_INDEX, packed_collate, padded_collate
from tunegen.runtime.data.packing import (
    PackedDataset,
    PackSampler,
    best_fit_decreasing,
    pack_examples,
)
from tunegen.runtime.data.sampler import LengthBucketSampler, ResumableSampler
from tunegen.runtime.losses import CrossEntropyLoss
from tunegen.runtime.models.llama import (
    Documents,
    Transformer,
    attend,
    document_mask,
    document_spans,
    llama,
)

MAX_SEQ_LEN = 48

# The shapes that differ between the families the model builds (see HF_ARCHITECTURES).
SHAPES = {
    "llama": {"n_heads": 4, "n_kv_heads": 2},
    "qwen2": {"n_heads": 4, "n_kv_heads": 2, "qkv_bias": True, "tie_embeddings": True},
    "qwen3": {"n_heads": 4, "n_kv_heads": 2, "head_dim": 24, "qk_norm": True, "norm_eps": 1e-6},
    "phi3": {"n_heads": 4, "n_kv_heads": 4, "norm_eps": 1e-5},
}


def build(family: str) -> Transformer:
    torch.manual_seed(0)
    return llama(
        vocab_size=97,
        dim=64,
        n_layers=2,
        hidden_dim=96,
        max_seq_len=MAX_SEQ_LEN,
        rope_base=500.0,
        **SHAPES[family],
    ).float()


def random_documents(count: int, seed: int) -> list[dict[str, list[int]]]:
    """Documents of 2..20 tokens with a random prompt (no loss) before the response."""
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        n = rng.randint(2, 20)
        tokens = [rng.randrange(1, 97) for _ in range(n)]
        prompt = rng.randint(0, n - 1)
        documents.append({"tokens": tokens, "labels": [IGNORE_INDEX] * prompt + tokens[prompt:]})
    return documents


def random_lengths(count: int, low: int, high: int, *, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


# --- best-fit-decreasing -------------------------------------------------------------------------


def test_best_fit_decreasing_places_each_example_once_and_whole() -> None:
    lengths = random_lengths(200, 0, 30, seed=1)
    packs = best_fit_decreasing(lengths, 32)
    placed = sorted(i for pack in packs for i in pack)
    assert placed == [i for i, n in enumerate(lengths) if n > 0]  # empty examples are dropped
    assert all(sum(lengths[i] for i in pack) <= 32 for pack in packs)
    assert len(packs) <= len(pack_examples([n for n in lengths if n], 32))


def test_best_fit_decreasing_fills_the_tightest_pack() -> None:
    # 7 and 6 open two packs; 3 fits the one with 3 left (after 7), not the one with 4 left.
    assert best_fit_decreasing([6, 7, 3, 4], 10) == [[1, 2], [0, 3]]


def test_best_fit_decreasing_refuses_an_example_longer_than_a_pack() -> None:
    with pytest.raises(ValueError, match="example 1 has 11 tokens, more than 10"):
        best_fit_decreasing([3, 11], 10)


# --- the per-epoch pack order --------------------------------------------------------------------


def test_pack_order_depends_only_on_seed_and_epoch_and_resumes_by_skipping() -> None:
    lengths = random_lengths(100, 1, 40, seed=2)
    sampler = PackSampler(lengths, MAX_SEQ_LEN, seed=3)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    again = PackSampler(lengths, MAX_SEQ_LEN, seed=3)
    again.set_epoch(1, skip=5)
    assert list(again) == epochs[1][5:]
    assert len(again) == len(epochs[1]) - 5
    assert epochs[0] != epochs[1]
    assert len({len(order) for order in epochs}) == 1  # the same number of packs every epoch
    for order in epochs:  # every example exactly once per epoch
        assert sorted(i for pack in order for i in pack) == list(range(100))
    other_seed = PackSampler(lengths, MAX_SEQ_LEN, seed=4)
    assert list(other_seed) != epochs[0]


def test_packs_are_not_shuffled_when_shuffle_is_off() -> None:
    lengths = [5, 30, 12, 40, 8]
    sampler = PackSampler(lengths, MAX_SEQ_LEN, shuffle=False)
    assert list(sampler) == [tuple(p) for p in best_fit_decreasing(lengths, MAX_SEQ_LEN)]


# --- the packed collate --------------------------------------------------------------------------


def test_packed_collate_restarts_positions_and_never_crosses_a_document() -> None:
    documents = [
        {"tokens": [5, 6, 7], "labels": [-100, 6, 7]},
        {"tokens": [8, 9], "labels": [8, 9]},
    ]
    batch = packed_collate([PackedDataset(documents)[(0, 1)]], max_seq_len=8, pad_id=0)
    assert batch["tokens"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    # The first token of document 2 is not a target of document 1's last position.
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 0, 0]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 1, 1, -1, -1, -1]]


def test_no_target_of_a_packed_row_belongs_to_another_document() -> None:
    documents = random_documents(40, seed=5)
    lengths = [len(d["tokens"]) for d in documents]
    packs = [[documents[i] for i in p] for p in best_fit_decreasing(lengths, MAX_SEQ_LEN)]
    batch = packed_collate(packs, max_seq_len=MAX_SEQ_LEN, pad_id=0)
    targets = batch["labels"][:, 1:] != IGNORE_INDEX
    ids = batch["document_ids"]
    assert (ids[:, :-1] == ids[:, 1:])[targets].all()  # position t predicts t + 1 of its own doc
    trained = sum(int(t) for t in targets.sum(dim=1))
    alone = sum(sum(label != IGNORE_INDEX for label in d["labels"][1:]) for d in documents)
    assert trained == alone


def test_packed_collate_refuses_an_overfull_pack() -> None:
    documents = [{"tokens": [1] * 5, "labels": [1] * 5}] * 2
    with pytest.raises(ValueError, match="pack 0 holds more than max_seq_len=8 tokens"):
        packed_collate([documents], max_seq_len=8, pad_id=0)


# --- the model on packed rows --------------------------------------------------------------------


def test_both_attention_layouts_give_the_same_output() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([[0] * 5 + [1] * 9 + [2] * 2 + [-1] * 4, [0] * 17 + [1] * 3])
    q = torch.randn(2, 4, 20, 8, generator=generator)
    k, v = (
        torch.randn(2, 2, 20, 8, generator=generator),
        torch.randn(2, 2, 20, 8, generator=generator),
    )
    by_mask = attend(q, k, v, Documents(mask=document_mask(ids)))
    by_spans = attend(q, k, v, Documents(spans=document_spans(ids)))
    torch.testing.assert_close(by_mask, by_spans, atol=1e-6, rtol=1e-5)
    assert document_spans(ids)[0] == [(0, 5), (5, 14), (14, 16), (16, 20)]


def test_a_document_never_sees_the_one_before_it() -> None:
    model = build("llama").eval()
    documents = random_documents(2, seed=6)
    first = [t % 96 + 1 for t in documents[0]["tokens"]]
    changed = [{"tokens": first, "labels": first}, documents[1]]
    logits = []
    for pack in (documents, changed):
        batch = packed_collate([pack], max_seq_len=MAX_SEQ_LEN, pad_id=0)
        logits.append(
            model(
                batch["tokens"],
                position_ids=batch["position_ids"],
                document_ids=batch["document_ids"],
            )
        )
    start = len(documents[0]["tokens"])
    end = start + len(documents[1]["tokens"])
    torch.testing.assert_close(logits[0][0, start:end], logits[1][0, start:end], atol=0, rtol=0)
    assert not torch.allclose(logits[0][0, :start], logits[1][0, :start])


def test_the_model_gives_the_same_logits_with_the_masked_layout(monkeypatch) -> None:
    """Off CPU the model attends through one masked call; it must match the per-document one."""
    model = build("qwen3").eval()
    documents = random_documents(6, seed=8)
    batch = packed_collate([documents[:3], documents[3:]], max_seq_len=MAX_SEQ_LEN, pad_id=0)
    inputs = {"position_ids": batch["position_ids"], "document_ids": batch["document_ids"]}
    by_spans = model(batch["tokens"], **inputs)
    masked = staticmethod(lambda ids: Documents(mask=document_mask(ids)))
    monkeypatch.setattr(Documents, "of", masked)
    torch.testing.assert_close(model(batch["tokens"], **inputs), by_spans, atol=1e-5, rtol=1e-5)


def per_document_losses(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[float]:
    """The summed next-token loss of every document of every row, in pack order."""
    targets = batch["labels"][:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none"
    ).view_as(targets)
    ids = batch["document_ids"][:, :-1]
    losses = []
    for row in range(ids.shape[0]):
        for document in range(int(ids[row].max()) + 1):
            losses.append(float(per_token[row][ids[row] == document].sum().detach()))
    return losses


@pytest.mark.parametrize("family", sorted(SHAPES))
@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_packed_step_equals_the_documents_run_separately(
    family: str, checkpointing: bool
) -> None:
    documents = random_documents(12, seed=7)
    lengths = [len(d["tokens"]) for d in documents]
    packs = best_fit_decreasing(lengths, MAX_SEQ_LEN)
    assert max(len(p) for p in packs) >= 3  # the packs really hold several documents
    loss_fn = CrossEntropyLoss()

    model = build(family)
    model.model.activation_checkpointing = checkpointing
    batch = packed_collate(
        [[documents[i] for i in p] for p in packs], max_seq_len=MAX_SEQ_LEN, pad_id=0
    )
    logits = model(
        batch["tokens"], position_ids=batch["position_ids"], document_ids=batch["document_ids"]
    )
    packed_losses = per_document_losses(logits, batch)
    loss_sum, num_tokens = loss_fn(logits, batch["labels"])
    (loss_sum / num_tokens).backward()
    packed_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    alone = build(family)
    alone_losses, alone_sum, alone_tokens = [], 0.0, 0
    for index in (i for p in packs for i in p):
        tokens = torch.tensor([documents[index]["tokens"]])
        labels = torch.tensor([documents[index]["labels"]])
        loss, count = loss_fn(alone(tokens), labels)
        alone_losses.append(float(loss.detach()))
        alone_sum, alone_tokens = alone_sum + loss, alone_tokens + int(count)
    (alone_sum / alone_tokens).backward()

    assert int(num_tokens) == alone_tokens
    assert packed_losses == pytest.approx(alone_losses, abs=1e-5, rel=1e-5)
    for name, p in alone.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, atol=1e-5, rtol=1e-5, msg=name)


# --- padding-free batches of unpacked samples ----------------------------------------------------


def padding_of(order: list[int], lengths: list[int], batch_size: int) -> int:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in full)


def test_length_buckets_cut_padding_and_resume_by_skipping() -> None:
    lengths = random_lengths(1003, 1, 200, seed=9)
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=1, window=16)
    order = sampler.order()
    assert sorted(order) == list(range(1003))
    plain = ResumableSampler(1003, seed=1).order()  # the same shuffle, before bucketing
    assert padding_of(order, lengths, 8) < padding_of(plain, lengths, 8) / 4
    # The incomplete batch (dropped by drop_last) is the last window's three shortest samples.
    last_window = sorted(plain[896:], key=lambda i: -lengths[i])
    assert order[-3:] == last_window[-3:]
    resumed = LengthBucketSampler(lengths, batch_size=8, seed=1, window=16)
    resumed.set_epoch(0, skip=24)
    assert list(resumed) == order[24:]
    sampler.set_epoch(1)
    assert sampler.order() != order


def test_a_length_bucketed_batch_gives_each_sample_its_own_loss() -> None:
    model = build("qwen2").eval()
    documents = random_documents(16, seed=10)
    lengths = [len(d["tokens"]) for d in documents]
    order = LengthBucketSampler(lengths, batch_size=4, seed=2, window=4).order()
    loss_fn = CrossEntropyLoss()
    for start in range(0, 16, 4):
        batch = padded_collate([documents[i] for i in order[start : start + 4]], pad_id=0)
        logits = model(batch["tokens"])
        for row, index in enumerate(order[start : start + 4]):
            together, _ = loss_fn(logits[row : row + 1], batch["labels"][row : row + 1])
            tokens = torch.tensor([documents[index]["tokens"]])
            alone, _ = loss_fn(model(tokens), torch.tensor([documents[index]["labels"]]))
            torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
