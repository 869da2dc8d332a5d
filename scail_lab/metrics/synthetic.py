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

from scail_lab.metrics.base import Metric, file_protocol, resolve_weights, to_frames, to_uint8_frames
from scail_lab.metrics.joint_estimator import JointHeatmapEstimator
from scail_lab.metrics.weight_free import fallback_protocol, foreground_mask

COLOR_STATISTICS = ("histogram_intersection", "palette_distance")
ESTIMATOR_FILE = "joint_estimator.safetensors"  # looked up in $SCAIL_EVAL_WEIGHTS_DIR
BORDER = 2  # frame-border width of the border-median fallback (no plate, no mask)
BOX_MARGIN = 0.25  # top-down joint estimation: each side of a character's joint box grows by this share of its height


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


def character_count(gt_names: tuple[str, ...], names: tuple[str, ...]) -> int | None:
    """How many characters a gt.json with `gt_names` holds, each with the estimator's `names`: 1 when they are the
    same, P when they are `p0_<name>, ..., p{P-1}_<name>` (the world's multi-character layout), else None."""
    if tuple(gt_names) == tuple(names):
        return 1
    count = len(gt_names) // max(len(names), 1)
    if count > 1 and tuple(gt_names) == tuple(f"p{p}_{n}" for p in range(count) for n in names):
        return count
    return None


def character_boxes(joints: np.ndarray, height: int, width: int, margin: float = BOX_MARGIN) -> np.ndarray:
    """Per-frame boxes around one character's joints [N, J, 2] -> int [N, 4] (x0, y0, x1, y1), end-exclusive.

    The joint extent grows on every side by `margin` x its height (at least 2 px; the head, hands and feet
    reach past their joints) and is clipped to the frame. NaN joints are left out."""
    lo, hi = np.nanmin(joints, axis=1), np.nanmax(joints, axis=1)  # [N, 2] (x, y)
    pad = np.maximum(margin * (hi[:, 1] - lo[:, 1]), 2.0)[:, None]
    x0y0 = np.floor(lo - pad).clip(0, None)
    x1y1 = np.ceil(hi + pad + 1).clip(None, [width, height])
    return np.concatenate([x0y0, x1y1], axis=1).astype(np.int64)


def character_regions(
    gt_joints: np.ndarray, count: int, height: int, width: int, margin: float = BOX_MARGIN
) -> np.ndarray:
    """Where each of `count` characters is looked for: bool [P, N, H, W].

    A pixel belongs to character p when it lies in p's box (`character_boxes`) and its nearest ground-truth joint
    is one of p's, so where two boxes overlap each pixel goes to the nearer character. gt_joints [N, P*J, 2] in
    p0_, p1_, ... order; NaN joints are left out."""
    n = gt_joints.shape[0]
    per_char = gt_joints.shape[1] // count
    joints = gt_joints.reshape(n, count, per_char, 2)
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    regions = np.zeros((count, n, height, width), bool)
    for p in range(count):
        for i, (x0, y0, x1, y1) in enumerate(character_boxes(joints[:, p], height, width, margin)):
            regions[p, i, y0:y1, x0:x1] = True
    for i in range(n):  # one frame at a time: [P, J, H, W] distances stay small at any resolution
        dx = xs[None, None] - joints[i, :, :, 0, None, None].astype(np.float32)
        dy = ys[None, None] - joints[i, :, :, 1, None, None].astype(np.float32)
        nearest = np.fmin.reduce(dx * dx + dy * dy, axis=1)  # [P, H, W]; fmin skips NaN joints
        regions[:, i] &= nearest == nearest.min(axis=0, keepdims=True)
    return regions


def isolate_character(frames: np.ndarray, plate: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The frame inside `region` (bool [N, H, W]), the background plate elsewhere: uint8 [N, H, W, 3].

    plate: uint8 [N, H, W, 3] or [1, H, W, 3]."""
    return np.where(region[..., None], frames, plate)


def estimate_top_down(
    estimator: JointEstimator,
    frames: np.ndarray,
    plate: np.ndarray,
    gt_joints: np.ndarray,
    count: int,
    margin: float = BOX_MARGIN,
) -> np.ndarray:
    """Joints of `count` characters, one estimator pass each: character p alone in its region
    (`character_regions`) on the plate (`isolate_character`). frames uint8 [N, H, W, 3]; plate [N or 1, H, W, 3];
    gt_joints [N, P*J, 2] in p0_, p1_, ... order -> float64 [N, P*J, 2] in the same order."""
    if plate.shape[1:] != frames.shape[1:] or plate.shape[0] not in (1, frames.shape[0]):
        raise ValueError(f"background plate {plate.shape} does not match frames {frames.shape}")
    regions = character_regions(gt_joints, count, *frames.shape[1:3], margin)
    parts = [np.asarray(estimator(isolate_character(frames, plate, region)), dtype=np.float64) for region in regions]
    return np.concatenate(parts, axis=1)


def estimate_joints(
    estimator: JointEstimator, frames: np.ndarray, gt: SyntheticGT, count: int = 1, plate: np.ndarray | None = None,
    box_margin: float = BOX_MARGIN,
) -> np.ndarray:
    """The estimator's joints in the layout of the ground truth's, float64 [N, J, 2] (x, y; NaN: not found).

    frames: uint8 [N, H, W, 3]; `count` characters (gt joints p0_..., p1_... over the estimator's names), each
    estimated alone on the background `plate` (uint8 [N, H, W, 3]) when count > 1 (`estimate_top_down`)."""
    if count == 1:
        estimated = np.asarray(estimator(frames), dtype=np.float64)
    else:
        if plate is None:
            raise ValueError(f"a {count}-character sample needs its background plate")
        estimated = estimate_top_down(estimator, frames, plate, gt.joints, count, box_margin)
    if estimated.shape != gt.joints.shape:
        raise ValueError(f"estimator returned joints {estimated.shape}, ground truth has {gt.joints.shape} "
                         "(frames, joints, 2)")  # fmt: skip
    return estimated


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

    An estimator with a `joint_names` attribute scores samples whose gt.json has those joints, or P characters'
    worth of them (`p0_<name>, p1_<name>, ...`: two-character samples). Those are scored top-down, as pose
    benchmarks do with ground-truth boxes: each character's joints are estimated in a copy of the generated frame
    that keeps only that character's region and shows the sample's background plate (`background` extra, e.g.
    target_background.mp4) everywhere else. The region is the character's ground-truth joint box (grown by
    `box_margin` x its height each side) minus the pixels nearer to another character's joints. Without a plate,
    or with other joint names, a sample is skipped and counted in the protocol (`unsupported_samples`, `unsupported_reason`). The
    protocol also carries the estimator's own held-out error (`estimator_heldout`), the floor under which
    differences between runs mean nothing.
    """

    name = "joint_error_px"
    higher_is_better = False

    def __init__(
        self,
        estimator: JointEstimator | None = None,
        weights: str | os.PathLike | None = None,
        on_missing: str = "error",
        name: str | None = None,
        box_margin: float = BOX_MARGIN,
    ) -> None:
        super().__init__()
        self.name = name or "joint_error_px"
        if not 0.0 <= box_margin <= 2.0:
            raise ValueError(f"{self.name}: box_margin must be in [0, 2] (a share of the character height), got {box_margin}")
        self.box_margin = float(box_margin)
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
        self.characters: Counter = Counter()  # characters per scored sample -> samples

    def reset(self) -> None:
        super().reset()
        self.missed = []
        self.unsupported = {}
        self.characters = Counter()

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
                "two_character_mean_px": (heldout.get("test_two_character") or {}).get("mean_px"),
                "num_frames": test.get("num_frames"),
            }
            if test
            else None,
            "unit": "pixels of the generated frame",
            "reduction": "mean over frames and joints",
            "missed_joint_share": float(np.mean(self.missed)) if self.missed else None,
            "unsupported_samples": len(self.unsupported),
            "unsupported_reason": next(iter(self.unsupported.values()), None),
            "samples_by_characters": {str(k): v for k, v in sorted(self.characters.items())},
            "multi_character": f"top-down: each character alone on the background plate, in its ground-truth joint "
            f"box (+{self.box_margin:g} x its height each side) minus pixels nearer another character's joints",
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
            count = character_count(gt.joint_names, tuple(names)) if names is not None else 1
            reason = None
            if count is None:
                reason = (f"ground truth has {len(gt.joint_names)} joints ({gt.joint_names[0]}, ...), the estimator "
                          f"estimates {len(names)} ({names[0]}, ...), neither one character's nor p0_/p1_/... copies")  # fmt: skip
            elif count > 1 and extras.get("background") is None:
                reason = (f"a {count}-character sample needs its background plate (target_background.mp4) to "
                          "estimate each character alone")  # fmt: skip
            if reason is not None:
                self.unsupported[sample_id if sample_id is not None else f"unsupported_{len(self.unsupported)}"] = reason
                return None
            extras = {**extras, "gt": gt, "num_characters": count}
        return super().update(pred, target, sample_id, **extras)

    def _score(
        self, pred: Tensor, target: Tensor | None = None, background: Any = None, num_characters: int = 1, **extras: Any
    ) -> float | None:
        gt = _gt_from_extras(self.name, extras)
        frames = to_uint8_frames(to_frames(pred))
        plate = to_uint8_frames(to_frames(background)) if num_characters > 1 else None
        # num_characters from update(): 1, or P for p0_/p1_/... ground truth over the estimator's joints
        try:
            estimated = estimate_joints(self.estimator, frames, gt, num_characters, plate, self.box_margin)
        except ValueError as err:
            raise ValueError(f"{self.name}: {err}") from err
        dist = np.linalg.norm(estimated - gt.joints, axis=-1)  # [N, J, 2] -> [N, J]
        self.characters[num_characters] += 1
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
