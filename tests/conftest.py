"""Shared fixtures: tiny denoiser configs and DiTInputs factories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def make_inputs(
    *,
    batch: int = 2,
    frames: int = 3,
    height: int = 8,
    width: int = 8,
    mask_width: int = 28,
    text_dim: int = 32,
    text_tokens: int = 5,
    clip_dim: int = 32,
    clip_tokens: int = 7,
    num_extra: int = 0,
    history: bool = False,
    mode="animate",
    seed: int = 0,
    pose_downsample: int = 2,
):
    """Random DiTInputs with consistent shapes (latent grid height x width, `frames` latent frames)."""
    from scail_lab.types import DiTInputs

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    b, t, h, w = batch, frames, height, width
    history_mask = None
    if history:
        history_mask = torch.zeros(b, 4, t, h, w)
        history_mask[:, :, :2] = 1.0
    return DiTInputs(
        latents=r(b, 16, t, h, w),
        timestep=torch.linspace(100.0, 900.0, b),
        text_emb=r(b, text_tokens, text_dim),
        ref_latents=r(b, 16, 1, h, w),
        pose_latents=r(b, 16, t, h // pose_downsample, w // pose_downsample),
        clip_emb=r(b, clip_tokens, clip_dim) if clip_dim else None,
        ref_mask=u(b, mask_width, 1, h, w) if mask_width else None,
        driving_mask=u(b, mask_width, t, h // pose_downsample, w // pose_downsample) if mask_width else None,
        history_mask=history_mask,
        extra_ref_latents=r(b, 16, num_extra, h, w) if num_extra else None,
        extra_ref_masks=u(b, mask_width, num_extra, h, w) if (num_extra and mask_width) else None,
        mode=mode,
    )


def tiny_config(**overrides):
    from scail_lab.model.dit import DiTConfig

    base = dict(
        dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=64, text_dim=32, text_len=16, clip_dim=32
    )
    base.update(overrides)
    return DiTConfig(**base)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter non-trivial values (the zero-initialised head would hide most bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (
                name.endswith("norm_q.weight")
                or name.endswith("norm_k.weight")
                or name.endswith("norm_k_img.weight")
            ):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g) * (4.0 if p.dim() > 1 else 1.0))
    return model


@pytest.fixture
def inputs_factory():
    return make_inputs


@pytest.fixture
def configs_dir() -> Path:
    return CONFIGS
