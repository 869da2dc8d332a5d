"""Rectified-flow training objective as SCAIL-2 trains it, from swappable parts.

    sigma ~ sampler (logit-normal(0, 1), then the resolution-dependent shift)
    x_sigma = (1 - sigma) x0 + sigma eps, with history frames left clean (x_sigma = x0 there)
    target = eps - x0; loss = weighted MSE over the video latents, history frames and masked regions excluded,
    as a TRUE masked mean (sum over kept elements / number of kept elements), not one diluted by masked ones.

Region weighting (`region_weight` w, off by default as in SCAIL-2): each element's squared error is multiplied by
1 + w * region, region in [0, 1] the share of its latent cell the target's characters cover (SCAIL's unused
`RFLossAmp` weighted hands and faces the same way). The normaliser stays the count of kept elements.

Shift (SCAIL-2 `schedule_shift`): mu = 0.5 + (L - 256) * 0.65 / 3840 with L = tokens per latent frame
(H * W / 4 for a 2x2 patch); sigma <- e^mu / (e^mu + 1 / sigma - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scail_lab.conditioning.builder import ConditionBuilder, Conditions


class LogitNormalSigma:
    """sigma = sigmoid(n), n ~ N(mean, std)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if std <= 0:
            raise ValueError(f"logit-normal std must be positive, got {std}")
        self.mean, self.std = mean, std

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, dtype=torch.float64))


class UniformSigma:
    """sigma ~ U(low, high)."""

    def __init__(self, low: float = 0.0, high: float = 1.0) -> None:
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"uniform sigma bounds must satisfy 0 <= low < high <= 1, got {low}, {high}")
        self.low, self.high = low, high

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.low + (self.high - self.low) * torch.rand(n, generator=generator, dtype=torch.float64)


class ResolutionShift:
    """SCAIL-2's shift: mu grows linearly with the tokens per latent frame. `enabled=False` is the identity."""

    def __init__(self, base_mu: float = 0.5, slope: float = 0.65 / 3840, base_tokens: int = 256, enabled: bool = True):
        self.base_mu, self.slope, self.base_tokens, self.enabled = base_mu, slope, base_tokens, enabled

    def mu(self, tokens_per_frame: int) -> float:
        return self.base_mu + (tokens_per_frame - self.base_tokens) * self.slope

    def __call__(self, sigma: Tensor, tokens_per_frame: int) -> Tensor:
        if not self.enabled:
            return sigma
        e_mu = math.exp(self.mu(tokens_per_frame))
        return e_mu / (e_mu + 1.0 / sigma - 1.0)


class UniformWeighting:
    """Every sigma weighs 1 (SCAIL-2: no SNR weighting)."""

    def __call__(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)


@dataclass
class LossOutput:
    loss: Tensor  # scalar
    per_sample: Tensor  # [B] masked mean per sample (detached)
    sigma: Tensor  # [B]
    kept_fraction: Tensor  # scalar: fraction of latent elements that count (a tensor: no host sync per step)


class FlowMatchingObjective:
    def __init__(self, sigma_sampler=None, shift: ResolutionShift | None = None, weighting=None, patch_area: int = 4,
                 region_weight: float = 0.0) -> None:  # fmt: skip
        if region_weight < 0:
            raise ValueError(f"region_weight must be >= 0, got {region_weight}")
        self.region_weight = float(region_weight)
        self.sigma_sampler = sigma_sampler if sigma_sampler is not None else LogitNormalSigma()
        self.shift = shift if shift is not None else ResolutionShift()
        self.weighting = weighting if weighting is not None else UniformWeighting()
        self.patch_area = patch_area
        self.builder = ConditionBuilder()

    def sample_sigma(self, latents: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[B] float32 sigmas for latents [B, C, T, H, W]."""
        tokens = latents.shape[-2] * latents.shape[-1] // self.patch_area
        sigma = self.shift(self.sigma_sampler(latents.shape[0], generator), tokens)
        return sigma.float().to(latents.device)

    def __call__(
        self,
        model,
        conditions: Conditions,
        x0: Tensor,
        num_history: Tensor | int = 0,
        loss_mask: Tensor | None = None,
        sigma: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        region: Tensor | None = None,
    ) -> LossOutput:
        """x0: clean target latents [B, C, T, H, W]; loss_mask: optional [B, 1 or C, T, H, W] in [0, 1];
        region: optional [B, 1, T, H, W] in [0, 1] (the characters' cells), weighted by `region_weight`."""
        b = x0.shape[0]
        sigma = self.sample_sigma(x0, generator) if sigma is None else sigma.to(x0)
        eps = torch.randn(x0.shape, generator=generator).to(x0) if noise is None else noise.to(x0)
        s = sigma.view(b, 1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * eps
        history_mask = self.builder.history_mask(x0, num_history)
        keep = torch.ones_like(x0[:, :1])  # [B, 1, T, H, W]
        if history_mask is not None:
            history = history_mask[:, :1]
            x_t = history * x0 + (1 - history) * x_t  # history frames enter clean
            keep = keep * (1 - history)
        if loss_mask is not None:
            keep = keep * loss_mask.to(x0)
        inputs = self.builder.build(conditions, x_t, sigma * 1000.0, history_mask)
        velocity = model(inputs).float()
        error = (velocity - (eps - x0).float()).square()  # [B, C, T, H, W]
        weights = keep.expand_as(error) * self.weighting(sigma).view(b, 1, 1, 1, 1).to(error)
        if self.region_weight and region is not None:
            if region.shape != keep.shape:
                raise ValueError(f"region must be {tuple(keep.shape)} like the latents' frames, got {tuple(region.shape)}")
            weights = weights * (1.0 + self.region_weight * region.to(error))
        per_sample_kept = keep.expand_as(error).sum(dim=(1, 2, 3, 4)).clamp_min(1.0)
        per_sample = (error * weights).sum(dim=(1, 2, 3, 4)) / per_sample_kept
        total_kept = keep.expand_as(error).sum()
        if loss_mask is not None and total_kept.item() == 0:  # history alone never covers every frame (checked)
            raise ValueError("the loss mask excludes every latent element (all history or masked)")
        loss = (error * weights).sum() / total_kept
        return LossOutput(loss, per_sample.detach(), sigma.detach(), (total_kept / error.numel()).detach())
