"""Training the joint estimator: augmentation, the integral-regression loss, the fit loop, error summaries.

Shapes: images float [B, 3, H, W] in [0, 1]; joints [B, J, 2] (x, y) pixels (pixel centres at integers).
The world-specific part (rendering samples) lives in tools/fit_joint_estimator.py.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from scail_lab.metrics.joint_estimator import (
    HEATMAP_STRIDE,
    JointHeatmapEstimator,
    flip_permutation,
    soft_argmax,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Random draws per image. Geometry: flip (left/right labels swapped), scale, rotation, shift (fraction
    of the width/height). Appearance, for generated videos that are blurrier, noisier or colour-shifted than
    the renders: channel permutation, brightness / contrast, Gaussian blur, Gaussian noise."""

    flip: float = 0.5
    scale: tuple[float, float] = (0.85, 1.15)
    rotate_deg: float = 10.0
    shift: float = 0.08
    channel_permute: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.2
    blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 1.2)
    noise: float = 0.3
    noise_std: float = 0.04

    def __post_init__(self) -> None:
        for name in ("flip", "channel_permute", "blur", "noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment {name} probability must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"augment scale must be (low, high) with 0 < low <= high, got {self.scale}")


def augment_batch(
    images: Tensor, joints: Tensor, config: AugmentConfig, flip_perm: list[int], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random geometric + appearance augmentation of [B, 3, H, W] images and their [B, J, 2] joints."""
    batch, _, height, width = images.shape
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    flip = u(batch) < config.flip
    scale = config.scale[0] + (config.scale[1] - config.scale[0]) * u(batch)
    angle = torch.deg2rad((2 * u(batch) - 1) * config.rotate_deg)
    shift = (2 * u(batch, 2) - 1) * config.shift * torch.tensor([width, height])
    # forward map on pixel coordinates: p_out = S R F (p_in - c) + c + shift, F = horizontal flip
    cos, sin, sign = torch.cos(angle), torch.sin(angle), torch.where(flip, -1.0, 1.0)
    forward = torch.stack([torch.stack([cos * sign, -sin], -1), torch.stack([sin * sign, cos], -1)], 1)
    forward = forward * scale[:, None, None]  # [B, 2, 2]
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2])
    out_joints = torch.einsum("bij,bkj->bki", forward, joints - centre) + centre + shift[:, None]
    out_joints = torch.where(flip[:, None, None], out_joints[:, flip_perm], out_joints)
    # grid_sample needs the inverse map in normalised coordinates (align_corners=False: u = (2x + 1) / W - 1)
    inverse = torch.linalg.inv(forward)  # p_in = inverse (p_out - c - shift) + c
    to_norm = torch.tensor([2.0 / width, 2.0 / height])
    theta_lin = inverse * to_norm[None, :, None] / to_norm[None, None, :]  # [B, 2, 2] in normalised units
    c_norm = (2 * centre + 1) * to_norm / 2 - 1  # the centre in normalised coordinates
    s_norm = shift * to_norm
    theta_off = c_norm - torch.einsum("bij,bj->bi", theta_lin, c_norm + s_norm)
    theta = torch.cat([theta_lin, theta_off[:, :, None]], dim=2)  # [B, 2, 3]
    grid = F.affine_grid(theta, [batch, 3, height, width], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # appearance
    permute = u(batch) < config.channel_permute
    if permute.any():
        perm = torch.stack([torch.randperm(3, generator=generator) for _ in range(batch)])  # [B, 3]
        shuffled = torch.gather(out, 1, perm[:, :, None, None].expand_as(out))
        out = torch.where(permute[:, None, None, None], shuffled, out)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + (2 * u(batch, 1, 1, 1) - 1) * config.contrast
    brightness = (2 * u(batch, 1, 1, 1) - 1) * config.brightness
    out = (out - mean) * contrast + mean + brightness
    if config.blur > 0:
        sigma = config.blur_sigma[0] + (config.blur_sigma[1] - config.blur_sigma[0]) * float(u(1))
        blurred = _gaussian_blur(out, sigma)
        out = torch.where((u(batch) < config.blur)[:, None, None, None], blurred, out)
    noisy = (u(batch) < config.noise).float() * u(batch) * config.noise_std
    out = out + noisy[:, None, None, None] * torch.randn(out.shape, generator=generator)
    return out.clamp(0.0, 1.0), out_joints


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=images.dtype) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


# --------------------------------------------------------------------------------------------------
# Loss and fitting
# --------------------------------------------------------------------------------------------------


def keypoint_loss(
    logits: Tensor,
    joints: Tensor,
    image_size: tuple[int, int],
    heatmap_weight: float = 0.5,
    sigma: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Integral-regression loss: L1 of the soft-argmax coordinates (pixels) + a heatmap cross-entropy against a
    normalised Gaussian (std `sigma` heatmap cells) at the target, which keeps the maps unimodal (DSNT's
    regulariser). Joints outside the image (rare: edges of pans and walks) are left out.

    logits [B, J, h, w]; joints [B, J, 2] input pixels -> (scalar loss, {"l1_px", "ce"}).
    """
    height, width = image_size
    coords, _ = soft_argmax(logits)
    inside = (joints >= -0.5).all(-1) & (joints[..., 0] <= width - 0.5) & (joints[..., 1] <= height - 0.5)
    weight = inside.float()
    count = weight.sum().clamp(min=1.0)
    l1 = ((coords - joints).abs().sum(-1) * weight).sum() / count
    h, w = logits.shape[-2:]
    xs = (torch.arange(w, dtype=logits.dtype) + 0.5) * HEATMAP_STRIDE - 0.5
    ys = (torch.arange(h, dtype=logits.dtype) + 0.5) * HEATMAP_STRIDE - 0.5
    spread = 2 * (sigma * HEATMAP_STRIDE) ** 2
    gx = torch.exp(-((xs - joints[..., :1]) ** 2) / spread)  # [B, J, w]
    gy = torch.exp(-((ys - joints[..., 1:]) ** 2) / spread)  # [B, J, h]
    target = gy[..., :, None] * gx[..., None, :]  # [B, J, h, w]
    target = target / target.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
    log_probs = logits.flatten(2).log_softmax(-1).view_as(logits)  # [B, J, h*w] -> [B, J, h, w]
    ce = (-(target * log_probs).sum(dim=(-2, -1)) * weight).sum() / count
    loss = l1 + heatmap_weight * ce
    return loss, {"l1_px": float(l1.detach()), "ce": float(ce.detach())}


@dataclass(frozen=True)
class FitConfig:
    """Optimisation of `fit_estimator`: AdamW, linear warm-up then cosine decay to zero."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    heatmap_weight: float = 0.5
    seed: int = 0
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"steps, batch_size and lr must be positive, got {self.steps}, {self.batch_size}, "
                             f"{self.lr}")  # fmt: skip


def fit_estimator(
    estimator: JointHeatmapEstimator,
    frames: Tensor | np.ndarray,
    joints: Tensor | np.ndarray,
    config: FitConfig,
    progress: bool = True,
) -> list[float]:
    """Train `estimator.net` on uint8 frames [M, H, W, 3] (H, W = the config's image_size) and their joints
    [M, J, 2]; returns the loss of every step. The net is left in eval mode."""
    frames = torch.as_tensor(frames)
    joints = torch.as_tensor(joints, dtype=torch.float32)
    size = estimator.config.image_size
    if frames.ndim != 4 or tuple(frames.shape[1:]) != (*size, 3) or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [M, {size[0]}, {size[1]}, 3], got {frames.dtype} "
                         f"{tuple(frames.shape)}")  # fmt: skip
    if tuple(joints.shape) != (frames.shape[0], estimator.config.num_joints, 2):
        raise ValueError(f"joints must be [{frames.shape[0]}, {estimator.config.num_joints}, 2], got "
                         f"{tuple(joints.shape)}")  # fmt: skip
    net = estimator.net
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, min(config.warmup_steps, config.steps // 2))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(config.seed)
    flip_perm = flip_permutation(estimator.config.joint_names)
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="fit joint estimator", unit="step", disable=not progress)
    for _ in bar:
        index = torch.randint(0, frames.shape[0], (config.batch_size,), generator=generator)
        images = frames[index].permute(0, 3, 1, 2).float() / 255.0  # [B, H, W, 3] -> [B, 3, H, W]
        target = joints[index]
        if config.augment is not None:
            images, target = augment_batch(images, target, config.augment, flip_perm, generator)
        loss, stats = keypoint_loss(net(images), target, size, config.heatmap_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", l1_px=f"{stats['l1_px']:.2f}")
    net.eval()
    return losses


# --------------------------------------------------------------------------------------------------
# Error summaries
# --------------------------------------------------------------------------------------------------


@dataclass
class JointErrorSummary:
    """Pixel errors of estimated vs ground-truth joints."""

    mean: float
    median: float
    pck: dict[str, float]
    per_joint: dict[str, float]
    num_frames: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean_px": self.mean, "median_px": self.median, "pck": self.pck, "per_joint_px": self.per_joint,
                "num_frames": self.num_frames}  # fmt: skip


def summarize_errors(
    estimated: np.ndarray,
    target: np.ndarray,
    joint_names: tuple[str, ...],
    pck_thresholds: tuple[float, ...] = (1.0, 2.0, 3.0),
) -> JointErrorSummary:
    """[N, J, 2] estimated and ground-truth joints -> mean / median Euclidean error, PCK@k px (share of joints
    within k pixels), mean error per joint."""
    estimated, target = np.asarray(estimated, np.float64), np.asarray(target, np.float64)
    if estimated.shape != target.shape or target.ndim != 3 or target.shape[1:] != (len(joint_names), 2):
        raise ValueError(f"estimated {estimated.shape} and target {target.shape} must both be [N, J, 2] "
                         f"with J = {len(joint_names)}")  # fmt: skip
    dist = np.linalg.norm(estimated - target, axis=-1)  # [N, J, 2] -> [N, J]
    return JointErrorSummary(
        mean=float(dist.mean()),
        median=float(np.median(dist)),
        pck={f"{k:g}px": float((dist <= k).mean()) for k in pck_thresholds},
        per_joint={name: float(dist[:, j].mean()) for j, name in enumerate(joint_names)},
        num_frames=int(dist.shape[0]),
    )
