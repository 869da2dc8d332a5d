"""The eval runner on exported synthetic folders: the scanner takes target.mp4 as the sample's video and the
background plate as the `background` column, and mask_iou of the ground truth against itself (no generated
mask) uses the plate instead of the border median."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from eval.evaluate import load_pair
from eval.manifest import ManifestRow, match_folders, read_manifest, scan_samples
from eval.run import CONFIG_DIR, run_eval
from scail_lab.data.media import atomic_write_folder, encode_video
from scail_lab.data.synthetic.export import sample_files
from scail_lab.data.synthetic.world import SyntheticWorld, WorldConfig
from scail_lab.metrics import MaskIoU

NUM_SAMPLES = 3


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory):
    """gt/<key>/ = full exported synthetic folders (lossless); run/<key>.mp4 = copies of their target.mp4."""
    root = tmp_path_factory.mktemp("plate_eval")
    world = SyntheticWorld(WorldConfig(num_frames=5))
    samples = [world.sample("test", i) for i in range(NUM_SAMPLES)]
    (root / "run").mkdir()
    for s in samples:
        folder = atomic_write_folder(sample_files(s, world.config.fps), root / "gt" / s.key)
        shutil.copy(folder / "target.mp4", root / "run" / f"{s.key}.mp4")
    return root, samples


def test_scanner_takes_the_target_video_and_the_plate(synthetic_set, tmp_path) -> None:
    root, samples = synthetic_set
    found = scan_samples(root / "gt")
    assert sorted(found) == [s.key for s in samples]  # one sample per folder despite its 7 other videos
    for files in found.values():
        assert files.video.name == "target.mp4" and files.mask.name == "target_mask.mp4"
        assert files.background.name == "target_background.mp4" and files.gt_json.name == "gt.json"
    # a generic folder: the plate is not "a second video"; loose files take <stem>_background.mp4
    frames = np.zeros((5, 32, 32, 3), np.uint8)
    for name in ("s1/video.mp4", "s1/background.mp4", "s1/target_mask.mp4", "s2.mp4", "s2_background.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(encode_video(frames, 8.0))
    found = scan_samples(tmp_path)
    assert sorted(found) == ["s1", "s2"]
    assert found["s1"].video.name == "video.mp4" and found["s1"].background.name == "background.mp4"
    assert found["s2"].video.name == "s2.mp4" and found["s2"].background.name == "s2_background.mp4"


def test_runner_scores_mask_iou_with_the_plate(synthetic_set, tmp_path) -> None:
    root, samples = synthetic_set
    rows, _ = match_folders(root / "run", root / "gt")
    assert all(r.background and r.background.endswith(f"{r.id}/target_background.mp4") for r in rows)
    assert all(r.pred_mask is None and r.target.endswith("target.mp4") for r in rows)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "default",
            overrides=["suite=synthetic", "metrics.joint_error=null", "plots=false", "ci.num_resamples=50",
                       f"+runs.gt_copy={root / 'run'}", f"gt_dir={root / 'gt'}", f"out_dir={tmp_path / 'out'}"],
        )  # fmt: skip
    (result,) = run_eval(cfg)
    with open(tmp_path / "out" / "gt_copy" / "manifest.csv") as handle:
        manifest = list(csv.DictReader(handle))
    assert [Path(r["background"]).name for r in manifest] == ["target_background.mp4"] * NUM_SAMPLES
    # every file is lossless: the runner's numbers equal the metric on the world's arrays
    expected = MaskIoU()
    for s in samples:
        expected.update(s.target, s.target, s.key, target_mask=s.target_mask, background=s.target_background)
    mask_iou = result.results["mask_iou"]
    assert mask_iou.per_sample == pytest.approx(expected.compute().per_sample, abs=1e-12)
    assert mask_iou.value == pytest.approx(0.870, abs=0.01)  # measured (0.797 with point-sampled masks); the plate ceiling
    assert mask_iou.protocol["missing_mask"] == "plate difference > 30"
    assert result.results["identity_color_hist"].value < 1.0  # exact mask vs plate mask: near, not equal
    assert result.results["psnr"].value == 100.0
    stamp = json.loads((tmp_path / "out" / "gt_copy" / "metrics.json").read_text())
    assert stamp["metrics"]["mask_iou"]["protocol"]["mask_sources"]["plate difference > 30"] == NUM_SAMPLES

    # the same rows without the plate fall back to the border median: far lower
    (tmp_path / "noplate.csv").write_text(
        "id,pred,target,target_mask\n"
        + "".join(f"{r.id},{r.pred},{r.target},{r.target_mask}\n" for r in rows)
    )
    border = MaskIoU()
    for row in read_manifest(tmp_path / "noplate.csv"):
        inputs, _ = load_pair(row)
        border.update(sample_id=row.id, **inputs)
    assert border.compute().value < 0.2 and border.protocol()["missing_mask"].startswith("border median")


def test_plate_follows_the_ground_truth_frames_and_size(tmp_path) -> None:
    target = np.full((5, 64, 64, 3), 90, np.uint8)
    (tmp_path / "t.mp4").write_bytes(encode_video(target, 8.0))
    (tmp_path / "p.mp4").write_bytes(encode_video(target[:4], 8.0))
    (tmp_path / "b.mp4").write_bytes(encode_video(np.full((1, 32, 32, 3), 200, np.uint8), 8.0))
    row = ManifestRow(
        "s", str(tmp_path / "p.mp4"), str(tmp_path / "t.mp4"), background=str(tmp_path / "b.mp4")
    )
    inputs, notes = load_pair(row)
    plate = inputs["background"].data
    assert tuple(plate.shape) == (1, 3, 64, 64) and bool((plate == 200).all())  # one frame serves all
    assert any("background plate resized from (32, 32) to (64, 64)" in n for n in notes)
    (tmp_path / "short.mp4").write_bytes(encode_video(target[:2], 8.0))
    with pytest.raises(ValueError, match="has 2 frames, the videos have 4"):
        load_pair(ManifestRow("s", row.pred, row.target, background=str(tmp_path / "short.mp4")))
