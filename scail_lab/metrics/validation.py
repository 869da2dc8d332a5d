"""One call for the validation callback: every weight-free metric on one sampled video against its target.

It builds the same metric classes the eval runner uses, so callback numbers and eval tables agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from scail_lab.metrics.base import Frames
from scail_lab.metrics.pixel import L1, PSNR, SSIM
from scail_lab.metrics.synthetic import (
    IdentityColorConsistency,
    JointEstimator,
    JointPositionError,
    SyntheticGT,
)
from scail_lab.metrics.weight_free import MaskIoU, TemporalDiffError, TemporalFlicker


def compute_weight_free(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    pred_mask: Tensor | np.ndarray | None = None,
    target_mask: Tensor | np.ndarray | None = None,
    layout: str = "auto",
    value_range: tuple[float, float] = (0.0, 1.0),
    gt: SyntheticGT | dict[str, Any] | None = None,
    joint_estimator: JointEstimator | None = None,
    background: Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """Weight-free metrics of one generated video against its ground truth.

    pred, target: [N, 3, H, W], [3, N, H, W] or [N, H, W, 3]; uint8 (0..255) or float in `value_range`
        (e.g. (-1, 1) for decoder output). `layout` resolves the [N, 3, ...] vs [3, N, ...] ambiguity at N = 3.
    pred_mask, target_mask: optional foreground masks ([N, H, W] or mask videos). `mask_iou` is reported when
        `target_mask` is given (a missing `pred_mask` is derived by background difference).
    background: the target's background plate (the scene with no character, same camera; same layout and range
        as the frames, one frame or N): missing masks are derived by difference with it instead of the border.
    gt: synthetic-world ground truth (gt.json contents) enables `identity_color_hist` / `identity_color_dist`,
        and with a `joint_estimator` also `joint_error_px`.

    Returns {"psnr", "ssim", "l1", "temporal_flicker", "temporal_diff_error", [...]} as floats (the temporal
    pair only for N >= 2 frames).
    """
    p = Frames.of(pred, layout, value_range)
    t = Frames.of(target, layout, value_range)
    if p.data.shape != t.data.shape:
        raise ValueError(
            f"compute_weight_free: pred {tuple(p.data.shape)} and target {tuple(t.data.shape)} differ"
        )
    plate = Frames.of(background, layout, value_range) if background is not None else None
    metrics: list[Any] = [PSNR(), SSIM(), L1()]
    if p.data.shape[0] >= 2:  # temporal metrics need a frame pair
        metrics += [TemporalFlicker(), TemporalDiffError()]
    if target_mask is not None:
        metrics.append(MaskIoU())
    if gt is not None:
        gt = gt if isinstance(gt, SyntheticGT) else SyntheticGT.from_dict(gt)
        metrics += [
            IdentityColorConsistency("histogram_intersection"),
            IdentityColorConsistency("palette_distance"),
        ]
        if joint_estimator is not None:
            metrics.append(JointPositionError(joint_estimator))
    out: dict[str, float] = {}
    for metric in metrics:
        value = metric.update(p, t, pred_mask=pred_mask, target_mask=target_mask, gt=gt, background=plate)
        if value is not None:
            out[metric.name] = float(value)
    return out
