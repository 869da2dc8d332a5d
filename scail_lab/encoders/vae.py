"""The Wan 2.1 causal video VAE (loads the official `Wan2.1_VAE.pth` strictly) and `load_vae`.

Shape legend: B batch, N pixel frames (4k + 1), T = k + 1 latent frames, H, W pixels (multiples of 8),
h = H/8, w = W/8, C = z_dim latent channels (16).

    encode: video [B, 3, N, H, W] in [-1, 1] -> latents [B, C, T, h, w], z = (mu - mean) / std
            (posterior mean, no sampling; mean/std are the 16 official per-channel constants)
    decode: latents [B, C, T, h, w] -> video [B, 3, N, H, W], x = D(z * std + mean) clamped to [-1, 1]

Chunked encode feeds frame 0 alone, then groups of 4 frames, through the encoder with a `StreamState`
(each causal layer keeps its last input frames). Cached decode feeds one latent frame at a time. Both give
the same result as one whole-sequence pass (`chunked=False`, more memory); the tests check it. Spatial
tiling (`tile=TileConfig(...)`) bounds memory at high resolution; see `vae_tiling.py` for the blending.

The state dict of `WanVAE()` has exactly the official 194 keys (`encoder.*`, `conv1.*`, `conv2.*`,
`decoder.*`); the mean/std constants are not part of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from scail_lab.encoders.vae_base import (
    check_latents,
    check_video,
    freeze,
    load_checked,
    read_state_dict,
    resolve_dtype,
)
from scail_lab.encoders.vae_blocks import CausalConv3d, Decoder3d, Encoder3d, StreamState
from scail_lab.encoders.vae_tiling import TileConfig, run_tiled

if TYPE_CHECKING:
    from scail_lab.encoders.light_vae import LightVAE

logger = logging.getLogger(__name__)

# Per-channel statistics of the Wan 2.1 VAE posterior mean (official constants, 16 channels).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

_DIFFUSERS_HINT = (
    "; the keys look like a diffusers AutoencoderKLWan checkpoint (encoder.conv_in, ...), "
    "but this loader expects the original Wan2.1_VAE.pth layout (encoder.conv1, encoder.downsamples.N, ...)"
)


class WanVAE(nn.Module):
    """Wan 2.1 causal 3-D VAE: 4x8x8 compression, `z_dim` latent channels, official key layout.

    Args:
        dim: base width (96 official; 8 makes a tiny test model with the same key structure).
        z_dim: latent channels (16).
        dim_mult: width multipliers per level; len(dim_mult) - 1 spatial 2x downsamples.
        num_res_blocks: residual blocks per encoder level (the decoder uses one more).
        temporal_downsample: per downsample, whether it also halves time (official [False, True, True]).
        dropout: dropout inside residual blocks (0 for inference).
        latents_mean, latents_std: per-channel normalisation; default the official constants when
            z_dim == 16, else 0 / 1.
        chunked: stream encode (1, 4, 4, ... frames) and decode (1 latent frame at a time) through the
            causal caches; False runs each whole sequence at once (same numbers, more memory).
        tile: spatial tiling for encode and decode, or None.
    """

    def __init__(
        self,
        *,
        dim: int = 96,
        z_dim: int = 16,
        dim_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temporal_downsample: Sequence[bool] = (False, True, True),
        dropout: float = 0.0,
        latents_mean: Sequence[float] | None = None,
        latents_std: Sequence[float] | None = None,
        chunked: bool = True,
        tile: TileConfig | None = None,
    ) -> None:
        super().__init__()
        if dim <= 0 or z_dim <= 0 or num_res_blocks < 1:
            raise ValueError(
                f"WanVAE needs dim, z_dim > 0 and num_res_blocks >= 1, got {dim}, {z_dim}, {num_res_blocks}"
            )
        if len(dim_mult) < 1 or len(temporal_downsample) != len(dim_mult) - 1:
            raise ValueError(
                f"WanVAE temporal_downsample needs one flag per downsample (len(dim_mult) - 1 = {len(dim_mult) - 1}), "
                f"got {list(temporal_downsample)}"
            )
        self.latent_channels = int(z_dim)
        self.spatial_factor = 2 ** (len(dim_mult) - 1)
        self.temporal_factor = 2 ** sum(bool(t) for t in temporal_downsample)
        self.chunked = bool(chunked)
        self.tile = tile
        if tile is not None:
            tile.validate(self.spatial_factor)
        self.config: dict[str, Any] = dict(
            dim=dim, z_dim=z_dim, dim_mult=list(dim_mult), num_res_blocks=num_res_blocks,
            temporal_downsample=[bool(t) for t in temporal_downsample], dropout=dropout,
        )  # fmt: skip
        default_stats = z_dim == len(WAN21_LATENTS_MEAN)
        self.latents_mean = self._stats(
            latents_mean, WAN21_LATENTS_MEAN if default_stats else (0.0,) * z_dim, "mean"
        )
        self.latents_std = self._stats(
            latents_std, WAN21_LATENTS_STD if default_stats else (1.0,) * z_dim, "std"
        )
        if min(self.latents_std) <= 0:
            raise ValueError(f"WanVAE latents_std must be positive, got {list(self.latents_std)}")

        temporal_upsample = list(temporal_downsample)[::-1]
        self.encoder = Encoder3d(dim, 2 * z_dim, dim_mult, num_res_blocks, temporal_downsample, dropout)
        self.conv1 = CausalConv3d(2 * z_dim, 2 * z_dim, 1)  # moments: (mu, log_var)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, temporal_upsample, dropout)

    def _stats(
        self, values: Sequence[float] | None, default: Sequence[float], name: str
    ) -> tuple[float, ...]:
        values = tuple(float(v) for v in (default if values is None else values))
        if len(values) != self.latent_channels:
            raise ValueError(f"WanVAE latents_{name} needs {self.latent_channels} values, got {len(values)}")
        return values

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    def _channel_stats(self, ref: Tensor) -> tuple[Tensor, Tensor]:
        """mean, std [1, C, 1, 1, 1] in fp32 (fp64 for an fp64 model) on ref's device.

        Kept as Python floats, out of the state dict and of `.to(bfloat16)`, so they never lose precision.
        """
        shape = (1, self.latent_channels, 1, 1, 1)
        dtype = torch.promote_types(self.dtype, torch.float32)
        mean = torch.tensor(self.latents_mean, dtype=dtype, device=ref.device).view(shape)
        std = torch.tensor(self.latents_std, dtype=dtype, device=ref.device).view(shape)
        return mean, std

    # ------------------------------------------------------------------ encode

    def encode(self, video: Tensor) -> Tensor:
        """[B, 3, N, H, W] in [-1, 1], N = 4k + 1 -> normalised posterior mean [B, C, k + 1, H/8, W/8].

        Outputs are fp32 for fp32/bf16 models (fp64 for an fp64 model).
        """
        check_video(video, self.spatial_factor, self.temporal_factor)
        x = video.to(device=self.device, dtype=self.dtype)
        if self.tile is not None:
            sf = self.spatial_factor
            mu = run_tiled(self.encode_mean, x, self.tile.size, self.tile.overlap, 1, sf)
        else:
            mu = self.encode_mean(x)
        mean, std = self._channel_stats(mu)
        return (mu.to(mean.dtype) - mean) / std

    def encode_mean(self, x: Tensor) -> Tensor:
        """Unnormalised posterior mean mu [B, C, T, h, w] of checked pixels [B, 3, N, H, W] (model dtype)."""
        if self.chunked:
            state = StreamState()
            tf = self.temporal_factor
            # frame 0 alone, then groups of tf frames: latent t sees pixel frames <= tf * t only
            chunks = [x[:, :, :1]] + [x[:, :, i : i + tf] for i in range(1, x.shape[2], tf)]
            feats = torch.cat([self.encoder(chunk, state) for chunk in chunks], dim=2)  # [B, 2C, T, h, w]
        else:
            feats = self.encoder(x)  # [B, 2C, T, h, w]
        c = self.latent_channels
        # only the mu half of the 1x1x1 moments conv is needed (the log-variance is never used)
        return F.conv3d(feats, self.conv1.weight[:c], self.conv1.bias[:c])

    # ------------------------------------------------------------------ decode

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, C, T, h, w] -> pixels [B, 3, 4 (T - 1) + 1, 8h, 8w] in [-1, 1] (fp32, fp64 for fp64)."""
        check_latents(latents, self.latent_channels)
        mean, std = self._channel_stats(latents)
        z = (latents.to(device=self.device, dtype=mean.dtype) * std + mean).to(self.dtype)
        if self.tile is not None:
            sf = self.spatial_factor
            video = run_tiled(self.decode_raw, z, self.tile.size // sf, self.tile.overlap // sf, sf, 1)
        else:
            video = self.decode_raw(z)
        return video.to(mean.dtype).clamp_(-1.0, 1.0)

    def decode_raw(self, z: Tensor) -> Tensor:
        """Unnormalised latents [B, C, T, h, w] (model dtype) -> unclamped pixels [B, 3, N, H, W]."""
        x = self.conv2(z)
        if not self.chunked:
            return self.decoder(x)
        state = StreamState()
        frames = [self.decoder(x[:, :, t : t + 1], state) for t in range(x.shape[2])]  # 1, then 4 frames each
        return torch.cat(frames, dim=2)

    def forward(self, video: Tensor) -> Tensor:
        """Reconstruction decode(encode(video)), [B, 3, N, H, W] -> [B, 3, N, H, W]."""
        return self.decode(self.encode(video))

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        frozen: bool = True,
        **kwargs: Any,
    ) -> WanVAE:
        """Build on the meta device and load `path` (e.g. the official Wan2.1_VAE.pth) with strict key names."""
        torch_dtype = resolve_dtype(dtype)
        state = read_state_dict(path)
        with torch.device("meta"):
            model = cls(**kwargs)
        hint = _DIFFUSERS_HINT if any(k.startswith("encoder.conv_in") for k in state) else ""
        load_checked(model, state, repr(str(path)), hint)
        model = model.to(device=device, dtype=torch_dtype)
        logger.info("loaded Wan VAE from %s (%d tensors, %s, %s)", path, len(state), torch_dtype, device)
        return freeze(model) if frozen else model


def load_vae(
    kind: str,
    path: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    frozen: bool = True,
    chunked: bool = True,
    tile_size: int | None = None,
    tile_overlap: int = 64,
    arch: Mapping[str, Any] | None = None,
) -> WanVAE | LightVAE:
    """Build a `VideoAutoencoder`. Hydra nodes: configs/vae/wan21.yaml, configs/vae/light.yaml.

    kind: "wan21" (official Wan 2.1 VAE; `path` to Wan2.1_VAE.pth) or "light" (the CPU VAE; `path` to the
        .safetensors written by tools/fit_light_vae.py, with its .json config next to it).
    path: checkpoint, or None for random weights (smoke runs; a warning is logged).
    dtype, device: parameter dtype ("float32", "bfloat16", ...) and device; outputs are always fp32.
    frozen: eval() and requires_grad False (the usual case for an encoder).
    chunked, tile_size, tile_overlap: Wan VAE memory options (tile sizes in pixels, multiples of 8).
    arch: constructor overrides, e.g. {"dim": 8} for a tiny Wan VAE, or light VAE widths when path is None.
    """
    arch = dict(arch or {})
    if kind == "wan21":
        tile = TileConfig(tile_size, tile_overlap) if tile_size is not None else None
        options = dict(chunked=chunked, tile=tile, **arch)
        if path is not None:
            return WanVAE.from_checkpoint(
                path, dtype=dtype, device=device, frozen=frozen, **_checked(WanVAE, options)
            )
        logger.warning("load_vae('wan21') without a checkpoint path: random weights")
        model = WanVAE(**_checked(WanVAE, options)).to(device=device, dtype=resolve_dtype(dtype))
        return freeze(model) if frozen else model
    if kind == "light":
        from scail_lab.encoders.light_vae import LightVAE

        if tile_size is not None or not chunked:
            logger.warning("load_vae('light'): chunked/tile options have no effect on the light VAE")
        if path is not None:
            if arch:
                raise ValueError(
                    f"load_vae('light', path=...): the architecture comes from the checkpoint's json, got arch={arch}"
                )
            return LightVAE.from_checkpoint(path, dtype=dtype, device=device, frozen=frozen)
        logger.warning("load_vae('light') without a checkpoint path: random weights")
        model = LightVAE(**_checked(LightVAE, arch)).to(device=device, dtype=resolve_dtype(dtype))
        return freeze(model) if frozen else model
    raise ValueError(f"unknown VAE kind {kind!r}; expected 'wan21' or 'light'")


def _checked(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """Reject constructor options the class does not take (a config typo fails loudly)."""
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} options {unknown}; allowed: {sorted(allowed)}")
    return options
