"""The synthetic-world joint estimator: soft-argmax, shapes, files, training, augmentation, and the metric
end to end through the eval runner with a tiny estimator file written here (no trained weights needed)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from eval.run import CONFIG_DIR, run_eval
from scail_lab.data.synthetic import SyntheticWorld
from scail_lab.data.synthetic.skeleton import JOINT_NAMES
from scail_lab.metrics import JointPositionError, SyntheticGT
from scail_lab.metrics.joint_estimator import (
    JointEstimatorConfig,
    JointHeatmapEstimator,
    flip_permutation,
    soft_argmax,
)
from scail_lab.metrics.joint_training import (
    AugmentConfig,
    FitConfig,
    augment_batch,
    fit_estimator,
    keypoint_loss,
    summarize_errors,
)
from scail_lab.metrics.synthetic import character_boxes, character_count, character_regions, isolate_character
from scail_lab.metrics.video_io import read_video

TINY = dict(widths=(4, 8, 8, 8), num_blocks=(1, 1))


def _tiny(seed: int = 0, names: tuple[str, ...] = JOINT_NAMES) -> JointHeatmapEstimator:
    torch.manual_seed(seed)
    estimator = JointHeatmapEstimator(JointEstimatorConfig(names, (64, 64), **TINY))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a lost buffer would change the outputs
        estimator.net.train()
        estimator.net(torch.rand(8, 3, 64, 64))
        estimator.net.eval()
    return estimator


@pytest.fixture(scope="module")
def world_samples():
    """The first two single-character and the first two-character sample of the world's val split."""
    world = SyntheticWorld()
    singles, pair = [], None
    for index in range(40):
        sample = world.sample("val", index)
        if sample.num_characters == 1 and len(singles) < 2:
            singles.append(sample)
        elif sample.num_characters == 2 and pair is None:
            pair = sample
        if len(singles) == 2 and pair is not None:
            return singles, pair
    raise AssertionError("val split has no two-character sample among the first 40")


# ---------------------------------------------------------------------------------------- soft-argmax


def test_soft_argmax_recovers_peaks_exactly() -> None:
    logits = torch.full((1, 3, 16, 16), -1e4)
    logits[0, 0, 5, 9] = 0.0  # one cell: its centre, (9.5 * 4 - 0.5, 5.5 * 4 - 0.5)
    logits[0, 1, 2:5, 10:13] = torch.tensor(
        [[1.0, 2.0, 1.0], [2.0, 5.0, 2.0], [1.0, 2.0, 1.0]]
    )  # symmetric blob
    logits[0, 2, 7, 3] = logits[0, 2, 7, 4] = 0.0  # two equal cells: the midpoint
    coords, probs = soft_argmax(logits)
    assert coords[0, 0].tolist() == [37.5, 21.5]
    assert coords[0, 1].tolist() == pytest.approx([11.5 * 4 - 0.5, 3.5 * 4 - 0.5], abs=1e-5)
    assert coords[0, 2].tolist() == [4.0 * 4 - 0.5, 7.5 * 4 - 0.5]
    assert probs.sum(dim=(-2, -1))[0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # stride 1: cell centres are the pixel indices themselves
    assert soft_argmax(logits[:, :1], stride=1)[0][0, 0].tolist() == [9.0, 5.0]


def test_flip_permutation_swaps_sides() -> None:
    perm = flip_permutation(JOINT_NAMES)
    assert [JOINT_NAMES[i] for i in perm][:4] == ["head", "neck", "r_shoulder", "l_shoulder"]
    assert perm[JOINT_NAMES.index("l_ankle")] == JOINT_NAMES.index("r_ankle")
    assert flip_permutation(["p0_l_wrist", "p0_r_wrist", "p1_head"]) == [1, 0, 2]


# ---------------------------------------------------------------------------------------- estimator


class _Spike(nn.Module):
    """Stands in for the net: a one-hot heatmap per joint at fixed cells."""

    def __init__(self, cells: list[tuple[int, int]]) -> None:
        super().__init__()
        self.cells = cells

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.full((images.shape[0], len(self.cells), images.shape[2] // 4, images.shape[3] // 4), -1e4)
        for j, (row, col) in enumerate(self.cells):
            out[:, j, row, col] = 0.0
        return out


def test_estimator_shapes_and_frame_size_mapping() -> None:
    estimator = _tiny()
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    joints = estimator(frames)
    assert joints.shape == (5, 14, 2) and joints.dtype == np.float64 and np.isfinite(joints).all()
    assert (joints >= -0.5).all() and (joints <= 63.5).all()
    assert estimator(np.zeros((3, 96, 128, 3), np.uint8)).shape == (3, 14, 2)
    # coordinates map back through the align_corners=False resize: x_frame = (x + 0.5) * W / w - 0.5
    spike = JointHeatmapEstimator(
        JointEstimatorConfig(("a", "b"), (64, 64), **TINY), net=_Spike([(0, 0), (3, 15)])
    )
    out = spike(np.zeros((2, 96, 128, 3), np.uint8))
    assert out[0].tolist() == [
        [(1.5 + 0.5) * 2 - 0.5, (1.5 + 0.5) * 1.5 - 0.5],
        [(61.5 + 0.5) * 2 - 0.5, (13.5 + 0.5) * 1.5 - 0.5],
    ]
    with pytest.raises(ValueError, match="uint8"):
        estimator(frames.astype(np.float32))
    with pytest.raises(ValueError, match="multiples of 8"):
        JointEstimatorConfig(JOINT_NAMES, (60, 64))


def test_save_load_round_trip_is_bit_identical(tmp_path) -> None:
    estimator = _tiny(seed=3)
    estimator.heldout = {"test": {"mean_px": 1.25, "pck": {"2px": 0.9}}}
    frames = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    path = estimator.save(tmp_path / "est.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["est.safetensors"]  # no temp file left behind
    loaded = JointHeatmapEstimator.load(path)
    assert loaded.config == estimator.config and loaded.heldout == estimator.heldout
    assert np.array_equal(loaded(frames), estimator(frames))
    for key, value in estimator.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key

    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        JointHeatmapEstimator.load(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="bad.safetensors"):
        JointHeatmapEstimator.load(tmp_path / "bad.safetensors")
    other = JointHeatmapEstimator(JointEstimatorConfig(JOINT_NAMES, (64, 64), (4, 8, 8, 16), (1, 1)))
    tensors = {k: v.clone() for k, v in other.net.state_dict().items()}
    from safetensors.torch import save_file

    metadata = {
        "format": "scail_lab.joint_heatmap_estimator",
        "config": json.dumps(estimator.config.to_dict()),
    }
    save_file(tensors, str(tmp_path / "mismatch.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match="mismatch.safetensors: .*shape"):
        JointHeatmapEstimator.load(tmp_path / "mismatch.safetensors")


# ---------------------------------------------------------------------------------------- training


def test_keypoint_loss_values() -> None:
    logits = torch.full((1, 2, 16, 16), -1e4)
    logits[0, 0, 4, 6] = logits[0, 1, 8, 8] = 0.0
    joints = torch.tensor([[[6 * 4 + 1.5, 4 * 4 + 1.5], [8 * 4 + 1.5 + 3.0, 8 * 4 + 1.5 - 4.0]]])
    loss, stats = keypoint_loss(logits, joints, (64, 64), heatmap_weight=0.0)
    assert stats["l1_px"] == pytest.approx(3.5) and float(loss) == pytest.approx(3.5)  # (0 + 7) / 2 joints
    outside = joints.clone()
    outside[0, 1] = torch.tensor([70.0, 10.0])  # off the image: left out
    assert keypoint_loss(logits, outside, (64, 64), heatmap_weight=0.0)[1]["l1_px"] == 0.0


def test_augmentation_moves_joints_with_the_pixels() -> None:
    names = ("l_hand", "r_hand", "head")
    height, width, batch = 48, 64, 12
    joints = torch.stack([torch.linspace(20, 44, batch)[:, None].expand(batch, 3) + torch.tensor([-6.0, 6.0, 0.0]),
                          torch.linspace(18, 30, batch)[:, None].expand(batch, 3) + torch.tensor([0.0, 2.0, -6.0])], -1)  # fmt: skip
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    blobs = torch.exp(
        -((xx - joints[..., 0, None, None]) ** 2 + (yy - joints[..., 1, None, None]) ** 2) / 4.5
    )
    for flip in (0.0, 1.0):
        config = AugmentConfig(flip=flip, scale=(0.8, 1.2), rotate_deg=25.0, channel_permute=0.0, brightness=0.0,
                               contrast=0.0, blur=0.0, noise=0.0)  # fmt: skip
        generator = torch.Generator().manual_seed(0)
        images, moved = augment_batch(blobs, joints, config, flip_permutation(names), generator)
        total = images.sum(dim=(-2, -1))  # [B, 3]: channel c holds the blob of joint c
        centroid = (
            torch.stack([(images * xx).sum(dim=(-2, -1)), (images * yy).sum(dim=(-2, -1))], -1)
            / total[..., None]
        )
        expected = moved[:, [1, 0, 2]] if flip else moved  # flipped labels: l_hand now sits at blob r_hand
        assert (centroid - expected).abs().max() < 0.05


@pytest.fixture
def one_thread():
    """Small convolutions on a shared 2-core machine: 2 torch threads were ~20x slower than 1 under load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_a_few_training_steps_reduce_the_loss(world_samples, one_thread) -> None:
    singles, _ = world_samples
    frames = np.concatenate([s.target for s in singles])  # [34, 64, 64, 3]
    joints = np.concatenate([np.asarray(s.gt["joints"], np.float32) for s in singles])
    torch.manual_seed(0)
    estimator = JointHeatmapEstimator(JointEstimatorConfig(JOINT_NAMES, (64, 64), (4, 8, 8, 16), (1, 1)))
    before = summarize_errors(estimator(frames), joints, JOINT_NAMES).mean
    losses = fit_estimator(estimator, frames, joints, FitConfig(steps=80, batch_size=8, lr=5e-3, warmup_steps=5,
                                                                augment=None), progress=False)  # fmt: skip
    assert len(losses) == 80
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert summarize_errors(estimator(frames), joints, JOINT_NAMES).mean < 0.5 * before
    with pytest.raises(ValueError, match=r"joints must be \[34, 14, 2\]"):
        fit_estimator(estimator, frames, joints[:, :3], FitConfig(steps=1), progress=False)


def test_summarize_errors_values() -> None:
    target = np.zeros((2, 2, 2))
    estimated = np.array([[[3.0, 4.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 2.5]]])
    summary = summarize_errors(estimated, target, ("a", "b"), (1.0, 3.0))
    assert summary.mean == pytest.approx((5 + 1 + 0 + 2.5) / 4) and summary.median == pytest.approx(1.75)
    assert summary.pck == {"1px": 0.5, "3px": 0.75} and summary.per_joint == {"a": 2.5, "b": 1.75}


# ---------------------------------------------------------------------------------------- metric + runner


def _write_sample(folder: Path, sample) -> None:
    folder.mkdir(parents=True)
    iio.imwrite(folder / "video.mp4", sample.target, fps=8, codec="libx264")
    iio.imwrite(folder / "target_mask.mp4", sample.target_mask, fps=8, codec="libx264")
    (folder / "gt.json").write_text(json.dumps(sample.gt))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="default", overrides=overrides)


def test_metric_end_to_end_through_the_runner(world_samples, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SCAIL_EVAL_WEIGHTS_DIR", raising=False)
    singles, pair = world_samples
    for i, sample in enumerate([*singles, pair]):
        _write_sample(tmp_path / "gt" / f"s{i}", sample)
    run = tmp_path / "run"
    run.mkdir()
    for i in range(3):  # the generated videos: the ground truth itself
        (run / f"s{i}.mp4").write_bytes((tmp_path / "gt" / f"s{i}" / "video.mp4").read_bytes())
    estimator = _tiny(seed=5)
    estimator.heldout = {"test": {"mean_px": 1.5, "median_px": 1.2, "pck": {"2px": 0.8}, "num_frames": 100},
                         "test_mp4": {"mean_px": 1.6}}  # fmt: skip
    weights = estimator.save(tmp_path / "weights" / "joint_estimator.safetensors")
    base = ["suite=synthetic", f"+runs.gen={run}", f"gt_dir={tmp_path / 'gt'}", "plots=false",
            "ci.num_resamples=50", "metrics.ssim=null", "metrics.identity_color_hist=null"]  # fmt: skip

    # found through weights_dir under its default file name
    cfg = _compose([*base, f"out_dir={tmp_path / 'out'}", f"weights_dir={weights.parent}"])
    result = run_eval(cfg)[0].results["joint_error_px"]
    expected = {}
    for i in range(2):
        decoded = read_video(run / f"s{i}.mp4")
        gt = SyntheticGT.load(tmp_path / "gt" / f"s{i}" / "gt.json")
        expected[f"s{i}"] = float(np.linalg.norm(estimator(decoded) - gt.joints, axis=-1).mean())
    assert result.per_sample == {k: pytest.approx(v, abs=1e-9) for k, v in expected.items()}
    assert result.value == pytest.approx(np.mean(list(expected.values())), abs=1e-9)
    protocol = result.protocol
    assert (
        protocol["estimator"] == "JointHeatmapEstimator"
        and protocol["weights"] == "joint_estimator.safetensors"
    )
    assert protocol["estimator_heldout"] == {"split": "test", "mean_px": 1.5, "median_px": 1.2,
                                             "pck": {"2px": 0.8}, "mp4_mean_px": 1.6, "two_character_mean_px": None,
                                             "num_frames": 100}  # fmt: skip
    # the two-character sample has no background plate here: skipped, and said why
    assert protocol["unsupported_samples"] == 1 and "2-character sample needs its background plate" in protocol["unsupported_reason"]
    assert protocol["num_samples"] == 2 and len(protocol["weights_sha256"]) == 64
    assert protocol["samples_by_characters"] == {"1": 2}

    # an explicit path that does not exist: a clear error before any video is decoded, or a recorded skip
    missing = tmp_path / "missing" / "je.safetensors"
    cfg = _compose([*base, f"out_dir={tmp_path / 'out2'}", f"metrics.joint_error.weights={missing}"])
    with pytest.raises(FileNotFoundError, match=r"metrics.joint_error: .*je.safetensors.*`weights`"):
        run_eval(cfg)
    cfg = _compose([*base, f"out_dir={tmp_path / 'out3'}", "on_missing_weights=skip"])
    skipped = run_eval(cfg)[0].results["joint_error_px"]
    assert skipped.value is None and "joint_estimator.safetensors" in skipped.skipped


def test_metric_rejects_estimator_and_weights_together(tmp_path) -> None:
    with pytest.raises(ValueError, match="not both"):
        JointPositionError(lambda f: f, weights=tmp_path / "x.safetensors")


# ---------------------------------------------------------------------------------------- two characters


def test_character_count_boxes_and_isolation() -> None:
    names = ("head", "neck")
    assert character_count(names, names) == 1
    assert character_count(("p0_head", "p0_neck", "p1_head", "p1_neck"), names) == 2
    assert character_count(("p0_head", "p1_head"), names) is None and character_count(("a", "b"), names) is None
    joints = np.array([[[10.0, 20.0], [14.0, 40.0]], [[0.5, 1.0], [62.0, 9.0]]])  # [2 frames, 2 joints, (x, y)]
    boxes = character_boxes(joints, height=64, width=64, margin=0.25)
    # frame 0: height 20 -> pad 5: x 10-5..14+5, y 20-5..40+5 (end-exclusive +1); frame 1: pad max(2, 2) = 2
    assert boxes.tolist() == [[5, 15, 20, 46], [0, 0, 64, 12]]
    # two characters whose boxes overlap: columns 4..8 of character 0's box x 1..5 and character 1's x 4..8
    two = np.array([[[3.0, 8.0], [3.0, 10.0], [6.0, 8.0], [6.0, 10.0]]])  # [1 frame, 2 x 2 joints, (x, y)]
    regions = character_regions(two, count=2, height=16, width=16, margin=0.25)
    assert regions.shape == (2, 1, 16, 16)
    cols = [sorted(set(np.nonzero(regions[p, 0])[1].tolist())) for p in range(2)]
    assert cols == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the overlap goes to the nearer character's joints
    assert sorted(set(np.nonzero(regions[0, 0])[0].tolist())) == list(range(6, 13))  # y 8-2 .. 10+2
    frames = np.full((1, 16, 16, 3), 200, np.uint8)
    plate = np.zeros((1, 16, 16, 3), np.uint8)
    out = isolate_character(frames, plate, regions[1])
    assert int(out.sum()) == 200 * 3 * 4 * 7 and out[0, 6:13, 5:9].min() == 200 and plate.max() == 0


class _Centroid:
    """A stand-in estimator that sees the plate: every joint at the centroid of the pixels that differ from it."""

    joint_names = JOINT_NAMES

    def __init__(self, plate: np.ndarray) -> None:
        self.plate, self.calls = plate.astype(int), 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        fg = np.abs(frames.astype(int) - self.plate).sum(-1) > 30  # [N, H, W]
        ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
        centre = np.stack([(xs * fg).sum((1, 2)), (ys * fg).sum((1, 2))], -1) / fg.sum((1, 2))[:, None]
        return np.repeat(centre[:, None], len(JOINT_NAMES), axis=1)


def test_two_character_samples_are_scored_one_character_at_a_time_on_the_plate(world_samples) -> None:
    _, pair = world_samples
    gt = SyntheticGT.from_dict(pair.gt)
    assert len(gt.joint_names) == 2 * len(JOINT_NAMES)
    estimator = _Centroid(pair.target_background)
    metric = JointPositionError(estimator)
    top_down = metric.update(pair.target, pair.target, "pair", gt=gt, background=pair.target_background)
    assert estimator.calls == 2  # one pass per character
    # the same stand-in on the whole frame puts both characters' joints between them
    both = estimator(pair.target)
    naive = float(np.linalg.norm(np.concatenate([both, both], axis=1) - gt.joints, axis=-1).mean())
    # the wiring: character p's slice of the joints comes from the pass over character p's region
    per_char = len(JOINT_NAMES)
    regions = character_regions(gt.joints, 2, 64, 64)
    own = [estimator(isolate_character(pair.target, pair.target_background, regions[p])) for p in range(2)]
    expected = float(np.linalg.norm(np.concatenate(own, axis=1) - gt.joints, axis=-1).mean())
    assert top_down == pytest.approx(expected, abs=1e-9)
    # the floor for this stand-in: each character's joints all at the mean of its own ground-truth joints
    floor = np.concatenate([np.repeat(gt.joints[:, p * per_char : (p + 1) * per_char].mean(1, keepdims=True),
                                      per_char, axis=1) for p in range(2)], axis=1)  # fmt: skip
    floor = float(np.linalg.norm(floor - gt.joints, axis=-1).mean())
    # measured: floor 11.20 px, top-down 11.40 px, whole frame 19.84 px
    assert top_down < floor + 1.0 and naive > floor + 5.0, (floor, top_down, naive)
    protocol = metric.compute().protocol
    assert protocol["samples_by_characters"] == {"2": 1} and protocol["unsupported_samples"] == 0
    with pytest.raises(ValueError, match="box_margin"):
        JointPositionError(estimator, box_margin=-1)


def test_fit_tool_end_to_end_reports_two_character_error(tmp_path, one_thread) -> None:
    from tools.fit_joint_estimator import main as fit_main

    out = tmp_path / "je.safetensors"
    heldout = fit_main(["--out", str(out), "--train-samples", "3", "--val-samples", "2", "--test-samples", "12",
                        "--steps", "3", "--batch-size", "4", "--widths", "4", "8", "8", "8", "--num-blocks", "1", "1"])  # fmt: skip
    world = SyntheticWorld()
    pairs = sum(world.sample("test", i).num_characters == 2 for i in range(12))
    assert pairs > 0
    two = heldout["test_two_character"]
    assert two["two_character_samples"] == pairs and two["num_frames"] == 2 * pairs * world.config.num_frames
    assert two["mean_px"] > 0 and set(two["pck"]) == {"1px", "2px", "3px"}
    loaded = JointHeatmapEstimator.load(out)
    assert loaded.heldout["test_two_character"]["mean_px"] == pytest.approx(two["mean_px"])
    assert JointPositionError(loaded).protocol()["estimator_heldout"]["two_character_mean_px"] == pytest.approx(two["mean_px"])
    assert (tmp_path / "je.safetensors.json").is_file() and (tmp_path / "je.safetensors.preview.png").is_file()
