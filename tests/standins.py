"""Small deterministic encoders with the real interfaces, for pipeline and training tests (test fixtures only).

PoolVAE: 4x8x8 causal compression by averaging (latent frame 0 = pixel frame 0, latent t = mean of frames
4t-3..4t), 3 colour channels copied into 16 latent channels; decode repeats back. Encode/decode are exact
inverses on piecewise-constant videos, which makes segment stitching checkable.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import Tensor


class PoolVAE:
    latent_channels, spatial_factor, temporal_factor = 16, 8, 4

    def encode(self, video: Tensor) -> Tensor:
        b, c, n, h, w = video.shape
        first, rest = video[:, :, :1], video[:, :, 1:]
        groups = rest.reshape(b, c, (n - 1) // 4, 4, h, w).mean(dim=3) if n > 1 else rest
        frames = torch.cat([first, groups], dim=2)  # [B, 3, T, H, W]
        pooled = F.avg_pool3d(frames, kernel_size=(1, 8, 8))
        return torch.cat([pooled] * 5 + [pooled[:, :1]], dim=1)  # [B, 16, T, H/8, W/8]

    def decode(self, latents: Tensor) -> Tensor:
        rgb = latents[:, :3]
        up = F.interpolate(rgb, scale_factor=(1, 8, 8), mode="nearest")
        first, rest = up[:, :, :1], up[:, :, 1:]
        return torch.cat([first, rest.repeat_interleave(4, dim=2)], dim=2).clamp(-1, 1)


class HashTextEncoder:
    """One deterministic vector per word; '' gives a single zero token."""

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim

    def encode(self, texts: list[str]) -> list[Tensor]:
        out = []
        for text in texts:
            words = text.split() or [""]
            rows = []
            for word in words:
                seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
                rows.append(
                    torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
                    if word
                    else torch.zeros(self.dim)
                )
            out.append(torch.stack(rows))
        return out


class PoolImageEncoder:
    """[B, 3, H, W] -> [B, 4, dim]: 2x2 pooled colours, tiled to `dim`."""

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim

    def encode(self, images: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(images, 2).flatten(2).transpose(1, 2)  # [B, 4, 3]
        return pooled.repeat(1, 1, self.dim // 3 + 1)[:, :, : self.dim]
