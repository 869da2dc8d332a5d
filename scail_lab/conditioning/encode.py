"""Pixels and captions -> latents, mask codes and embeddings (the SCAIL-2 recipe, section 5.2 of the spec).

Shapes: images [B, 3, H, W], videos [B, 3, N, H, W] (uint8 [0, 255] or float [-1, 1]), N = 4k + 1,
H and W multiples of 32. Latents [B, 16, T, H/f, W/f] with f the VAE's `spatial_factor` (8 for Wan, 4 for a
two-level light VAE); driving latents at half resolution [B, 16, T, H/2f, W/2f] (the
interface's pose_downsample d: 2 in SCAIL-2, 1 for full-resolution pose tokens). Mask codes follow the same grids.

Encoders are duck-typed: `vae.encode(video [-1,1]) -> latents` / `vae.decode`, `text_encoder.encode(list[str])
-> list[[L, D]]`, `image_encoder.encode(images [-1,1]) -> [B, tokens, D]` (see scail_lab.encoders).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from scail_lab.model.interfaces import check_pose_downsample
from scail_lab.model.masks import MaskScheme, downsample_frames
from scail_lab.model.tokens import pad_tokens


def unit_range(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is assumed to be in [-1, 1] already."""
    return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()


def check_pixel_size(name: str, height: int, width: int, multiple: int = 32) -> None:
    if height % multiple or width % multiple:
        raise ValueError(
            f"{name} is {height}x{width} pixels; SCAIL models need H and W to be multiples of {multiple} "
            f"(latent multiples of {multiple // 8}, so the half-resolution pose grid patchifies)"
        )


class ConditionEncoder:
    """Frozen encoders + the mask scheme. Every method runs under no_grad."""

    def __init__(
        self, vae, mask_scheme: MaskScheme, text_encoder=None, image_encoder=None, pose_downsample: int = 2
    ) -> None:
        self.pose_downsample = check_pose_downsample(pose_downsample)  # the model interface's: grid = latent grid / this
        self.vae = vae
        self.mask_scheme = mask_scheme
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.spatial_factor = int(getattr(vae, "spatial_factor", 8))  # mask codes land on the VAE's latent grid

    def to(self, device: torch.device | str) -> ConditionEncoder:
        """Move the encoders that are nn.Modules."""
        for module in (self.vae, self.text_encoder, self.image_encoder):
            if isinstance(module, torch.nn.Module):
                module.to(device)
        return self

    @torch.no_grad()
    def video_latents(self, video: Tensor) -> Tensor:
        """[B, 3, N, H, W] -> [B, 16, T, H/8, W/8]."""
        return self.vae.encode(unit_range(video))

    @torch.no_grad()
    def ref_latents(self, image: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, 16, 1, H/8, W/8] (the reference as a one-frame video)."""
        return self.vae.encode(unit_range(image).unsqueeze(2))

    @torch.no_grad()
    def pose_latents(self, driving: Tensor) -> Tensor:
        """[B, 3, N, H, W] -> [B, 16, T, H/(f*d), W/(f*d)]: 1/d bilinear (d = pose_downsample, 2 in SCAIL-2), then
        the VAE (spatial factor f)."""
        return self.vae.encode(downsample_frames(unit_range(driving), self.pose_downsample))

    @torch.no_grad()
    def ref_mask_code(self, ref_mask: Tensor) -> Tensor | None:
        """Reference masks [B, 3, H, W] -> [B, Cm, 1, H/f, W/f] (None for the `none` scheme)."""
        return self.mask_scheme.encode_ref(ref_mask.unsqueeze(2), self.spatial_factor)

    @torch.no_grad()
    def driving_mask_code(self, driving_mask: Tensor) -> Tensor | None:
        """Driving mask video [B, 3, N, H, W] -> [B, Cm, T, H/(f*d), W/(f*d)] (None for the `none` scheme)."""
        return self.mask_scheme.encode_driving(driving_mask, self.spatial_factor, self.pose_downsample)

    @torch.no_grad()
    def target_region(self, target_mask: Tensor) -> Tensor:
        """Target foreground video [B, 3, N, H, W] (white on black) -> [B, 1, T, H/f, W/f]: the share of each latent
        cell covered in any of the 4 pixel frames it packs (frame 0 alone), for loss weighting on the characters."""
        on = (target_mask.amax(dim=1, keepdim=True) > (127 if target_mask.dtype == torch.uint8 else 0)).float()
        b, _, n, h, w = on.shape
        f = self.spatial_factor
        pooled = F.interpolate(on.transpose(1, 2).reshape(b * n, 1, h, w), size=(h // f, w // f), mode="area")
        pooled = pooled.view(b, n, h // f, w // f)  # [B, N, h, w]
        groups = [pooled[:, :1]] + [pooled[:, i : i + 4] for i in range(1, n, 4)]
        return torch.stack([g.amax(dim=1) for g in groups], dim=1).unsqueeze(1)  # [B, 1, T, h, w]

    def mask_codes(
        self, ref_mask: Tensor | None, driving_mask: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """Reference mask [B,3,H,W] and driving mask video [B,3,N,H,W] -> codes (None for the `none` scheme)."""
        if self.mask_scheme.width == 0:
            return None, None
        if ref_mask is None or driving_mask is None:
            missing = "ref_mask" if ref_mask is None else "driving_mask"
            raise ValueError(f"mask scheme {type(self.mask_scheme).__name__} needs a {missing}")
        return self.ref_mask_code(ref_mask), self.driving_mask_code(driving_mask)

    @torch.no_grad()
    def text_list(self, captions: Sequence[str]) -> list[Tensor]:
        """list of B captions -> B tensors [L_i, D] (padding stripped)."""
        if self.text_encoder is None:
            raise ValueError("no text encoder configured")
        return self.text_encoder.encode(list(captions))

    def text(self, captions: Sequence[str]) -> Tensor:
        """list of B captions -> [B, L, D] zero-padded."""
        return pad_tokens(self.text_list(captions))

    @torch.no_grad()
    def clip(self, image: Tensor) -> Tensor | None:
        """[B, 3, H, W] -> [B, tokens, D], or None without an image encoder."""
        if self.image_encoder is None:
            return None
        return self.image_encoder.encode(unit_range(image))
