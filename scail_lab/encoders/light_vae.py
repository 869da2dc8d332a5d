"""A light causal video autoencoder for CPU work, with the Wan VAE's latent interface.

Same contract as the Wan 2.1 VAE: video [B, 3, N, H, W] in [-1, 1], N = 4k + 1, H, W multiples of 8
-> normalised latents [B, 16, k + 1, H/8, W/8]; latent 0 depends only on pixel frame 0 and latent t only
on pixel frames <= 4t. It trains on 64x64 clips in minutes on two CPU cores (tools/fit_light_vae.py).
With two widths instead of three it compresses 4x spatially (H/4, W/4): a toy world can then keep its
characters several latent cells wide at 64x64 pixels (docs/TOY_WORLD.md); `spatial_factor` tells users.

How: frame 0 is repeated 4x in front so the video splits into groups of 4 frames; each group is packed
into 12 channels and run through a small 2-D conv net (pixel-unshuffle 2x, then one stride-2 conv per
further width). One causal temporal conv at the lowest level (kernel 3, zero/earlier frames only) lets
latent t use earlier groups. The decoder mirrors it and drops the 3 padding frames. Latents are normalised
with per-channel mean/std buffers that the fit tool measures on its training data (defaults 0 / 1).

Shape legend: B batch, N pixel frames, T = (N - 1) / 4 + 1 groups = latent frames, G = 4 frames per group,
H, W pixels, h = H/f, w = W/f with f the spatial factor, Z latent channels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from scail_lab.encoders.vae_blocks import CausalConv3d, RMSNorm, per_frame
from scail_lab.files import atomic_write_text, save_safetensors

logger = logging.getLogger(__name__)

GROUP = 4  # pixel frames per latent frame
DECODER_MODULES = ("decoder_in", "decoder_mix", "decoder", "decoder_refine")  # what decode_raw uses


class ResBlock2d(nn.Module):
    """norm-SiLU-conv3x3 twice with an identity skip, on [N, C, H, W]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            RMSNorm(dim, images=True), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1),
            RMSNorm(dim, images=True), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class TemporalMix(nn.Module):
    """Residual causal time conv (kernel 3) on [B, C, T, h, w]: frame t sees frames t-2..t only."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.conv = CausalConv3d(dim, dim, (3, 1, 1), padding=(1, 0, 0))
        nn.init.zeros_(self.conv.weight)  # starts as identity: groups are first learned independently
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(F.silu(self.norm(x)))


class LightVAE(nn.Module):
    """Small causal video autoencoder: 4 x f x f compression, `z_dim` channels.

    Args:
        widths: channels at 1/2, 1/4 (and 1/8) resolution; 3 widths give f = 8 (the Wan factor), 2 give f = 4.
        z_dim: latent channels (16, like the Wan VAE).
        blocks: residual blocks per level (1 as first released; more is more capacity at the same shapes).
        refine_blocks: extra residual blocks in the decoder only, at its finest level (0 as first released; a
            decoder-only refit can add them to a fitted VAE without changing its latents).
    """

    temporal_factor = GROUP

    def __init__(
        self, *, widths: Sequence[int] = (32, 64, 96), z_dim: int = 16, blocks: int = 1, refine_blocks: int = 0
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) not in (2, 3) or min(widths) <= 0 or z_dim <= 0 or blocks < 1 or refine_blocks < 0:
            raise ValueError(
                f"LightVAE needs 2 or 3 positive widths, z_dim > 0, blocks >= 1 and refine_blocks >= 0, got "
                f"widths={widths}, z_dim={z_dim}, blocks={blocks}, refine_blocks={refine_blocks}"
            )
        self.latent_channels = int(z_dim)
        self.spatial_factor = 2 ** len(widths)
        self.config: dict[str, Any] = {"widths": widths, "z_dim": int(z_dim)}
        if blocks != 1:
            self.config["blocks"] = int(blocks)
        if refine_blocks:
            self.config["refine_blocks"] = int(refine_blocks)
        packed = 3 * GROUP * 4  # 3 colours x 4 frames x (2x2 pixel unshuffle)
        res = lambda dim: [ResBlock2d(dim) for _ in range(blocks)]  # noqa: E731
        encoder: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(packed, widths[0], 3, padding=1), *res(widths[0])]
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            encoder += [nn.Conv2d(w_in, w_out, 3, stride=2, padding=1), *res(w_out)]
        self.encoder = nn.Sequential(*encoder)
        top = widths[-1]
        self.encoder_mix = TemporalMix(top)
        self.encoder_out = nn.Sequential(RMSNorm(top, images=True), nn.SiLU(), nn.Conv2d(top, z_dim, 1))
        self.decoder_in = nn.Conv2d(z_dim, top, 3, padding=1)
        self.decoder_mix = TemporalMix(top)
        decoder: list[nn.Module] = res(top)
        for w_in, w_out in zip(widths[:0:-1], widths[-2::-1], strict=True):
            decoder += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(w_in, w_out, 3, padding=1), *res(w_out)]
        decoder += [RMSNorm(widths[0], images=True), nn.SiLU(), nn.Conv2d(widths[0], packed, 3, padding=1),
                    nn.PixelShuffle(2)]  # fmt: skip
        self.decoder = nn.Sequential(*decoder)
        # extra residual blocks at the decoder's finest level, before its output head; each starts as the identity
        # (last conv zeroed), so growing a fitted VAE's decoder starts from exactly its reconstructions
        self.decoder_refine = nn.Sequential(*[ResBlock2d(widths[0]) for _ in range(refine_blocks)])
        for block in self.decoder_refine:
            nn.init.zeros_(block.body[-1].weight)
            nn.init.zeros_(block.body[-1].bias)
        self.register_buffer("latents_mean", torch.zeros(z_dim))
        self.register_buffer("latents_std", torch.ones(z_dim))

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder_in.weight.device

    def decoder_parts(self) -> nn.ModuleList:
        """The modules `decode_raw` uses (a decoder-only refit trains these and nothing else)."""
        return nn.ModuleList([getattr(self, name) for name in DECODER_MODULES])

    def _decode_frames(self, x: Tensor) -> Tensor:
        """Decoder on [N, top width, h, w] -> packed groups [N, 3 G, H, W]; the refine blocks sit before the head."""
        head = len(self.decoder) - 4  # RMSNorm, SiLU, conv to 3 G x 4 channels, pixel shuffle
        for i, layer in enumerate(self.decoder):
            if i == head:
                x = self.decoder_refine(x)
            x = layer(x)
        return x

    # ------------------------------------------------------------------ raw (unnormalised) maps

    def encode_raw(self, video: Tensor) -> Tensor:
        """Checked pixels [B, 3, N, H, W] -> unnormalised latents [B, Z, T, h, w] (model dtype)."""
        b, c, n, h, w = video.shape
        t = (n - 1) // GROUP + 1
        padded = torch.cat(
            [video[:, :, :1].expand(-1, -1, GROUP - 1, -1, -1), video], dim=2
        )  # [B, 3, G*T, H, W]
        groups = padded.reshape(b, c, t, GROUP, h, w).transpose(1, 2)  # [B, T, 3, G, H, W]
        x = self.encoder(groups.reshape(b * t, c * GROUP, h, w))  # [(B T), w2, h, w]
        x = x.reshape(b, t, *x.shape[1:]).transpose(1, 2)  # [B, w2, T, h, w]
        x = self.encoder_mix(x)
        return per_frame(self.encoder_out, x)  # [B, Z, T, h, w]

    def decode_raw(self, z: Tensor) -> Tensor:
        """Unnormalised latents [B, Z, T, h, w] -> unclamped pixels [B, 3, 4 (T - 1) + 1, f h, f w]."""
        x = self.decoder_mix(per_frame(self.decoder_in, z))  # [B, w2, T, h, w]
        b, _, t = x.shape[:3]
        frames = per_frame(self._decode_frames, x)  # [B, 3 G, T, H, W]
        h, w = frames.shape[-2:]
        frames = frames.reshape(b, 3, GROUP, t, h, w).transpose(2, 3)  # [B, 3, T, G, H, W]
        return frames.reshape(b, 3, t * GROUP, h, w)[:, :, GROUP - 1 :]  # drop frame 0's 3 padding copies

    # ------------------------------------------------------------------ protocol

    def encode(self, video: Tensor) -> Tensor:
        """[B, 3, N, H, W] in [-1, 1], N = 4k + 1 -> normalised latents [B, Z, k + 1, H/f, W/f] (fp32)."""
        check_video(video, self.spatial_factor, self.temporal_factor)
        z = self.encode_raw(video.to(device=self.device, dtype=self.dtype)).float()
        return (z - self.latents_mean.float().view(1, -1, 1, 1, 1)) / self.latents_std.float().view(
            1, -1, 1, 1, 1
        )

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, Z, T, h, w] -> pixels [B, 3, 4 (T - 1) + 1, f h, f w] in [-1, 1] (fp32)."""
        check_latents(latents, self.latent_channels)
        mean = self.latents_mean.float().view(1, -1, 1, 1, 1)
        std = self.latents_std.float().view(1, -1, 1, 1, 1)
        z = latents.to(self.device).float() * std + mean
        return self.decode_raw(z.to(self.dtype)).float().clamp_(-1.0, 1.0)

    def forward(self, video: Tensor) -> Tensor:
        """Unclamped reconstruction [B, 3, N, H, W] (for training)."""
        return self.decode_raw(self.encode_raw(video))

    def reconstruction_loss(self, video: Tensor, latent_l2: float = 1e-4) -> tuple[Tensor, Tensor]:
        """(loss, mse) on a checked batch [B, 3, N, H, W]: pixel MSE + latent_l2 * mean(z^2) (keeps z bounded)."""
        check_video(video, self.spatial_factor, self.temporal_factor)
        z = self.encode_raw(video)
        mse = F.mse_loss(self.decode_raw(z).float(), video.float())
        return mse + latent_l2 * z.float().pow(2).mean(), mse.detach()

    @torch.no_grad()
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store per-channel latent statistics [Z] (measured on training data) used by encode/decode."""
        if mean.shape != (self.latent_channels,) or std.shape != (self.latent_channels,) or (std <= 0).any():
            raise ValueError(
                f"latent stats must be [{self.latent_channels}] with std > 0, got {tuple(mean.shape)}, {tuple(std.shape)}"
            )
        self.latents_mean.copy_(mean)
        self.latents_std.copy_(std)

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write `path` (.safetensors) and its config `path.with_suffix('.json')`, each atomically."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"light VAE checkpoints are .safetensors files, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        config_path = path.with_suffix(".json")
        text = json.dumps({"kind": "light", "config": self.config, **(extra or {})}, indent=2)  # fails before writing
        save_safetensors(self.state_dict(), path)
        atomic_write_text(config_path, text)
        return path

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        frozen: bool = True,
    ) -> LightVAE:
        """Load a checkpoint written by `save` (needs the .json config next to the .safetensors)."""
        path = Path(path)
        config_path = path.with_suffix(".json")
        state = read_state_dict(path)
        if not config_path.is_file():
            raise FileNotFoundError(
                f"light VAE config {str(config_path)!r} (next to {str(path)!r}) does not exist"
            )
        try:
            meta = json.loads(config_path.read_text())
            config = dict(meta["config"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"light VAE config {str(config_path)!r} is unreadable or has no 'config' entry: {err}"
            ) from err
        try:
            model = cls(**config)
        except TypeError as err:
            raise ValueError(
                f"light VAE config {str(config_path)!r} has bad entries {config}: {err}"
            ) from err
        load_checked(model, state, repr(str(path)))
        model = model.to(device=device, dtype=resolve_dtype(dtype))
        # the normalisation statistics stay fp32 whatever the weight dtype
        model.latents_mean.data = model.latents_mean.data.float()
        model.latents_std.data = model.latents_std.data.float()
        return freeze(model) if frozen else model
