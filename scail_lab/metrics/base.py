"""Metric protocol, results, frame-layout handling and weight-file resolution.

Every metric is a small class with `update(pred, target, **extras)` (one sample: one video pair) and
`compute() -> MetricResult`. The runner (`eval/`), the validation callback and the tests use the same classes.

Frame vocabulary:
    frames   uint8 or float video, one of [N, 3, H, W] ("NCHW"), [3, N, H, W] ("CNHW") or [N, H, W, 3] ("NHWC")
    canonical float32 [N, 3, H, W] on the 0..255 scale (no rounding, no uint8 arithmetic)
    masks    [N, H, W] bool, or a mask video in any frame layout (white foreground on black)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scail_lab.checkpoints.bundle import sha256_file

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "NCHW", "CNHW", "NHWC")
ON_MISSING = ("error", "skip")
WEIGHTS_DIR_ENV = "SCAIL_EVAL_WEIGHTS_DIR"


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class MetricResult:
    """What `Metric.compute` returns.

    value: the aggregate (mean over samples for paired metrics, the set distance for FID/FVD), or None when
        skipped or when no sample produced a value.
    per_sample: sample id -> value, for paired metrics (empty for set-level metrics).
    protocol: how the number was made (backbone, resolution, clip length, sample count, weights sha256...).
    higher_is_better: direction, for tables and plots.
    skipped: reason the metric did not run (missing weights, no estimator), else None.
    """

    name: str
    value: float | None
    per_sample: dict[str, float] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool = True
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "per_sample": dict(self.per_sample),
            "protocol": dict(self.protocol),
            "higher_is_better": self.higher_is_better,
            "skipped": self.skipped,
        }


class Metric:
    """Base class: keeps per-sample values and the skip state; subclasses implement `_score`.

    Paired metrics override `_score(pred, target, **extras) -> float | None` (None: nothing to score for this
    sample, e.g. empty masks); set-level metrics override `update` and `compute` directly.
    """

    name: str = "metric"
    higher_is_better: bool = True

    def __init__(self) -> None:
        self.skipped: str | None = None
        self._values: dict[str, float] = {}

    def reset(self) -> None:
        self._values = {}

    def protocol(self) -> dict[str, Any]:
        return {}

    def update(
        self,
        pred: Tensor | np.ndarray,
        target: Tensor | np.ndarray,
        sample_id: str | None = None,
        **extras: Any,
    ) -> float | None:
        """Score one sample; returns its value (also kept for `compute`)."""
        if self.skipped is not None:
            return None
        sample_id = sample_id if sample_id is not None else str(len(self._values))
        if sample_id in self._values:
            raise ValueError(f"{self.name}: sample id {sample_id!r} was already updated")
        value = self._score(pred, target, **extras)
        if value is not None:
            self._values[sample_id] = float(value)
        return value

    def _score(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray, **extras: Any) -> float | None:
        raise NotImplementedError

    def compute(self) -> MetricResult:
        protocol = {**self.protocol(), "num_samples": len(self._values)}
        if self.skipped is not None:
            return MetricResult(self.name, None, {}, protocol, self.higher_is_better, self.skipped)
        value = float(np.mean(list(self._values.values()))) if self._values else None
        return MetricResult(self.name, value, dict(self._values), protocol, self.higher_is_better)


# --------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------


def _guess_layout(shape: Sequence[int]) -> str:
    candidates = [name for name, axis in (("NCHW", 1), ("CNHW", 0), ("NHWC", 3)) if shape[axis] == 3]
    if len(candidates) != 1:
        raise ValueError(
            f"cannot tell the frame layout of shape {tuple(shape)} (candidates {candidates}); pass layout="
            "'NCHW', 'CNHW' or 'NHWC'"
        )
    return candidates[0]


@dataclass(frozen=True)
class Frames:
    """Frames already in canonical form (float32 [N, 3, H, W], 0..255); `to_frames` passes them through.

    Lets a caller convert once (with its own layout / value range) and hand the result to several metrics.
    """

    data: Tensor

    @classmethod
    def of(
        cls, video: Tensor | np.ndarray, layout: str = "auto", value_range: tuple[float, float] = (0.0, 1.0)
    ) -> Frames:
        return cls(to_frames(video, layout, value_range))


def to_frames(
    video: Tensor | np.ndarray | Frames,
    layout: str = "auto",
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Any supported video -> float32 [N, 3, H, W] on the 0..255 scale.

    uint8 input is taken as 0..255. Floating input must lie in `value_range` (e.g. (0, 1) or (-1, 1)) and is
    mapped linearly to 0..255; values outside the range (beyond 1e-3 of its width) raise ValueError, which
    catches a [-1, 1] video passed as [0, 1].
    """
    if isinstance(video, Frames):
        return video.data
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    x = torch.from_numpy(np.ascontiguousarray(video)) if isinstance(video, np.ndarray) else video
    if not isinstance(x, Tensor):
        raise ValueError(f"frames must be a torch Tensor or numpy array, got {type(video).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"frames must be 4-D ([N,3,H,W], [3,N,H,W] or [N,H,W,3]), got shape {tuple(x.shape)}"
        )
    layout = _guess_layout(x.shape) if layout == "auto" else layout
    if layout == "CNHW":
        x = x.permute(1, 0, 2, 3)  # [3, N, H, W] -> [N, 3, H, W]
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)  # [N, H, W, 3] -> [N, 3, H, W]
    if x.shape[1] != 3:
        raise ValueError(f"frames in layout {layout} must have 3 channels, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float()
    if not x.is_floating_point():
        raise ValueError(f"frames must be uint8 or floating point, got dtype {x.dtype}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = x.float()
    tol = 1e-3 * (hi - lo)
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo - tol or x_max > hi + tol:
        raise ValueError(
            f"float frames span [{x_min:.4g}, {x_max:.4g}], outside value_range {value_range}; pass the right "
            "value_range (e.g. (-1, 1)) or uint8 frames"
        )
    return ((x - lo) * (255.0 / (hi - lo))).clamp(0.0, 255.0)


def to_uint8_frames(frames: Tensor) -> np.ndarray:
    """Canonical frames (float [N, 3, H, W], 0..255, as `to_frames` returns) -> uint8 [N, H, W, 3] (rounded)."""
    return frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_masks(mask: Tensor | np.ndarray, num_frames: int | None = None, threshold: float = 127.5) -> Tensor:
    """A mask video ([N,H,W] bool/float/uint8 or a frame video in any layout) -> bool [N, H, W].

    Frame videos are reduced to their channel mean and thresholded at `threshold` on the 0..255 scale
    (float [N,H,W] masks in [0, 1] are thresholded at 0.5), which absorbs mp4 compression noise.
    """
    x = torch.from_numpy(np.ascontiguousarray(mask)) if isinstance(mask, np.ndarray) else mask
    if not isinstance(x, Tensor | Frames):
        raise ValueError(f"mask must be a torch Tensor or numpy array, got {type(mask).__name__}")
    if isinstance(x, Frames) or x.ndim == 4:
        out = to_frames(x).mean(dim=1) > threshold  # [N, 3, H, W] -> [N, H, W]
    elif x.ndim == 3:
        if x.dtype == torch.bool:
            out = x
        elif x.dtype == torch.uint8:
            out = x.float() > threshold
        else:
            out = x.float() > 0.5
    else:
        raise ValueError(f"mask must be [N,H,W] or a 4-D frame video, got shape {tuple(x.shape)}")
    if num_frames is not None and out.shape[0] != num_frames:
        raise ValueError(f"mask has {out.shape[0]} frames, the video has {num_frames}")
    return out


def check_same_shape(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: generated frames {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ; resize "
            "or trim first (the eval runner does this with resize_pred / frame_mismatch)"
        )


# --------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------


def resolve_weights(
    metric: str,
    path: str | os.PathLike | None,
    expected_name: str | tuple[str, ...],
    on_missing: str = "error",
    sha256: str | None = None,
    config_key: str = "weights",
) -> tuple[Path | None, str | None]:
    """Find a metric's weight file: the explicit path, else `$SCAIL_EVAL_WEIGHTS_DIR/<expected_name>` (the
    first existing one when several accepted file names are given).

    Returns (path, None) when found, (None, reason) when missing and `on_missing == "skip"`; raises
    FileNotFoundError naming the metric, the expected file and the config key otherwise. A given `sha256` is
    checked (ValueError on mismatch). Nothing is ever downloaded.
    """
    if on_missing not in ON_MISSING:
        raise ValueError(f"{metric}: on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    candidates: list[Path] = []
    if path is not None and str(path) != "":
        candidates.append(Path(path).expanduser())
    names = (expected_name,) if isinstance(expected_name, str) else tuple(expected_name)
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if env_dir:
        candidates += [Path(env_dir).expanduser() / name for name in names]
    for candidate in candidates:
        if candidate.is_file():
            if sha256 is not None:
                actual = sha256_file(candidate)
                if actual != sha256.lower():
                    raise ValueError(f"{metric}: {candidate} has sha256 {actual}, expected {sha256}")
            return candidate, None
    tried = ", ".join(str(c) for c in candidates) or "no path given"
    reason = (
        f"{metric} needs the weight file {' or '.join(repr(n) for n in names)} (tried: {tried}); set "
        f"`{config_key}` to its path or put it in ${WEIGHTS_DIR_ENV}"
    )
    if on_missing == "skip":
        logger.warning("skipping %s: %s", metric, reason)
        return None, reason
    raise FileNotFoundError(reason)


def file_protocol(path: Path | None) -> dict[str, Any]:
    """Protocol stamp of a weight file: name and sha256 (hashed once, here)."""
    if path is None:
        return {"weights": None}
    return {"weights": path.name, "weights_sha256": sha256_file(path)}
