"""Conditions of a batch + noisy latents + timesteps -> DiTInputs. The one place both training and sampling use.

History frames (long-video continuation and SCAIL-2's history augmentation) are the first `num_history` latent
frames of the target: they enter clean and are flagged by the Wan I2V history mask (4 channels of ones).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from scail_lab.types import DiTInputs


@dataclass(frozen=True)
class Conditions:
    """Noise-free conditions of a batch (what latent shards store). Shapes as in DiTInputs."""

    ref_latents: Tensor  # [B, C, 1, H, W]
    pose_latents: Tensor  # [B, C, T, H/2, W/2]
    text_emb: Tensor  # [B, L, D]
    clip_emb: Tensor | None = None  # [B, tokens, D_clip]
    ref_mask: Tensor | None = None  # [B, Cm, 1, H, W]
    driving_mask: Tensor | None = None  # [B, Cm, T, H/2, W/2]
    extra_ref_latents: Tensor | None = None  # [B, C, N, H, W]
    extra_ref_masks: Tensor | None = None  # [B, Cm, N, H, W]
    mode: str | tuple[str, ...] = "animate"

    def replace(self, **changes) -> Conditions:
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> Conditions:
        """Every tensor on `device`."""
        changes = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}  # fmt: skip
        return self.replace(**changes)


class ConditionBuilder:
    """Assemble DiTInputs; owns the history mask convention."""

    history_channels = 4

    def history_mask(self, latents: Tensor, num_history: Tensor | int) -> Tensor | None:
        """[B, 4, T, H, W] with ones on the first num_history[b] frames of sample b; None if no sample has any."""
        b, _, t = latents.shape[:3]
        counts = torch.as_tensor(num_history, device=latents.device)
        counts = counts.expand(b) if counts.dim() == 0 else counts
        if int(counts.max()) == 0:
            return None
        if int(counts.max()) >= t:
            raise ValueError(
                f"num_history ({int(counts.max())}) must be smaller than the latent frame count ({t})"
            )
        frames = torch.arange(t, device=latents.device)
        on = (frames.view(1, t) < counts.view(b, 1)).to(latents.dtype)  # [B, T]
        return on.view(b, 1, t, 1, 1).expand(b, self.history_channels, t, *latents.shape[3:]).contiguous()

    def build(
        self, conditions: Conditions, latents: Tensor, timestep: Tensor, history_mask: Tensor | None = None
    ) -> DiTInputs:
        """latents: [B, C, T, H, W] (history frames already clean); timestep: [B] sigma x 1000."""
        b = latents.shape[0]
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=latents.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(b)
        return DiTInputs(
            latents=latents,
            timestep=timestep,
            text_emb=conditions.text_emb,
            ref_latents=conditions.ref_latents,
            pose_latents=conditions.pose_latents,
            clip_emb=conditions.clip_emb,
            ref_mask=conditions.ref_mask,
            driving_mask=conditions.driving_mask,
            history_mask=history_mask,
            extra_ref_latents=conditions.extra_ref_latents,
            extra_ref_masks=conditions.extra_ref_masks,
            mode=conditions.mode,
        )
