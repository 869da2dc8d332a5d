"""Spatial tiling for VAE encode/decode: bounded memory at any resolution, with feathered blending.

The frame is cut into overlapping tiles on the latent grid (tile starts are multiples of the spatial factor
in pixels, so each tile sees the same pixel-to-latent alignment as the whole frame). Each tile is encoded
(or decoded) on its own, with all frames, and the results are blended:

    out = sum_i w_i * tile_i / sum_i w_i

where w_i is the outer product of two 1-D ramps. Along an axis a tile's weight rises linearly over the
overlap on each side that has a neighbouring tile, (j + 0.5) / overlap for j = 0 .. overlap-1, and is 1
elsewhere and on the frame border. Where two tiles overlap by exactly `overlap` the two ramps sum to one,
so the blend is a linear cross-fade; the last tile is shifted back to end on the border and may overlap
more, which the normalisation handles. Encode blends latents (ramp of `overlap / 8` latent cells); decode
blends pixels (ramp of `overlap` pixels).

Tiling is exact for a model whose receptive field fits in the overlap; the Wan VAE's does not (its middle
attention block sees the whole tile and its conv stack reaches ~200 px), so tiled results differ from
untiled ones near tile seams. docs/VAE.md gives measured differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TileConfig:
    """Tile size and overlap in pixels (multiples of the spatial factor, 0 <= overlap < size)."""

    size: int = 256
    overlap: int = 64

    def validate(self, spatial_factor: int) -> None:
        if self.size <= 0 or self.size % spatial_factor:
            raise ValueError(
                f"tile size must be a positive multiple of {spatial_factor} pixels, got {self.size}"
            )
        if self.overlap < 0 or self.overlap % spatial_factor or self.overlap >= self.size:
            raise ValueError(
                f"tile overlap must be a multiple of {spatial_factor} pixels in [0, {self.size}), got {self.overlap}"
            )


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` cells with stride `tile - overlap` covering [0, length)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile ends on the border
    return starts


def ramp(length: int, ramp_len: int, left: bool, right: bool) -> Tensor:
    """1-D blend weights [length]: linear ramps of `ramp_len` on the sides that have a neighbour."""
    weight = torch.ones(length, dtype=torch.float32)
    if ramp_len <= 0:
        return weight
    rise = (torch.arange(ramp_len, dtype=torch.float32) + 0.5) / ramp_len
    n = min(ramp_len, length)
    if left:
        weight[:n] = torch.minimum(weight[:n], rise[:n])
    if right:
        weight[length - n :] = torch.minimum(weight[length - n :], rise[:n].flip(0))
    return weight


def run_tiled(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    tile: int,
    overlap: int,
    scale_num: int,
    scale_den: int,
) -> Tensor:
    """Apply a spatially equivariant `fn` ([B, C, T, H, W] -> [B, C', T', H*num/den, W*num/den]) tile by tile.

    tile, overlap: in input cells. The output is blended with ramps of `overlap * num / den` output cells.
    """
    h, w = x.shape[-2:]
    rows = tile_starts(h, tile, overlap)
    cols = tile_starts(w, tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        return fn(x)
    out: Tensor | None = None
    norm: Tensor | None = None
    ramp_out = overlap * scale_num // scale_den
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            piece = fn(x[..., top : top + tile, left : left + tile])  # [B, C', T', th', tw']
            th, tw = piece.shape[-2:]
            wy = ramp(th, ramp_out, left=i > 0, right=i < len(rows) - 1)
            wx = ramp(tw, ramp_out, left=j > 0, right=j < len(cols) - 1)
            weight = (wy[:, None] * wx[None, :]).to(piece.device)  # [th', tw']
            if out is None:
                shape = (*piece.shape[:-2], h * scale_num // scale_den, w * scale_num // scale_den)
                out = torch.zeros(shape, dtype=torch.float32, device=piece.device)
                norm = torch.zeros(shape[-2:], dtype=torch.float32, device=piece.device)
            y0, x0 = top * scale_num // scale_den, left * scale_num // scale_den
            out[..., y0 : y0 + th, x0 : x0 + tw] += piece.float() * weight
            norm[y0 : y0 + th, x0 : x0 + tw] += weight
    assert out is not None and norm is not None
    return out / norm
