"""Packing: fill fixed-length sequences with whole examples instead of padding each batch.

Examples are taken in dataset order and appended to the current pack while they fit in
`max_seq_len`; the next one that does not fit starts a new pack (no example is split across
packs, so every prompt stays with its response). Each pack is then padded to `max_seq_len`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["pack_examples"]


def pack_examples(lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """Indices of the examples in each pack, for examples of the given lengths.

    Every length must be at most `max_seq_len` (datasets truncate before packing).
    """
    packs: list[list[int]] = []
    filled = max_seq_len  # forces a new pack for the first example
    for index, length in enumerate(lengths):
        if length > max_seq_len:
            raise ValueError(f"example {index} has {length} tokens, more than {max_seq_len}")
        if filled + length > max_seq_len:
            packs.append([])
            filled = 0
        packs[-1].append(index)
        filled += length
    return packs
