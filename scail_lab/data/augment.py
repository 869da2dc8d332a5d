"""SCAIL-2's per-sample condition augmentation, as config values, and the per-sample random draws.

Every draw comes from a generator seeded by (seed, epoch, sample key), so a sample gets the same
decisions whichever worker or rank reads it, and a rerun of an epoch repeats them exactly.

Decisions, drawn in this order:
1. reverse driving (`reverse_driving`, default 0): only end-to-end samples that carry the reverse files.
   The driving input becomes the target video and the target becomes the driving video; the reference
   is the driving character's reference (see docs/DATA.md).
2. driving augmentation: with `driving_aug_e2e` (0.56) for end-to-end samples or `driving_aug_pose`
   (0.75) for pose-driven samples, use the sample's augmented driving variant (and its mask) when it has
   one. Not combined with reverse driving.
3. history: with `history_continuation` (0.5) for continuation clips, else `history` (0.15), mark the
   first `num_history_frames` (2) latent frames (= 5 pixel frames) as clean history. Needs more latent
   frames than that.
4. text dropout (`text_dropout`, 0.1): caption -> "".
5. pose dropout (`pose_dropout`, 0.0; animate samples only, as SCAIL-2 drops pose only where `ref_mask_flag`
   is set): the driving input becomes a black clip and its mask zeros. Pixel batches zero the pixels, latent
   batches swap in the cached latents of a black clip (`pose_latents_null.npy`), so both give the model the
   same condition.

Jump shift (`vertical_shift`, 0.0; latent batches only), drawn from its own generator so the decisions above keep
their streams: the target, the driving input, its mask codes and the target region move up together by `k` latent
rows (1 <= k <= `vertical_shift_max` of the grid's height) over a random run of latent frames after the first, the
rows that come in from below repeating the bottom row. The reference stays where it was, so the character's height
in each frame can only come from the driving input (a family that leaves the ground is new to a base trained on
families that do not). The VAEs are convolutional, so a whole-row shift of the latents is close to the latents of
the shifted frames.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities of SCAIL-2's training-time condition augmentation (defaults = SCAIL-2)."""

    driving_aug_e2e: float = 0.56
    driving_aug_pose: float = 0.75
    history_continuation: float = 0.5
    history: float = 0.15
    num_history_frames: int = 2  # latent frames
    text_dropout: float = 0.1
    pose_dropout: float = 0.0
    reverse_driving: float = 0.0
    vertical_shift: float = 0.0
    vertical_shift_max: float = 0.125  # of the frame's height

    def __post_init__(self) -> None:
        for name in ("driving_aug_e2e", "driving_aug_pose", "history_continuation", "history", "text_dropout",
                     "pose_dropout", "reverse_driving", "vertical_shift", "vertical_shift_max"):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                what = "a share of the frame's height" if name == "vertical_shift_max" else "a probability"
                raise ValueError(f"augment.{name} must be {what} in [0, 1], got {value}")
        if self.num_history_frames < 1:
            raise ValueError(f"augment.num_history_frames must be >= 1, got {self.num_history_frames}")

    @classmethod
    def off(cls) -> AugmentConfig:
        """No augmentation at all (evaluation, caching, parity checks)."""
        return cls(0.0, 0.0, 0.0, 0.0, 2, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Decisions:
    reverse: bool = False
    driving_aug: bool = False
    num_history_frames: int = 0
    drop_text: bool = False
    drop_pose: bool = False


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, key)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, digest])


def decide(
    cfg: AugmentConfig,
    rng: np.random.Generator,
    *,
    driving_kind: str,
    continuation: bool,
    animate: bool,
    has_aug: bool,
    has_reverse: bool,
    num_latent_frames: int,
) -> Decisions:
    """Draw one sample's decisions. Every probability is always drawn, so the stream stays aligned."""
    u = rng.random(5)
    reverse = has_reverse and driving_kind == "video" and u[0] < cfg.reverse_driving
    p_aug = cfg.driving_aug_pose if driving_kind == "pose" else cfg.driving_aug_e2e
    driving_aug = has_aug and not reverse and u[1] < p_aug
    p_hist = cfg.history_continuation if continuation else cfg.history
    history = cfg.num_history_frames if (num_latent_frames > cfg.num_history_frames and u[2] < p_hist) else 0
    return Decisions(
        reverse=bool(reverse),
        driving_aug=bool(driving_aug),
        num_history_frames=int(history),
        drop_text=bool(u[3] < cfg.text_dropout),
        drop_pose=bool(animate and u[4] < cfg.pose_dropout),
    )


def shift_rows(seed: int, epoch: int, key: str, cfg: AugmentConfig, num_latent_frames: int, rows: int) -> np.ndarray:
    """Per latent frame, how many latent rows the jump shift moves the clip up (all zeros when not drawn)."""
    out = np.zeros(num_latent_frames, dtype=np.int64)
    if cfg.vertical_shift <= 0 or num_latent_frames < 2:
        return out
    rng = sample_rng(seed, epoch, key + "#vertical_shift")
    u, start, length, height = rng.random(4)
    top = int(cfg.vertical_shift_max * rows)
    if u >= cfg.vertical_shift or top < 1:
        return out
    first = 1 + int(start * (num_latent_frames - 1))
    run = 1 + int(length * (num_latent_frames - first))
    out[first : first + run] = 1 + int(height * top)
    return out
