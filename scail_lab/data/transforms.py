"""Frame sampling (4k+1 frames at a target fps) and orientation-aware resolution buckets.

Frame rule: stride = source_fps / target_fps (1 when no target fps). The clip gets the largest frame
bucket n with (n - 1) * stride <= available - 1 frames; frames are start + floor(i * stride + 1/2), with
`start` uniform over the valid range in training and 0 in evaluation. A source slower than the target
fps repeats frames (stride < 1); that is allowed but logged once.

Bucket rule (SCAIL-2's PoseLatentBucketHelper, plus a fallback): among buckets of the source's
orientation (landscape W > H, portrait H > W, square), take the largest one that fits inside the source
(no upscaling), ties to the closest aspect ratio; if none fits, the closest aspect ratio (ties to the
smaller area), upscaled; if no bucket has that orientation, all buckets are candidates.

Crop/resize policy: scale to cover the bucket keeping the aspect ratio (antialiased bicubic, as the released
`resize_for_rectangle_crop`), then centre-crop. Masks use nearest-neighbour so palette colours stay exact.
The reference image is fitted to the bucket chosen from the video (same policy), as SCAIL's
`resize_for_rectangle_crop` does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)
RESIZE_CHUNK = 8  # frames resized at once
_warned_upsample = False


def check_frame_count(n: int, name: str = "num_frames") -> int:
    """Validate that n = 4k + 1 >= 1."""
    if int(n) != n or n < 1 or (n - 1) % 4 != 0:
        raise ValueError(f"{name} must be 4k+1 (1, 5, 9, 13, 17, ...), got {n}")
    return int(n)


@dataclass(frozen=True)
class FrameSampling:
    """How clips are cut in time. `frame_buckets`: allowed pixel frame counts (4k+1), largest preferred."""

    frame_buckets: tuple[int, ...] = (17,)
    target_fps: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        if not self.frame_buckets:
            raise ValueError("frame_buckets must not be empty")
        buckets = tuple(
            sorted({check_frame_count(n, "frame bucket") for n in self.frame_buckets}, reverse=True)
        )
        object.__setattr__(self, "frame_buckets", buckets)
        if self.target_fps is not None and self.target_fps <= 0:
            raise ValueError(f"target_fps must be positive or None, got {self.target_fps}")

    def choose(
        self, available: int, source_fps: float, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, float]:
        """-> (frame indices [n] into the source, output fps). ValueError when the clip is too short."""
        global _warned_upsample
        if available < 1 or source_fps <= 0:
            raise ValueError(f"bad clip: {available} frames at {source_fps} fps")
        stride = source_fps / self.target_fps if self.target_fps else 1.0
        if stride < 1.0 and not _warned_upsample:
            logger.warning(
                "source fps %.3g < target fps %.3g: frames will repeat", source_fps, self.target_fps
            )
            _warned_upsample = True
        fits = [n for n in self.frame_buckets if _round_half_up((n - 1) * stride) <= available - 1]
        if not fits:
            raise ValueError(
                f"clip too short: {available} frames at {source_fps:g} fps cannot give "
                f"{min(self.frame_buckets)} frames at {self.target_fps or source_fps:g} fps"
            )
        n = fits[0]
        span = _round_half_up((n - 1) * stride)
        start = int(rng.integers(0, available - span)) if (self.random_start and rng is not None) else 0
        indices = start + np.floor(np.arange(n) * stride + 0.5).astype(np.int64)
        return indices, float(self.target_fps or source_fps)

    def windows(
        self, available: int, source_fps: float, max_windows: int, overlap: int = 0
    ) -> tuple[list[np.ndarray], float]:
        """Consecutive clips from the start, each `overlap` output frames into the previous one (clip k+1 begins
        where frame n - overlap of clip k was taken), at most `max_windows`, all of the first clip's length.
        -> (frame indices per clip, output fps). ValueError when the clip is too short for one."""
        first, fps = self.choose(available, source_fps, None)
        n = len(first)
        if not 0 <= overlap < n:
            raise ValueError(f"window overlap must be in [0, {n}) output frames, got {overlap}")
        stride = source_fps / self.target_fps if self.target_fps else 1.0
        step = _round_half_up((n - overlap) * stride)
        clips = [first]
        while len(clips) < max_windows and clips[-1][-1] + step <= available - 1:
            clips.append(clips[-1] + step)
        return clips, fps


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def orientation(h: int, w: int) -> str:
    return "landscape" if w > h else ("portrait" if h > w else "square")


@dataclass(frozen=True)
class ResolutionBuckets:
    """Allowed (H, W) pixel sizes, each a multiple of `multiple` (32: the DiT's pose tokens need H/32)."""

    sizes: tuple[tuple[int, int], ...] = ((64, 64),)
    multiple: int = 32

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("resolution buckets must not be empty")
        sizes = []
        for size in self.sizes:
            if len(size) != 2:
                raise ValueError(f"a resolution bucket is (H, W), got {size!r}")
            h, w = int(size[0]), int(size[1])
            if h <= 0 or w <= 0 or h % self.multiple or w % self.multiple:
                raise ValueError(f"resolution bucket {h}x{w} must be positive multiples of {self.multiple}")
            sizes.append((h, w))
        object.__setattr__(self, "sizes", tuple(dict.fromkeys(sizes)))

    def choose(self, h: int, w: int) -> tuple[int, int]:
        """The bucket for a source of h x w pixels (rule in the module docstring)."""
        if h <= 0 or w <= 0:
            raise ValueError(f"source size must be positive, got {h}x{w}")
        same = [s for s in self.sizes if orientation(*s) == orientation(h, w)] or list(self.sizes)
        aspect = math.log(w / h)

        def aspect_gap(s: tuple[int, int]) -> float:
            return abs(math.log(s[1] / s[0]) - aspect)

        fitting = [s for s in same if s[0] <= h and s[1] <= w]
        if fitting:
            return min(fitting, key=lambda s: (-s[0] * s[1], aspect_gap(s)))
        return min(same, key=lambda s: (aspect_gap(s), s[0] * s[1]))


def cover_size(h: int, w: int, th: int, tw: int) -> tuple[int, int]:
    """Size (rh, rw) that covers (th, tw) keeping the aspect ratio: the tighter side is matched exactly and the
    other scaled and floored, as SCAIL's `resize_for_rectangle_crop` computes it."""
    if w / h > tw / th:
        return th, max(tw, int(w * th / h))
    return max(th, int(h * tw / w)), tw


def cover_crop(frames: Tensor, size: tuple[int, int], nearest: bool = False) -> Tensor:
    """uint8 [..., C, h, w] -> [..., C, H, W]: scale to cover (H, W) keeping aspect, then centre-crop.

    Bicubic with antialiasing (the released `resize_for_rectangle_crop`: torchvision BICUBIC on tensors), rounded
    back to uint8; `nearest` for masks. The one resize of the framework: the training loader, latent caching and
    the sampling pipeline all call it, so all see the same pixels.
    """
    th, tw = size
    h, w = frames.shape[-2:]
    if (h, w) == (th, tw):
        return frames
    rh, rw = cover_size(h, w, th, tw)
    top, left = (rh - th) // 2, (rw - tw) // 2
    lead, c = frames.shape[:-3], frames.shape[-3]
    flat = frames.reshape(-1, c, h, w)  # [M, C, h, w]
    out = torch.empty((flat.shape[0], c, th, tw), dtype=torch.uint8)
    for start in range(0, flat.shape[0], RESIZE_CHUNK):  # bounded float memory for long, large clips
        x = flat[start : start + RESIZE_CHUNK]
        if nearest:
            x = F.interpolate(x, size=(rh, rw), mode="nearest-exact")
        else:
            x = F.interpolate(x.float(), size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255).to(torch.uint8)
        out[start : start + RESIZE_CHUNK] = x[:, :, top : top + th, left : left + tw]
    return out.reshape(*lead, c, th, tw)


def resize_cover_crop(frames: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """`cover_crop` for channels-last numpy frames [..., h, w, C] (file tools: preprocessing, folder writers)."""
    channels_first = torch.from_numpy(np.ascontiguousarray(frames)).movedim(-1, -3)
    return cover_crop(channels_first, size, nearest).movedim(-3, -1).contiguous().numpy()
