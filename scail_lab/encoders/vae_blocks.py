"""Building blocks of the Wan 2.1 causal video VAE (encoder and decoder trunks).

Shape legend: B batch, C channels, T frames (pixel or latent rate, depending on the layer), H, W spatial.
Every block takes [B, C, T, H, W] and an optional `StreamState`.

Causality and streaming: every temporal operation looks only at the current and earlier frames. A
`StreamState` carries each layer's trailing input frames from one call to the next, so a video can be fed
in chunks (the first frame alone, then groups of frames) and give the same result as one call on the whole
sequence. Without a state a call is one whole sequence that starts at frame 0.

Module attribute names (and the positions inside the `nn.Sequential`s, parameter-free layers included)
reproduce the official `Wan2.1_VAE.pth` key layout exactly, e.g. `encoder.downsamples.5.time_conv.weight`,
`decoder.upsamples.4.residual.2.weight`, `decoder.middle.1.to_qkv.bias`. Do not rename or reorder them.

Temporal resampling rules (the first frame is special, so 4k+1 pixel frames <-> k+1 latent frames):
  - `Downsample(temporal=True)`: frame 0 passes through alone; frames [0..2m] then go through a
    stride-2 kernel-3 conv with no padding (windows (0,1,2), (2,3,4), ...): 2m+1 frames -> m+1 frames.
  - `Upsample(temporal=True)`: frame 0 passes through alone; frames 1..T-1 go through a causal kernel-3
    conv (2 zero frames in front) with 2C outputs that are interleaved into two frames each:
    T frames -> 1 + 2 (T - 1) frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class StreamState:
    """Per-layer memory carried between chunks of one video (trailing frames, or a 'started' flag).

    Create a fresh state per video and per direction (encode / decode); do not share it between videos.
    """

    def __init__(self) -> None:
        self._memory: dict[int, Tensor | bool] = {}

    def get(self, layer: nn.Module) -> Tensor | bool | None:
        return self._memory.get(id(layer))

    def put(self, layer: nn.Module, value: Tensor | bool) -> None:
        self._memory[id(layer)] = value


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    assert len(out) == 3, out
    return out  # type: ignore[return-value]


def per_frame(module: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a 2-D module (or function) to every frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    b, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # [(B T), C, H, W]
    frames = module(frames)
    _, c2, h2, w2 = frames.shape
    return frames.reshape(b, t, c2, h2, w2).transpose(1, 2)  # [B, C', T, H', W']


class CausalConv3d(nn.Conv3d):
    """Conv3d that pads `2 * padding_t` frames in front only (zeros, or the previous chunk's last frames).

    Spatial padding is symmetric zero padding, as in the official layer; only time is causal.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
    ) -> None:
        pad_t, pad_h, pad_w = _triple(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=(0, pad_h, pad_w))
        self.time_pad = 2 * pad_t

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        if self.time_pad:
            prev = state.get(self) if state is not None else None
            if isinstance(prev, Tensor):
                x = torch.cat([prev.to(x.dtype), x], dim=2)  # [B, C, time_pad + T, H, W]
            else:
                x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0))  # [B, C, time_pad + T, H, W]
            if state is not None:
                state.put(self, x[:, :, -self.time_pad :].clone())
        return super().forward(x)


class RMSNorm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma, computed in >= fp32 (gamma: [C, 1, 1, 1] video or [C, 1, 1] image)."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        work = torch.promote_types(x.dtype, torch.float32)
        out = F.normalize(x.to(work), dim=1) * self.scale * self.gamma.to(work)
        return out.to(x.dtype)


class ResidualBlock(nn.Module):
    """norm-SiLU-conv3 twice plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # Indices 0..6 are part of the checkpoint key names (residual.0.gamma, residual.2.weight, ...).
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        skip = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, state) if isinstance(layer, CausalConv3d) else layer(x)
        return x + skip


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (no mixing across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # starts as identity (+ bias), as the official init

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # [(B T), C, H, W]
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 3 * c, h * w)  # [(B T), 3C, HW]
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)  # each [(B T), HW, C]
        out = F.scaled_dot_product_attention(q, k, v)  # [(B T), HW, C]
        out = self.proj(out.transpose(1, 2).reshape(b * t, c, h, w))  # [(B T), C, H, W]
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)


class _Upsample2x(nn.Module):
    """Nearest-neighbour 2x on [N, C, H, W] (half types go through fp32: not every backend has bf16 nearest)."""

    def forward(self, x: Tensor) -> Tensor:
        work = torch.promote_types(x.dtype, torch.float32)
        return F.interpolate(x.to(work), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Downsample(nn.Module):
    """Stride-2 spatial conv (pad right/bottom by one) and, if `temporal`, the stride-2 causal time conv."""

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        x = per_frame(self.resample, x)  # [B, C, T, H/2, W/2]
        if self.time_conv is None:
            return x
        prev = state.get(self) if state is not None else None
        if isinstance(prev, Tensor):
            parts = []
            seq = torch.cat([prev, x], dim=2)  # previous chunk's last frame opens the first window
        else:
            parts = [x[:, :, :1]]  # frame 0 alone becomes output frame 0
            seq = x
        assert seq.shape[2] % 2 == 1, (
            f"temporal downsample needs an odd window count, got {seq.shape[2]} frames"
        )
        if seq.shape[2] >= 3:
            parts.append(self.time_conv(seq))  # [B, C, (len - 1) / 2, h, w]
        if state is not None:
            state.put(self, x[:, :, -1:].clone())
        return torch.cat(parts, dim=2)


class Upsample(nn.Module):
    """If `temporal`, the causal time conv that doubles frames 1.. ; then nearest 2x and a conv to C/2."""

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0)) if temporal else None

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        if self.time_conv is not None:
            x = self._double_frames(x, state)
        return per_frame(self.resample, x)  # [B, C/2, T', 2H, 2W]

    def _double_frames(self, x: Tensor, state: StreamState | None) -> Tensor:
        started = state is not None and state.get(self) is not None
        parts = []
        if not started:
            parts.append(x[:, :, :1])  # frame 0 of the video is not doubled
            x = x[:, :, 1:]
            if state is not None:
                state.put(self, True)
        if x.shape[2]:
            b, c, t, h, w = x.shape
            y = self.time_conv(x, state)  # [B, 2C, T, H, W]
            y = y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5)  # [B, C, T, 2, H, W]
            parts.append(y.reshape(b, c, 2 * t, h, w))  # frames (t, first half), (t, second half), ...
        return torch.cat(parts, dim=2)


def _run(layers: nn.Sequential, x: Tensor, state: StreamState | None) -> Tensor:
    for layer in layers:
        x = layer(x, state) if isinstance(layer, (CausalConv3d, ResidualBlock, AttentionBlock)) else layer(x)
    return x


def _run_stages(layers: nn.Sequential, x: Tensor, state: StreamState | None) -> Tensor:
    for layer in layers:
        x = layer(x, state)
    return x


class Encoder3d(nn.Module):
    """Pixels [B, 3, N, H, W] -> moments [B, out_dim, 1 + (N-1)/tf, H/sf, W/sf] (tf, sf: temporal/spatial factor)."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temporal_downsample: Sequence[bool],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        stages: list[nn.Module] = []
        for level, (in_dim, width) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(num_res_blocks):
                stages.append(ResidualBlock(in_dim, width, dropout))
                in_dim = width
            if level != len(dim_mult) - 1:
                stages.append(Downsample(width, temporal=bool(temporal_downsample[level])))
        self.downsamples = nn.Sequential(*stages)
        top = dims[-1]
        self.middle = nn.Sequential(
            ResidualBlock(top, top, dropout), AttentionBlock(top), ResidualBlock(top, top, dropout)
        )
        self.head = nn.Sequential(RMSNorm(top), nn.SiLU(), CausalConv3d(top, out_dim, 3, padding=1))

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        x = self.conv1(x, state)
        x = _run_stages(self.downsamples, x, state)
        x = _run_stages(self.middle, x, state)
        return _run(self.head, x, state)


class Decoder3d(nn.Module):
    """Latents [B, z_dim, T, h, w] -> pixels [B, 3, 1 + tf (T-1), h*sf, w*sf]."""

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: Sequence[int],
        num_res_blocks: int,
        temporal_upsample: Sequence[bool],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0], dropout),
            AttentionBlock(dims[0]),
            ResidualBlock(dims[0], dims[0], dropout),
        )
        stages: list[nn.Module] = []
        for level, (in_dim, width) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if level > 0:
                in_dim //= 2  # the previous level's Upsample halves the channels
            # one more residual block per level than the encoder, as in the official decoder
            for _ in range(num_res_blocks + 1):
                stages.append(ResidualBlock(in_dim, width, dropout))
                in_dim = width
            if level != len(dim_mult) - 1:
                stages.append(Upsample(width, temporal=bool(temporal_upsample[level])))
        self.upsamples = nn.Sequential(*stages)
        last = dims[-1]
        self.head = nn.Sequential(RMSNorm(last), nn.SiLU(), CausalConv3d(last, 3, 3, padding=1))

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        x = self.conv1(x, state)
        x = _run_stages(self.middle, x, state)
        x = _run_stages(self.upsamples, x, state)
        return _run(self.head, x, state)
