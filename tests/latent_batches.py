"""An in-memory latent loader with the data pipeline's batch contract (a test fixture for training tests).

Batches are a pure function of (seed, epoch, index), like the real loader; `nan_at` poisons one batch.
"""

from __future__ import annotations

import torch

from scail_lab.data import schema


class LatentBatches:
    def __init__(self, num_batches: int = 6, batch_size: int = 2, frames: int = 2, size: int = 4, seed: int = 0,
                 text_dim: int = 32, clip_dim: int = 32, mask_width: int = 28, nan_at: int | None = None,
                 history_every: int = 3, vary_with_epoch: bool = True, **_: object) -> None:  # fmt: skip
        self.num_batches, self.batch_size, self.frames, self.size = num_batches, batch_size, frames, size
        self.seed, self.text_dim, self.clip_dim, self.mask_width = seed, text_dim, clip_dim, mask_width
        self.nan_at, self.history_every = nan_at, history_every
        self.vary_with_epoch = vary_with_epoch  # False: every epoch repeats the same batches (learnable data)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch(self, index: int) -> dict:
        epoch = self.epoch if self.vary_with_epoch else 0
        g = torch.Generator().manual_seed(self.seed * 10_007 + epoch * 101 + index)
        b, t, s = self.batch_size, self.frames, self.size
        r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
        target = r(b, 16, t, s, s)
        if self.nan_at is not None and index == self.nan_at:
            target[0, 0, 0, 0, 0] = float("nan")
        out = {
            schema.TARGET_LATENTS: target,
            schema.REF_LATENTS: r(b, 16, 1, s, s),
            schema.POSE_LATENTS: r(b, 16, t, s // 2, s // 2),
            schema.TEXT_EMB: r(b, 3, self.text_dim),
            schema.CLIP_EMB: r(b, 5, self.clip_dim),
            schema.CAPTION: ["x"] * b,
            schema.MODE: ["animate"] * b,
            schema.NUM_HISTORY_FRAMES: torch.tensor([1 if (index % self.history_every == 0) else 0] * b),
            schema.FPS: torch.full((b,), 8.0),
            schema.SAMPLE_KEY: [f"e{self.epoch}_b{index}_{i}" for i in range(b)],
        }
        if self.mask_width:
            out[schema.REF_MASK_CODE] = torch.rand(b, self.mask_width, 1, s, s, generator=g)
            out[schema.DRIVING_MASK_CODE] = torch.rand(b, self.mask_width, t, s // 2, s // 2, generator=g)
        return out

    def __iter__(self):
        for index in range(self.num_batches):
            yield self.batch(index)
