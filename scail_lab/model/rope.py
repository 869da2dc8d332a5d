"""3-axis rotary position embedding over a segmented token layout, with swappable variants.

A head of size D rotates D/2 adjacent channel pairs (x[2i], x[2i+1]) - the Wan convention; the half-split
convention would silently break official weights. The pairs are split into temporal / height / width groups of
D/2 - 2 (D//6), D//6 and D//6 pairs (22/21/21 for D = 128), each with its own inverse frequencies
theta^(-2k / n_axis) where n_axis is the group's real width.

Angles are computed in float64 from explicit positions, and the per-token tables (the real and imaginary parts
of each pair's phasor) are stored in fp32, built once per forward and shared by all layers. Nothing is kept as
module state, so meta-device construction, `.to(dtype)` and checkpoint loading cannot corrupt the tables (the
official model keeps a complex128 attribute outside the state dict and recomputes the products in float64 in
every layer).

Variants (how the half-resolution pose tokens and the mode offsets are placed):
  ScailRoPE     (`scail2`)   mode offsets; a pose token carries the MEAN phasor of the 2x2 video positions it
                             covers. That mean is not unit-norm (|cos(w/2)| per axis) - intentional, it is what
                             the released weights were trained with. Do not "fix" it.
  MidpointRoPE  (`midpoint`) mode offsets; a pose token sits at the centre of its block (half-integer
                             positions), unit-norm.
  SharedRoPE    (`shared`)   no mode offsets: every segment on one grid (temporal stacking of extra refs kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from scail_lab.types import MotionMode, Segment, TokenLayout


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (t, h, w) for a head size; matches Wan's d - 4 (d // 6), 2 (d // 6), 2 (d // 6)."""
    if head_dim % 2 != 0 or head_dim < 6:
        raise ValueError(f"RoPE needs an even head_dim >= 6, got {head_dim}")
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def inverse_frequencies(num_pairs: int, theta: float) -> Tensor:
    """float64 [num_pairs]: theta^(-2k / (2 num_pairs))."""
    width = 2 * num_pairs
    return 1.0 / torch.pow(theta, torch.arange(0, width, 2, dtype=torch.float64) / width)


@dataclass(frozen=True)
class RopeTables:
    """Per-token phasors of the channel pairs: complex64 [B or 1, L, 1, D/2] (heads broadcast).

    The rotation is a complex64 multiply, i.e. fp32 arithmetic on (re, im) pairs: on CPU it measured ~3x faster
    than the same product spelled with real tensors (stack/flip + multiply-adds), see docs/PERFORMANCE.md.
    """

    phasor: Tensor

    def rotate(self, x: Tensor) -> Tensor:
        """x: [B, L, heads, D] -> fp32 [B, L, heads, D]; pair (x[2i], x[2i+1]) times phasor i. x is not modified."""
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [B, L, heads, D/2]
        return torch.view_as_real(pairs * self.phasor).flatten(-2)

    def rotate_(self, x: Tensor) -> Tensor:
        """As `rotate`, but reuses x's storage when x is contiguous fp32 (the model's q and k are fresh tensors).

        Writing in place skips a fresh output allocation whose first touch dominated the cost: ~10x faster on CPU
        at 10k tokens x 40 heads (docs/PERFORMANCE.md). Autograd handles it (q and k are not saved by their producers).
        """
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        torch.view_as_complex(x.view(*x.shape[:-1], -1, 2)).mul_(self.phasor)
        return x

    @staticmethod
    def from_phasors(re: Tensor, im: Tensor) -> RopeTables:
        """re, im: [B, L, D/2] (any float dtype) -> complex64 tables with a heads axis."""
        return RopeTables(torch.complex(re.float(), im.float()).unsqueeze(2).contiguous())


class ScailRoPE:
    """`scail2`: mode-specific segment offsets; strided (pose) tokens take the block-mean phasor."""

    name = "scail2"
    use_mode_offsets = True

    def __init__(self, theta: float = 10000.0, max_position: int = 8192) -> None:
        if theta <= 1.0:
            raise ValueError(f"RoPE theta must be > 1, got {theta}")
        if max_position < 1:
            raise ValueError(f"RoPE max_position must be positive, got {max_position}")
        self.theta = float(theta)
        self.max_position = int(max_position)

    # --- the one thing variants change: phasors of strided (pose) tokens along h or w ------------
    def strided_axis(self, start: int, count: int, stride: int, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
        """Mean phasor of the `stride` full-resolution positions each token covers. float64 [count, n]."""
        positions = start + torch.arange(count * stride, dtype=torch.float64)
        angles = torch.outer(positions, inv_freq).view(count, stride, -1)
        return torch.cos(angles).mean(dim=1), torch.sin(angles).mean(dim=1)

    # --- shared machinery ------------------------------------------------------------------------
    def _axis(self, start: int, count: int, stride: int, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
        last = start + count * stride - 1
        if last >= self.max_position:
            raise ValueError(
                f"RoPE position {last} exceeds max_position {self.max_position}; the input is too long/large "
                f"for this RoPE table (raise rope.max_position if the checkpoint allows it)"
            )
        if stride == 1:
            angles = torch.outer(start + torch.arange(count, dtype=torch.float64), inv_freq)
            return torch.cos(angles), torch.sin(angles)
        return self.strided_axis(start, count, stride, inv_freq)

    def _segment(
        self, segment: Segment, mode: MotionMode, num_extra: int, inv: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """float64 (re, im) [num_tokens, D/2] for one segment, tokens in (t, h, w) order."""
        t, h, w = segment.grid
        t0, h0, w0 = mode.offset(segment.name) if self.use_mode_offsets else (0, 0, 0)
        if segment.name != "extra_ref":
            t0 += num_extra  # extra refs take t = 0..N-1 and push every later segment by N
        parts = (
            self._axis(t0, t, 1, inv[0]),
            self._axis(h0, h, segment.stride, inv[1]),
            self._axis(w0, w, segment.stride, inv[2]),
        )
        shapes = ((t, 1, 1), (1, h, 1), (1, 1, w))
        re = torch.cat(
            [p[0].view(*s, -1).expand(t, h, w, -1) for p, s in zip(parts, shapes, strict=True)], dim=-1
        )
        im = torch.cat(
            [p[1].view(*s, -1).expand(t, h, w, -1) for p, s in zip(parts, shapes, strict=True)], dim=-1
        )
        return re.reshape(t * h * w, -1), im.reshape(t * h * w, -1)

    def phasors(self, layout: TokenLayout, mode: MotionMode, head_dim: int) -> tuple[Tensor, Tensor]:
        """float64 (re, im) [L, D/2] for the whole layout under one motion mode."""
        inv = tuple(inverse_frequencies(n, self.theta) for n in axis_pairs(head_dim))
        num_extra = layout.num_frames("extra_ref")
        pieces = [self._segment(seg, mode, num_extra, inv) for seg in layout.segments]
        return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])

    def tables(
        self,
        layout: TokenLayout,
        modes: Sequence[MotionMode],
        head_dim: int,
        device: torch.device | None = None,
    ) -> RopeTables:
        """Tables for a batch: one mode per sample; [1, L, ...] when every sample shares the mode. Cached per
        (layout, modes, head_dim, device): a sampling run asks for the same tables at every step and layer, a
        training run for a handful of bucket layouts, so the float64 host work runs once per layout."""
        key = (layout, tuple(modes), int(head_dim), str(device))
        cache = self.__dict__.setdefault("_table_cache", {})
        if key in cache:
            return cache[key]
        tables = self._build_tables(layout, modes, head_dim, device)
        if len(cache) >= 16:  # a bounded cache: the oldest layout goes
            cache.pop(next(iter(cache)))
        cache[key] = tables
        return tables

    def _build_tables(self, layout: TokenLayout, modes: Sequence[MotionMode], head_dim: int,
                      device: torch.device | None) -> RopeTables:  # fmt: skip
        unique = list(dict.fromkeys(modes))
        per_mode = [self.phasors(layout, m, head_dim) for m in unique]
        re = torch.stack([p[0] for p in per_mode])  # [M, L, D/2]
        im = torch.stack([p[1] for p in per_mode])
        if len(unique) > 1:
            index = torch.tensor([unique.index(m) for m in modes])
            re, im = re[index], im[index]  # [B, L, D/2]
        return RopeTables.from_phasors(re.to(device), im.to(device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(theta={self.theta}, max_position={self.max_position})"


class MidpointRoPE(ScailRoPE):
    """`midpoint`: strided tokens sit at the centre of the positions they cover (unit-norm phasors)."""

    name = "midpoint"

    def strided_axis(self, start: int, count: int, stride: int, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
        positions = start + stride * torch.arange(count, dtype=torch.float64) + (stride - 1) / 2.0
        angles = torch.outer(positions, inv_freq)
        return torch.cos(angles), torch.sin(angles)


class SharedRoPE(ScailRoPE):
    """`shared`: ignore the mode offsets; all segments share one grid (pose still block-mean pooled)."""

    name = "shared"
    use_mode_offsets = False
