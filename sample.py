"""Sample a video with the denoiser (Hydra entry point: `python sample.py [overrides]`).

Interim main job of the foundation: runs the configured denoiser (tiny, randomly initialised by default) on a
generated conditioning input with a plain Euler flow-matching loop and writes the latents as a preview mp4
(first three latent channels, normalised, upsampled 8x). The AnimationPipeline replaces this with real
encoders, samplers and decoding.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scail_lab.types import DiTInputs

log = logging.getLogger("sample")


def generated_inputs(model, frames: int, height: int, width: int, seed: int) -> DiTInputs:
    """A deterministic conditioning input in latent space (a moving blob as the 'pose')."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    pose = torch.zeros(1, cfg.latent_dim, t, h // 2, w // 2)
    for k in range(t):
        pose[:, :, k, :, k % (w // 2)] = 1.0
    masks = {}
    if model.mask_width:
        masks = dict(
            ref_mask=torch.ones(1, model.mask_width, 1, h, w),
            driving_mask=torch.ones(1, model.mask_width, t, h // 2, w // 2),
        )
    return DiTInputs(
        latents=torch.randn(1, cfg.latent_dim, t, h, w, generator=g),
        timestep=torch.ones(1),
        text_emb=torch.randn(1, min(8, cfg.text_len), cfg.text_dim, generator=g),
        ref_latents=torch.randn(1, cfg.latent_dim, 1, h, w, generator=g),
        pose_latents=pose,
        clip_emb=torch.randn(1, 257, cfg.clip_dim, generator=g) if cfg.clip_dim else None,
        **masks,
    )


@hydra.main(config_path="configs", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model).eval()
    inputs = generated_inputs(model, frames=17, height=64, width=64, seed=cfg.seed)
    x = inputs.latents
    sigmas = torch.linspace(1.0, 0.0, 9)
    with torch.no_grad():
        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            v = model(inputs.replace(latents=x, timestep=(s * 1000).expand(1)))
            x = x + (s_next - s) * v
    preview = x[0, :3].permute(1, 2, 3, 0)  # [T, h, w, 3]
    preview = (preview - preview.amin()) / (preview.amax() - preview.amin() + 1e-6)
    frames = F.interpolate(preview.permute(0, 3, 1, 2), scale_factor=8, mode="nearest").permute(0, 2, 3, 1)
    out = Path(HydraConfig.get().runtime.output_dir) / "sample_preview.mp4"
    iio.imwrite(out, (frames.numpy() * 255).astype(np.uint8), fps=8, codec="libx264")
    (out.parent / "sample_config.json").write_text(
        json.dumps(OmegaConf.to_container(cfg, resolve=True), indent=2)
    )
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
