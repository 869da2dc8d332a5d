"""Float64 complex-number RoPE reference, written from the SCAIL-2 algorithm description (SCAIL_SPEC.md s.2).

It deliberately follows the released model's structure rather than ours: one complex128 polar table of
`max_position` rows per axis, per-segment grids sliced from it with the segment's shifts, the pose grid built
at full video resolution and average-pooled 2x2 (real and imaginary parts separately), and the rotation done
as a complex multiplication in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def axis_tables(head_dim: int, max_position: int = 8192, theta: float = 10000.0) -> list[torch.Tensor]:
    """complex128 [max_position, pairs] for t, h, w (Wan: d - 4 (d // 6), 2 (d // 6), 2 (d // 6) real dims)."""
    widths = [head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)]
    tables = []
    for width in widths:
        inv = 1.0 / torch.pow(theta, torch.arange(0, width, 2, dtype=torch.float64) / width)
        angles = torch.outer(torch.arange(max_position, dtype=torch.float64), inv)
        tables.append(torch.polar(torch.ones_like(angles), angles))
    return tables


def segment_grid(tables, f, h, w, shift_f, shift_h, shift_w) -> torch.Tensor:
    """complex128 [f, h, w, pairs] of rotations for a grid whose first position is (shift_f, shift_h, shift_w)."""
    return torch.cat(
        [
            tables[0][shift_f : shift_f + f].view(f, 1, 1, -1).expand(f, h, w, -1),
            tables[1][shift_h : shift_h + h].view(1, h, 1, -1).expand(f, h, w, -1),
            tables[2][shift_w : shift_w + w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    )


def pooled(grid: torch.Tensor) -> torch.Tensor:
    """2x2 average pool of a complex [f, h, w, c] grid, real and imaginary parts separately."""
    real = F.avg_pool2d(grid.real.permute(0, 3, 1, 2), kernel_size=2, stride=2).permute(0, 2, 3, 1)
    imag = F.avg_pool2d(grid.imag.permute(0, 3, 1, 2), kernel_size=2, stride=2).permute(0, 2, 3, 1)
    return torch.complex(real, imag)


def scail2_phasors(head_dim, t, h, w, num_extra=0, replace=False, with_pose=True, max_position=8192):
    """complex128 [L, pairs] for [extra refs | ref | video | pose] exactly as SCAIL-2 positions them."""
    tables = axis_tables(head_dim, max_position)
    base = 0 if replace else 1
    ref_h = 120 if replace else 0
    parts = []
    if num_extra:
        parts.append(segment_grid(tables, num_extra, h, w, 0, ref_h, 0).reshape(num_extra * h * w, -1))
    parts.append(segment_grid(tables, 1, h, w, num_extra, ref_h, 0).reshape(h * w, -1))
    parts.append(segment_grid(tables, t, h, w, base + num_extra, 0, 0).reshape(t * h * w, -1))
    if with_pose:
        pose = pooled(segment_grid(tables, t, h, w, base + num_extra, 0, 120))
        parts.append(pose.reshape(t * (h // 2) * (w // 2), -1))
    return torch.cat(parts)


def apply(x: torch.Tensor, phasors: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, D] -> float64 rotated, as complex multiplication of adjacent pairs."""
    xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * phasors[None, :, None, :]).flatten(-2)
