"""Synthetic-world metrics against ground truth: joint-position error and identity colour consistency.

Ground truth contract (`gt.json` in a sample folder, written by the synthetic world generator):
    joints           list over frames of list over joints of [x, y] pixel coords of the TARGET character
    joint_names      list of str, one per joint
    identity_colors  list of [r, g, b] uint8 colours of the target identity's body parts / clothing
    fps              frames per second
plus `target_mask.mp4` (white character on black) and `target_background.mp4` (the target's scene with no
character: the plate a missing foreground mask is derived from) beside it.

Shapes: frames canonical float [N, 3, H, W] 0..255; joints [N, J, 2] (x, y) pixels; palette [K, 3].
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from scail_lab.metrics.base import Metric, file_protocol, resolve_weights, to_frames
from scail_lab.metrics.joint_estimator import JointHeatmapEstimator
from scail_lab.metrics.weight_free import fallback_protocol, foreground_mask

COLOR_STATISTICS = ("histogram_intersection", "palette_distance")
ESTIMATOR_FILE = "joint_estimator.safetensors"  # looked up in $SCAIL_EVAL_WEIGHTS_DIR
BORDER = 2  # frame-border width of the border-median fallback (no plate, no mask)


@dataclass(frozen=True)
class SyntheticGT:
    """Parsed gt.json. joints: float64 [N, J, 2]; identity_colors: uint8 [K, 3]."""

    joints: np.ndarray
    joint_names: tuple[str, ...]
    identity_colors: np.ndarray
    fps: float

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "gt.json") -> SyntheticGT:
        missing = [k for k in ("joints", "joint_names", "identity_colors") if k not in data]
        if missing:
            raise ValueError(f"{source}: missing keys {missing}")
        joints = np.asarray(data["joints"], dtype=np.float64)
        names = tuple(str(n) for n in data["joint_names"])
        if joints.ndim != 3 or joints.shape[2] != 2 or joints.shape[1] != len(names):
            raise ValueError(
                f"{source}: joints must be [frames, {len(names)} joints, 2], got shape {joints.shape}"
            )
        colors = np.asarray(data["identity_colors"])
        if (
            colors.ndim != 2
            or colors.shape[1] != 3
            or colors.shape[0] == 0
            or colors.min() < 0
            or colors.max() > 255
        ):
            raise ValueError(
                f"{source}: identity_colors must be a non-empty list of [r, g, b] in 0..255, got {colors.shape}"
            )
        return cls(joints, names, colors.astype(np.uint8), float(data.get("fps", 0.0)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SyntheticGT:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ground-truth file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(data, str(path))


@runtime_checkable
class JointEstimator(Protocol):
    """Estimates the character's joints in generated frames: uint8 [N, H, W, 3] -> float [N, J, 2] (x, y) pixels.

    Joints must follow the ground truth's `joint_names` order; NaN marks a joint the estimator did not find.
    """

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


def _gt_from_extras(name: str, extras: dict[str, Any]) -> SyntheticGT:
    gt = extras.get("gt")
    if gt is None:
        raise ValueError(f"{name} needs the sample's synthetic ground truth (gt.json) as extra `gt`")
    return gt if isinstance(gt, SyntheticGT) else SyntheticGT.from_dict(gt)


class JointPositionError(Metric):
    """Mean Euclidean pixel distance between estimated joints of the generated video and the gt.json joints.

    Averaged over frames and joints; joints the estimator returns as NaN are left out (their share is logged as
    `missed_joint_share` in the protocol). The estimator is either given (any `JointEstimator` callable) or
    loaded from `weights`, a `JointHeatmapEstimator` file (tools/fit_joint_estimator.py), found like every
    metric weight file: the explicit path, else `$SCAIL_EVAL_WEIGHTS_DIR/joint_estimator.safetensors`. A
    missing file raises FileNotFoundError, or with `on_missing="skip"` records the metric as skipped.

    An estimator with a `joint_names` attribute scores only samples whose gt.json has exactly those joints;
    others (two-character samples for the single-character estimator) are skipped and counted in the protocol
    (`unsupported_samples`, `unsupported_reason`). The protocol also carries the estimator's own held-out error
    (`estimator_heldout`), the floor under which differences between runs mean nothing.
    """

    name = "joint_error_px"
    higher_is_better = False

    def __init__(
        self,
        estimator: JointEstimator | None = None,
        weights: str | os.PathLike | None = None,
        on_missing: str = "error",
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name or "joint_error_px"
        self.weights_path: Path | None = None
        if estimator is not None and weights is not None:
            raise ValueError(f"{self.name}: give either `estimator` or `weights`, not both")
        if estimator is None:
            self.weights_path, reason = resolve_weights(self.name, weights, ESTIMATOR_FILE, on_missing)
            if self.weights_path is None:
                self.skipped = f"no joint estimator configured: {reason}"
            else:
                estimator = JointHeatmapEstimator.load(self.weights_path)
        self.estimator = estimator
        self._weights_stamp = file_protocol(self.weights_path) if self.weights_path is not None else {}
        self.missed: list[float] = []  # per scored sample: share of joints the estimator did not find
        self.unsupported: dict[str, str] = {}  # sample id -> why the estimator cannot score it

    def reset(self) -> None:
        super().reset()
        self.missed = []
        self.unsupported = {}

    def protocol(self) -> dict[str, Any]:
        heldout = getattr(self.estimator, "heldout", None) or {}
        test = heldout.get("test") or {}
        return {
            "estimator": type(self.estimator).__name__ if self.estimator is not None else None,
            **self._weights_stamp,
            "estimator_heldout": {
                "split": "test",
                "mean_px": test.get("mean_px"),
                "median_px": test.get("median_px"),
                "pck": test.get("pck"),
                "mp4_mean_px": (heldout.get("test_mp4") or {}).get("mean_px"),
                "num_frames": test.get("num_frames"),
            }
            if test
            else None,
            "unit": "pixels of the generated frame",
            "reduction": "mean over frames and joints",
            "missed_joint_share": float(np.mean(self.missed)) if self.missed else None,
            "unsupported_samples": len(self.unsupported),
            "unsupported_reason": next(iter(self.unsupported.values()), None),
        }

    def update(
        self,
        pred: Tensor | np.ndarray,
        target: Tensor | np.ndarray | None = None,
        sample_id: str | None = None,
        **extras: Any,
    ) -> float | None:
        if self.skipped is None:
            names = getattr(self.estimator, "joint_names", None)
            gt = _gt_from_extras(self.name, extras)
            if names is not None and tuple(names) != gt.joint_names:
                key = sample_id if sample_id is not None else f"unsupported_{len(self.unsupported)}"
                self.unsupported[key] = (
                    f"ground truth has {len(gt.joint_names)} joints ({gt.joint_names[0]}, ...), the estimator "
                    f"estimates {len(names)} ({names[0]}, ...): two-character samples need a two-character "
                    "estimator"
                )
                return None
            extras = {**extras, "gt": gt}
        return super().update(pred, target, sample_id, **extras)

    def _score(self, pred: Tensor, target: Tensor | None = None, **extras: Any) -> float | None:
        gt = _gt_from_extras(self.name, extras)
        frames = (
            to_frames(pred).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )  # [N, 3, H, W] -> [N, H, W, 3]
        estimated = np.asarray(self.estimator(frames), dtype=np.float64)
        if estimated.shape != gt.joints.shape:
            raise ValueError(
                f"{self.name}: estimator returned joints {estimated.shape}, ground truth has {gt.joints.shape} "
                "(frames, joints, 2)"
            )
        dist = np.linalg.norm(estimated - gt.joints, axis=-1)  # [N, J, 2] -> [N, J]
        found = ~np.isnan(dist)
        self.missed.append(float(1.0 - found.mean()))
        return float(dist[found].mean()) if found.any() else None


def _foreground_pixels(frames: Tensor, mask: Any, background: Any, threshold: float) -> tuple[Tensor, str]:
    """RGB of foreground pixels [P, 3] (float64) and how the mask was made (see `foreground_mask`)."""
    fg, source = foreground_mask(frames, mask, background, threshold, BORDER)
    if fg.shape != (frames.shape[0], *frames.shape[-2:]):
        raise ValueError(f"mask {tuple(fg.shape)} does not match frames {tuple(frames.shape)}")
    return frames.permute(0, 2, 3, 1)[fg].double(), source  # [N, H, W, 3][mask] -> [P, 3]


def palette_assignment(pixels: Tensor, palette: Tensor, max_distance: float) -> tuple[Tensor, Tensor]:
    """Nearest palette colour per pixel: (index [P] with K = 'other' beyond max_distance, distance [P])."""
    dist = torch.cdist(pixels, palette.double())  # [P, 3] x [K, 3] -> [P, K]
    nearest, index = dist.min(dim=1)
    index = torch.where(nearest > max_distance, torch.full_like(index, palette.shape[0]), index)
    return index, nearest


class IdentityColorConsistency(Metric):
    """Does the generated character wear the target identity's colours, in the right proportions?

    Foreground pixels (mask given, else difference with the `background` plate extra when given, else with the
    frame border's median colour; see `foreground_mask`) are assigned to the nearest `identity_colors`
    entry by Euclidean RGB distance, or to an extra 'other' bin when farther than `max_distance`.
        histogram_intersection: sum_k min(h_pred[k], h_gt[k]) over the K + 1 normalised bins, where h_gt comes
            from the ground-truth frames inside the target mask; in [0, 1], higher is better.
        palette_distance: mean distance (0..255 RGB units) from each generated foreground pixel to its nearest
            identity colour; lower is better.
    Pixels of all frames are pooled per sample.
    """

    def __init__(
        self,
        statistic: str = "histogram_intersection",
        max_distance: float = 60.0,
        threshold: float = 30.0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if statistic not in COLOR_STATISTICS:
            raise ValueError(
                f"identity colour statistic must be one of {COLOR_STATISTICS}, got {statistic!r}"
            )
        self.statistic, self.max_distance, self.threshold = statistic, float(max_distance), float(threshold)
        self.higher_is_better = statistic == "histogram_intersection"
        self.name = name or ("identity_color_hist" if self.higher_is_better else "identity_color_dist")
        self.mask_sources: Counter = Counter()

    def reset(self) -> None:
        super().reset()
        self.mask_sources = Counter()

    def protocol(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "color_space": "rgb",
            "other_bin_beyond": self.max_distance,
            **fallback_protocol(self.mask_sources, self.threshold, BORDER),
        }

    def _score(
        self,
        pred: Tensor,
        target: Tensor | None = None,
        pred_mask: Any = None,
        target_mask: Any = None,
        background: Any = None,
        **extras: Any,
    ) -> float | None:
        palette = torch.from_numpy(_gt_from_extras(self.name, extras).identity_colors.astype(np.float64))
        pixels, source = _foreground_pixels(to_frames(pred), pred_mask, background, self.threshold)
        self.mask_sources[source] += 1
        if pixels.shape[0] == 0:
            return None if self.statistic == "palette_distance" else 0.0
        index, nearest = palette_assignment(pixels, palette, self.max_distance)
        if self.statistic == "palette_distance":
            return float(nearest.mean())
        if target is None:
            raise ValueError(f"{self.name} (histogram_intersection) needs the ground-truth frames")
        gt_pixels, source = _foreground_pixels(to_frames(target), target_mask, background, self.threshold)
        self.mask_sources[source] += 1
        if gt_pixels.shape[0] == 0:
            raise ValueError(
                f"{self.name}: the ground-truth foreground is empty; cannot build its colour histogram"
            )
        gt_index, _ = palette_assignment(gt_pixels, palette, self.max_distance)
        bins = palette.shape[0] + 1
        h_pred = torch.bincount(index, minlength=bins).double() / index.numel()
        h_gt = torch.bincount(gt_index, minlength=bins).double() / gt_index.numel()
        return float(torch.minimum(h_pred, h_gt).sum())
