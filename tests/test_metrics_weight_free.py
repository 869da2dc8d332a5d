"""Weight-free and synthetic-world metrics on hand-made frames with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scail_lab.metrics import (
    IdentityColorConsistency,
    JointPositionError,
    MaskIoU,
    SyntheticGT,
    TemporalDiffError,
    TemporalFlicker,
    background_difference_mask,
    compute_weight_free,
)

RED, BLUE, GREY = (230, 20, 20), (20, 20, 230), (40, 40, 40)


def _scene(
    rects: list[tuple[int, int, int, int, tuple[int, int, int]]], n: int = 4, size: int = 32
) -> np.ndarray:
    """uint8 [n, size, size, 3] grey background with filled rectangles (y0, y1, x0, x1, colour)."""
    frames = np.empty((n, size, size, 3), np.uint8)
    frames[:] = GREY
    for y0, y1, x0, x1, colour in rects:
        frames[:, y0:y1, x0:x1] = colour
    return frames


def test_mask_iou_given_and_derived_masks() -> None:
    pred_mask = np.zeros((2, 20, 20), bool)
    target_mask = np.zeros((2, 20, 20), bool)
    pred_mask[:, 0:10, 0:10] = True  # 100 px
    target_mask[:, 5:15, 0:10] = True  # 100 px, overlap 50 -> IoU 50 / 150
    frames = np.zeros((2, 20, 20, 3), np.uint8)
    assert MaskIoU().update(frames, frames, pred_mask=pred_mask, target_mask=target_mask) == pytest.approx(
        1 / 3
    )
    # derived by background difference: rectangles of 8x8 and 8x12 sharing 8x8 -> IoU 64 / 96
    pred = _scene([(4, 12, 4, 12, RED)])
    target = _scene([(4, 12, 4, 16, BLUE)])
    assert MaskIoU().update(pred, target) == pytest.approx(64 / 96)
    # both empty everywhere -> the masks agree
    empty = _scene([])
    assert MaskIoU().update(empty, empty) == 1.0


def test_background_difference_mask_uses_border_median() -> None:
    frames = torch.from_numpy(_scene([(10, 20, 10, 20, RED)], n=1)).permute(0, 3, 1, 2).float()
    mask = background_difference_mask(frames)
    assert mask.shape == (1, 32, 32) and int(mask.sum()) == 100 and bool(mask[0, 15, 15])
    with pytest.raises(ValueError, match="border"):
        background_difference_mask(frames, border=16)


def test_temporal_flicker_and_diff_error() -> None:
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    frames[1::2] = 10  # 0, 10, 0, 10: every step changes by 10
    assert TemporalFlicker().update(frames, None) == pytest.approx((255 - 10) / 255)
    steady = np.full((4, 8, 8, 3), 77, np.uint8)
    assert TemporalFlicker().update(steady, None) == 1.0
    # target changes by +10 each step (real motion), pred by +10 then -10: diff errors 0, 20, 0 -> mean 20/3
    target = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 10, 20, 30)])
    pred = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 10, 0, 10)])
    assert TemporalDiffError().update(pred, target) == pytest.approx((20 / 3) / 255)
    assert TemporalDiffError().update(target + 5, target) == 0.0  # an offset is not a temporal error
    with pytest.raises(ValueError, match="at least 2 frames"):
        TemporalFlicker().update(frames[:1], None)


def _gt(num_frames: int = 4, colours=(RED, BLUE)) -> SyntheticGT:
    joints = [[[10.0 + t, 5.0], [20.0, 8.0 + 2 * t], [3.0, 4.0]] for t in range(num_frames)]
    return SyntheticGT.from_dict(
        {
            "joints": joints,
            "joint_names": ["head", "hand", "foot"],
            "identity_colors": [list(c) for c in colours],
            "fps": 8,
        }
    )


class OracleEstimator:
    def __init__(self, joints: np.ndarray, offset=(0.0, 0.0), drop: tuple[int, int] | None = None) -> None:
        self.joints, self.offset, self.drop = joints, np.asarray(offset), drop

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        assert frames.dtype == np.uint8 and frames.shape[-1] == 3
        out = self.joints + self.offset
        if self.drop is not None:
            out = out.copy()
            out[self.drop] = np.nan
        return out


def test_joint_error_oracle_perturbed_and_missing() -> None:
    gt = _gt()
    frames = _scene([])
    assert JointPositionError(OracleEstimator(gt.joints)).update(frames, None, gt=gt) == 0.0
    metric = JointPositionError(OracleEstimator(gt.joints, offset=(3.0, 4.0), drop=(1, 2)))
    assert metric.update(frames, None, gt=gt) == pytest.approx(5.0)  # 3-4-5 shift on every found joint
    assert metric.compute().protocol["missed_joint_share"] == pytest.approx(1 / 12)
    # a per-joint shift of known size: joint 0 by 6 px, others exact -> mean 2 px
    shift = np.zeros_like(gt.joints)
    shift[:, 0, 0] = 6.0
    assert JointPositionError(lambda f: gt.joints + shift).update(frames, None, gt=gt) == pytest.approx(2.0)
    bad = JointPositionError(lambda f: gt.joints[:, :2])
    with pytest.raises(ValueError, match=r"\(4, 2, 2\).*\(4, 3, 2\)"):
        bad.update(frames, None, gt=gt)
    none = JointPositionError(on_missing="skip")
    assert none.update(frames, None, gt=gt) is None and "no joint estimator" in none.compute().skipped
    assert "joint_estimator.safetensors" in none.skipped


def test_identity_colour_consistency_hand_made() -> None:
    gt = _gt()
    half = _scene([(4, 12, 4, 12, RED), (12, 20, 4, 12, BLUE)])  # 64 red + 64 blue pixels
    all_red = _scene([(4, 20, 4, 12, RED)])  # 128 red
    hist = IdentityColorConsistency("histogram_intersection")
    assert hist.update(half, half, gt=gt) == pytest.approx(1.0)
    assert hist.update(all_red, half, gt=gt) == pytest.approx(0.5)  # min(1, .5) + min(0, .5)
    green = _scene([(4, 20, 4, 12, (20, 230, 20))])  # far from every identity colour -> 'other' bin
    assert hist.update(green, half, gt=gt) == pytest.approx(0.0)
    off_red = _scene([(4, 12, 4, 12, (225, 30, 10))])  # distance sqrt(25 + 100 + 100) = 15 to RED
    dist = IdentityColorConsistency("palette_distance")
    assert dist.name == "identity_color_dist" and dist.higher_is_better is False
    assert dist.update(off_red, half, gt=gt) == pytest.approx(15.0)
    # an explicit mask restricts the pixels: only the red half counts
    mask = np.zeros((4, 32, 32), bool)
    mask[:, 4:12, 4:12] = True
    assert hist.update(half, half, pred_mask=mask, gt=gt) == pytest.approx(0.5)


def test_gt_json_contract(tmp_path) -> None:
    path = tmp_path / "gt.json"
    path.write_text(
        json.dumps(
            {
                "joints": [[[1, 2]], [[3, 4]]],
                "joint_names": ["nose"],
                "identity_colors": [[255, 0, 0]],
                "fps": 8,
            }
        )
    )
    gt = SyntheticGT.load(path)
    assert (
        gt.joints.shape == (2, 1, 2) and gt.joint_names == ("nose",) and gt.identity_colors.dtype == np.uint8
    )
    path.write_text(
        json.dumps({"joints": [[[1, 2, 3]]], "joint_names": ["nose"], "identity_colors": [[1, 2, 3]]})
    )
    with pytest.raises(ValueError, match="joints must be"):
        SyntheticGT.load(path)
    path.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        SyntheticGT.load(path)
    with pytest.raises(ValueError, match="identity_colors"):
        SyntheticGT.from_dict({"joints": [], "joint_names": []})


def test_compute_weight_free_layouts_ranges_and_synthetic_extras() -> None:
    gt = _gt()
    target = _scene([(4, 12, 4, 12, RED), (12, 20, 4, 12, BLUE)])
    pred = target.copy()
    pred[:, 12:20, 4:12] = RED  # the blue half turned red
    target_mask = np.zeros((4, 32, 32), bool)
    target_mask[:, 4:20, 4:12] = True
    base = compute_weight_free(
        pred,
        target,
        target_mask=target_mask,
        gt=gt,
        joint_estimator=OracleEstimator(gt.joints, offset=(0.0, 2.0)),
    )
    assert set(base) == {
        "psnr",
        "ssim",
        "l1",
        "temporal_flicker",
        "temporal_diff_error",
        "mask_iou",
        "identity_color_hist",
        "identity_color_dist",
        "joint_error_px",
    }
    assert base["mask_iou"] == 1.0 and base["identity_color_hist"] == pytest.approx(0.5)
    assert base["joint_error_px"] == pytest.approx(2.0) and base["temporal_flicker"] == 1.0
    mse = 64 * 3 * 0 + 64 * ((230 - 20) ** 2 + 0 + (20 - 230) ** 2) / (32 * 32 * 3)  # red vs blue on 64 px
    assert base["psnr"] == pytest.approx(10 * np.log10(255**2 / mse))
    # [3, N, H, W] float in [-1, 1] gives the same numbers
    as_float = [torch.from_numpy(v).permute(3, 0, 1, 2).float() / 127.5 - 1 for v in (pred, target)]
    again = compute_weight_free(*as_float, target_mask=target_mask, layout="CNHW", value_range=(-1, 1))
    for key in ("psnr", "ssim", "l1", "mask_iou"):
        assert again[key] == pytest.approx(base[key], rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="differ"):
        compute_weight_free(pred[:2], target)


def test_compute_weight_free_single_frame_has_no_temporal_metrics() -> None:
    frame = _scene([(4, 12, 4, 12, RED)], n=1)
    assert set(compute_weight_free(frame, frame)) == {"psnr", "ssim", "l1"}
