"""`tunegen data`: see the training data as the model will, before spending compute on it.

The dataset is built exactly as the recipe builds it: the config's `tokenizer` and `dataset`
sections are instantiated by the same runtime code (`instantiate(cfg.dataset, tokenizer=...)`), so
the preview, the statistics and the export describe the very token ids and labels the recipe's
dataloader yields. No model weights are loaded.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from tunegen.compiler.cli.data_stats import DatasetStats, dataset_stats, item_sequences
from tunegen.compiler.pipeline import Compiled, compile_spec
from tunegen.compiler.write import write_outputs
from tunegen.runtime.config import (
    apply_overrides,
    instantiate,
    load_config,
    resolve_config_paths,
)
from tunegen.runtime.data.collate import IGNORE_INDEX
from tunegen.runtime.data.packing import PackSampler
from tunegen.runtime.errors import ConfigError, TunegenError
from tunegen.runtime.tokenizers.base import Tokenizer

__all__ = [
    "DataView",
    "build_data_view",
    "compiled_config",
    "export_jsonl",
    "format_stats",
    "render_packs",
    "render_sample",
    "token_pieces",
]

# Tokens of context decoded before a token to find its own text (enough for multi-byte
# characters split over byte tokens, and for sentencepiece's leading-space rule).
_CONTEXT = 8


@dataclass
class DataView:
    """The recipe's tokenizer and dataset, and the config they came from."""

    cfg: DictConfig
    tokenizer: Tokenizer
    dataset: Dataset
    source: str

    @property
    def batch_size(self) -> int:
        return int(self.cfg.dataloader.batch_size)


def load_data_config(path: Path, overrides: Sequence[str], *, is_spec: bool) -> DictConfig:
    """The config the recipe would run with: a spec is compiled in memory first."""
    cfg = compiled_config(compile_spec(path)) if is_spec else load_config(path)
    return apply_overrides(cfg, overrides)


def compiled_config(compiled: Compiled) -> DictConfig:
    """The config a compiled spec would write, read as `load_config` would read it from there
    (its paths, relative to the config's folder, resolved)."""
    cfg = OmegaConf.create(compiled.rendered.config)
    return resolve_config_paths(cfg, compiled.config_path.parent)


def build_data_view(cfg: DictConfig) -> DataView:
    """Instantiate the tokenizer and dataset as the recipe's `setup()` does."""
    for section in ("tokenizer", "dataset", "dataloader"):
        if section not in cfg:
            raise ConfigError(f"config has no '{section}' section")
    tokenizer = instantiate(cfg.tokenizer)
    dataset = instantiate(cfg.dataset, tokenizer=tokenizer)
    source = str(cfg.dataset.get("source", cfg.dataset.get("_component_")))
    return DataView(cfg=cfg, tokenizer=tokenizer, dataset=dataset, source=source)


def stats_of(view: DataView) -> DatasetStats:
    try:
        return dataset_stats(view.dataset, batch_size=view.batch_size)
    except ValueError as e:
        raise TunegenError(f"dataset: {e}") from e


# -- statistics ----------------------------------------------------------------------------------


def format_stats(stats: DatasetStats, *, source: str) -> str:
    """The statistics as a compact table, one row per aspect."""
    rows = [
        ("samples", _samples_row(stats)),
        (
            "length",
            f"min {stats.length_min:,} / median {stats.length_median:,.0f} / "
            f"p95 {stats.length_p95:,.0f} / max {stats.length_max:,} tokens "
            f"({stats.tokens:,} in all)",
        ),
        (
            "loss",
            f"{stats.loss_share:.1%} of tokens carry loss ({stats.loss_tokens:,} of {stats.tokens:,})",
        ),
    ]
    if stats.truncated_samples is not None:
        rows.append(
            (
                "truncated",
                f"{stats.truncated_samples:,} samples ({stats.truncated_samples / stats.samples:.1%})"
                f" cut to max_seq_len={stats.max_seq_len}, {stats.truncated_tokens:,} tokens lost",
            )
        )
    rows.append(
        (
            "padding",
            f"{stats.padding_share:.1%} of compute is padding at batch size {stats.batch_size} "
            f"({stats.batches:,} batches, dataset order)",
        )
    )
    if stats.packs is not None:
        rows.append(
            (
                "packed",
                f"{stats.packed_padding_share:.1%} padding if packed into {stats.packs:,} "
                f"sequences of {stats.max_seq_len} tokens",
            )
        )
    for record in stats.dropped_records:
        where = f"line {record['line']}" if record["line"] is not None else "a record"
        rows.append(("dropped", f"{where}: {record['reason']}"))
    if stats.dropped > len(stats.dropped_records):
        rows.append(("", f"... and {stats.dropped - len(stats.dropped_records):,} more"))
    width = max(len(name) for name, _ in rows)
    lines = [f"data: {source}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def _samples_row(stats: DatasetStats) -> str:
    records = stats.samples + stats.dropped
    return f"{stats.samples:,} of {records:,} records ({stats.dropped:,} dropped)"


# -- preview -------------------------------------------------------------------------------------


def token_pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token contributes, special tokens by name.

    A token's text is what decoding it adds to the tokens before it: decoding tokens one by one
    would lose sentencepiece's spaces and split multi-byte characters.
    """
    pieces = []
    for i in range(len(ids)):
        window = ids[max(0, i - _CONTEXT) : i]
        before = tokenizer.decode(window, skip_special_tokens=False)
        after = tokenizer.decode([*window, ids[i]], skip_special_tokens=False)
        pieces.append(after[_common_prefix(before, after) :])
    return pieces


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


class Style:
    """How tokens are marked: ANSI colours on a terminal, brackets and bars otherwise."""

    def __init__(self, color: bool) -> None:
        self.color = color

    @property
    def legend(self) -> str:
        if self.color:
            return (
                "legend: \x1b[1;32mgreen\x1b[0m tokens carry loss, grey ones do not; "
                "underline alternates per token; \x1b[35m<special>\x1b[0m tokens by name"
            )
        return (
            "legend: tokens separated by |, [bracketed] tokens carry loss, "
            "␣ space, ↵ newline, ∅ a token that adds no text"
        )

    def token(self, piece: str, *, loss: bool, special: bool, index: int) -> str:
        text = _visible(piece, color=self.color)
        if not self.color:
            return f"[{text}]" if loss else text
        code = "35" if special else ("1;32" if loss else "90")
        if index % 2:
            code += ";4"
        return f"\x1b[{code}m{text}\x1b[0m"

    @property
    def separator(self) -> str:
        return "" if self.color else "|"

    def document_break(self, number: int, line: int | None) -> str:
        where = f" (line {line})" if line is not None else ""
        text = f" ‖ document {number}{where} ‖ "
        return f"\x1b[1;36m{text}\x1b[0m" if self.color else text


def _visible(piece: str, *, color: bool) -> str:
    """Spaces and newlines made visible (colour shows token edges, so spaces stay plain there)."""
    if color:
        return piece.replace("\n", "↵")
    return piece.replace(" ", "␣").replace("\t", "⇥").replace("\n", "↵")


def _render_tokens(
    tokenizer: Tokenizer, tokens: Sequence[int], labels: Sequence[int], style: Style
) -> str:
    """The tokens in a row; after a token that ends in a newline the row breaks, as the text does."""
    special_ids = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    out = []
    for i, (token, label, piece) in enumerate(
        zip(tokens, labels, token_pieces(tokenizer, tokens), strict=True)
    ):
        marked = style.token(
            piece or "∅",  # a token with no text of its own, e.g. sentencepiece's lone "▁"
            loss=label != IGNORE_INDEX,
            special=token in special_ids,
            index=i,
        )
        last = i == len(tokens) - 1
        out.append(
            marked + ("" if last else style.separator) + ("\n" if piece.endswith("\n") else "")
        )
    return "".join(out)


def render_sample(view: DataView, index: int, style: Style) -> str:
    """One sample: a header with its counts, then its tokens with the loss-carrying ones marked.

    A preference pair shows its chosen and its rejected sequence, one after the other.
    """
    line = _line_of(view.dataset, index)
    where = f", line {line}" if line is not None else ""
    blocks = []
    for name, (tokens, labels) in item_sequences(view.dataset[index]).items():
        loss = sum(1 for label in labels if label != IGNORE_INDEX)
        header = (
            f"── sample {index + 1} of {len(view.dataset):,}{where}{f' ({name})' if name else ''}:"
            f" {len(tokens)} tokens, {loss} carry loss"
        )
        blocks.append(f"{header}\n{_render_tokens(view.tokenizer, tokens, labels, style)}")
    return "\n".join(blocks)


def render_packs(view: DataView, count: int, style: Style) -> list[str]:
    """The first `count` packed rows of the first epoch, exactly as `data.packed` training reads
    them (the same `PackSampler`, seed and shuffle), with document breaks.

    A document's first token is shown without loss: in a packed row it is never a target (the
    previous document's last position would predict it), and alone it never is either.
    """
    max_seq_len = getattr(view.dataset, "max_seq_len", None)
    if max_seq_len is None:
        raise TunegenError("--packed needs a dataset with a max_seq_len")
    if "tokens" not in view.dataset[0]:
        raise TunegenError("--packed: preference pairs are not packed (DPO compares whole rows)")
    lengths = [len(view.dataset[i]["tokens"]) for i in range(len(view.dataset))]
    sampler = PackSampler(
        lengths,
        max_seq_len,
        shuffle=bool(OmegaConf.select(view.cfg, "dataloader.shuffle", default=True)),
        seed=int(OmegaConf.select(view.cfg, "environment.seed", default=0)),
    )
    packs = list(sampler)  # epoch 0, the first the run trains
    if count > len(packs):
        raise TunegenError(f"--show: there are only {len(packs)} packed sequences")
    rendered = []
    for pack_index, members in enumerate(packs[:count]):
        used = sum(lengths[i] for i in members)
        parts = []
        for number, index in enumerate(members, start=1):
            item = view.dataset[index]
            if number > 1:
                parts.append(style.document_break(number, _line_of(view.dataset, index)))
            labels = [IGNORE_INDEX, *item["labels"][1:]]
            parts.append(_render_tokens(view.tokenizer, item["tokens"], labels, style))
        header = (
            f"── packed sequence {pack_index + 1} of {len(packs):,} (training order, epoch 1): "
            f"{len(members)} documents, "
            f"{used} of {max_seq_len} tokens ({max_seq_len - used} padding)"
        )
        rendered.append(header + "\n" + "".join(parts))
    return rendered


def _line_of(dataset: Dataset, index: int) -> int | None:
    lines = getattr(dataset, "lines", None)
    return lines[index] if lines is not None else None


def use_color() -> bool:
    """Colour on a terminal, unless NO_COLOR is set; FORCE_COLOR turns it on anywhere."""
    if os.environ.get("FORCE_COLOR"):
        return True
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


# -- export --------------------------------------------------------------------------------------


def export_rows(dataset: Dataset) -> Iterator[str]:
    """One JSON line per sample; a preference pair's keys are prefixed `chosen_` / `rejected_`."""
    for index in range(len(dataset)):
        row = {}
        for name, (tokens, labels) in item_sequences(dataset[index]).items():
            prefix = f"{name}_" if name else ""
            row[f"{prefix}input_ids"], row[f"{prefix}labels"] = list(tokens), list(labels)
        yield json.dumps(row, separators=(",", ":"))


def export_jsonl(dataset: Dataset, path: Path, *, force: bool = False) -> int:
    """Write one `{"input_ids", "labels"}` object per sample, in dataset order; return the count.

    `labels` is -100 wherever no loss is taken, as in the recipe's loss.
    """
    if path.suffix != ".jsonl":
        raise TunegenError(f"--export {path}: the file name must end in .jsonl")
    rows = list(export_rows(dataset))
    write_outputs({path: "\n".join(rows) + "\n"}, force=force, editable=False)
    return len(rows)
