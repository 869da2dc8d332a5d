"""Token-sequence helpers shared by every layer (the one implementation of text padding)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def pad_tokens(sequences: Sequence[Tensor], length: int | None = None) -> Tensor:
    """[L_i, D] sequences -> zero-padded [B, length or max L_i, D] (SCAIL-2 zero-pads text to text_len)."""
    if not len(sequences):
        raise ValueError("pad_tokens needs at least one sequence")
    longest = max(s.shape[0] for s in sequences)
    length = max(1, longest) if length is None else length
    if longest > length:
        raise ValueError(f"a sequence of {longest} tokens does not fit in {length}")
    first = sequences[0]
    out = first.new_zeros(len(sequences), length, first.shape[-1])
    for i, s in enumerate(sequences):
        out[i, : s.shape[0]] = s
    return out
