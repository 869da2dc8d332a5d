"""Evaluation metrics for character animation, used by eval/, the validation callback and the tests.

Paired per-frame: PSNR, SSIM, L1, LPIPS. Set-level (Frechet): FID, FVD, FIDVID. Weight-free: MaskIoU,
TemporalFlicker, TemporalDiffError; synthetic world: JointPositionError (with JointHeatmapEstimator), IdentityColorConsistency.
See docs/EVAL.md for the exact protocols.
"""

from scail_lab.metrics.base import Frames, Metric, MetricResult, resolve_weights, to_frames, to_masks
from scail_lab.metrics.distribution import FID, FIDVID, FVD
from scail_lab.metrics.frechet import FeatureStats, frechet_distance
from scail_lab.metrics.joint_estimator import JointEstimatorConfig, JointHeatmapEstimator
from scail_lab.metrics.lpips import LPIPS
from scail_lab.metrics.pixel import L1, PSNR, SSIM
from scail_lab.metrics.synthetic import (
    IdentityColorConsistency,
    JointEstimator,
    JointPositionError,
    SyntheticGT,
)
from scail_lab.metrics.validation import compute_weight_free
from scail_lab.metrics.weight_free import (
    MaskIoU,
    TemporalDiffError,
    TemporalFlicker,
    background_difference_mask,
    foreground_mask,
    plate_difference_mask,
)

__all__ = [
    "FID",
    "FIDVID",
    "FVD",
    "Frames",
    "L1",
    "LPIPS",
    "PSNR",
    "SSIM",
    "FeatureStats",
    "IdentityColorConsistency",
    "JointEstimator",
    "JointEstimatorConfig",
    "JointHeatmapEstimator",
    "JointPositionError",
    "MaskIoU",
    "Metric",
    "MetricResult",
    "SyntheticGT",
    "TemporalDiffError",
    "TemporalFlicker",
    "background_difference_mask",
    "compute_weight_free",
    "foreground_mask",
    "frechet_distance",
    "plate_difference_mask",
    "resolve_weights",
    "to_frames",
    "to_masks",
]
