"""tools/pose_by_frame.py: per-frame joint error from eval manifests, grouped like the light VAE's latent frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.manifest import ManifestRow, write_manifest
from scail_lab.data.media import encode_video
from tools import pose_by_frame

NAMES = ("head", "l_ankle")


class OffsetEstimator:
    """Returns the true joints shifted right by (the frame's mean value / 10) px: a frame of value v reads v/10 px."""

    joint_names = NAMES

    def __init__(self, joints: dict[int, np.ndarray]) -> None:
        self.joints = joints  # keyed by the frames' first pixel value of frame 0, one clip each

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        truth = self.joints[int(frames[0, 0, 0, 0]) // 100]
        out = truth.copy()
        out[..., 0] += frames.reshape(len(frames), -1).mean(axis=1)[:, None] / 10.0
        return out


def _clip(root, name: str, clip: int, mode: str, values: list[int]) -> tuple[ManifestRow, np.ndarray]:
    folder = root / name
    folder.mkdir()
    joints = np.random.default_rng(clip).uniform(10, 50, size=(len(values), len(NAMES), 2))
    joints[:, 1, 1] = 50.0 - 2.0 * np.arange(len(values))  # the ankle rises 2 px a frame: frame k is 2k px off the ground
    (folder / "gt.json").write_text(json.dumps({"joints": joints.tolist(), "joint_names": list(NAMES),
                                                "identity_colors": [[1, 2, 3]]}))  # fmt: skip
    (folder / "meta.json").write_text(json.dumps({"mode": mode, "num_characters": 1}))
    frames = np.stack([np.full((64, 64, 3), v, np.uint8) for v in values])
    frames[0, 0, 0, 0] = 100 * clip  # which clip this is, for the estimator (moves frame 0's mean by < 0.03)
    (folder / "video.mp4").write_bytes(encode_video(frames, 8.0))
    (folder / "target.mp4").write_bytes(encode_video(frames, 8.0))
    return ManifestRow(id=name, pred=str(folder / "video.mp4"), target=str(folder / "target.mp4"),
                       gt_json=str(folder / "gt.json")), joints  # fmt: skip


def test_groups_are_frame_zero_then_fours_then_the_mean(tmp_path):
    values = [0, 10, 20, 30, 40, 50, 60, 70, 80]  # frame k reads k px (frame 0 a hair above 0: its marker pixel)
    row_a, joints_a = _clip(tmp_path, "a", 1, "animate", values)
    row_b, joints_b = _clip(tmp_path, "b", 2, "replace", values)
    est = OffsetEstimator({1: joints_a, 2: joints_b})
    rows = pose_by_frame.select([row_a, row_b], "animate", 1)
    assert [r.id for r in rows] == ["a"]
    result = pose_by_frame.pose_by_frame({"run": rows}, est, group=4, progress=False)
    groups = result["runs"]["run"]["groups"]
    assert groups[0] == pytest.approx(100 / (64 * 64 * 3) / 10.0, abs=1e-9)  # frame 0: only the marker pixel
    assert groups[1:] == pytest.approx([2.5, 6.5, 4.0], abs=0.01)  # frames 1-4, 5-8, the mean of 0..8
    assert result["runs"]["ground truth"]["groups"] == pytest.approx(groups)  # the same video as target here
    lift = result["runs"]["run"]["by_lift"]  # edges 2, 4, 8 px: frame 0 | frame 1 | frames 2-3 | frames 4-8
    assert [b["frames"] for b in lift] == [1, 1, 2, 5] and [b["lift"] for b in lift] == [[0, 2], [2, 4], [4, 8], [8, None]]
    assert [b["error"] for b in lift] == pytest.approx([groups[0], 1.0, 2.5, 6.0], abs=0.01)
    assert all(b["dy"] == pytest.approx(0.0, abs=1e-9) for b in lift)  # the estimator errs along x only
    with pytest.raises(ValueError, match="increasing"):
        pose_by_frame.pose_by_frame({"run": rows}, est, lift_edges=(4.0, 2.0), progress=False)
    text = pose_by_frame.markdown(result, reference="ground truth")
    assert "| run | 1 | 0.00 | 2.50 | 6.50 | 4.00 |" in text and "| run | +0.00 | +0.00 | +0.00 | +0.00 |" in text
    assert "| run | >= 8 | 5 | 6.00 | +0.00 |" in text


def test_missing_files_are_named_before_any_decoding(tmp_path):
    row, joints = _clip(tmp_path, "a", 1, "animate", [0, 10, 20, 30, 40])
    gone = ManifestRow(id="a", pred=str(tmp_path / "nope.mp4"), target=row.target, gt_json=row.gt_json)
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        pose_by_frame.pose_by_frame({"run": [gone]}, OffsetEstimator({1: joints}), progress=False)


def test_cli_writes_tables_and_numbers(tmp_path, monkeypatch):
    values = [0, 10, 20, 30, 40]
    row, joints = _clip(tmp_path, "a", 1, "animate", values)
    write_manifest([row], tmp_path / "base.csv")
    write_manifest([row], tmp_path / "vae_recon.csv")
    monkeypatch.setattr("scail_lab.metrics.joint_estimator.JointHeatmapEstimator.load",
                        staticmethod(lambda path: OffsetEstimator({1: joints})))  # fmt: skip
    weights = tmp_path / "est.safetensors"
    weights.write_bytes(b"x")
    out = tmp_path / "t" / "pose.md"
    assert pose_by_frame.main([str(tmp_path / "base.csv"), str(tmp_path / "vae_recon.csv"), "--estimator", str(weights),
                               "--reference", "vae_recon", "--out", str(out)]) == 0  # fmt: skip
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["runs"]["base"]["groups"][1:] == pytest.approx([2.5, 2.0], abs=0.01)
    assert "Minus `vae_recon`" in out.read_text()
    with pytest.raises(SystemExit, match="none of the runs"):
        pose_by_frame.main([str(tmp_path / "base.csv"), "--estimator", str(weights), "--reference", "x"])
