"""Fit the synthetic-world joint estimator (scail_lab.metrics.joint_estimator) and measure its held-out error.

Training frames are rendered on the fly by SyntheticWorld from the train split (train identities, motions and
scenes): every frame of each single-character sample's target video (with gt.json `joints`) and of its
driving video (`driving_joints`, another train identity). Held-out error is measured on the target videos of
the val and test splits (identities, motions and backgrounds never seen in training), as rendered and after
an H.264 yuv420p round trip (what lossy generated mp4s look like). Two-character samples are left out of
training (the estimator is single-character); the metric scores them top-down, one character at a time in its
ground-truth box on the background plate, and the report measures that too (`test_two_character`).

    python tools/fit_joint_estimator.py --out checkpoints/joint_estimator.safetensors
    python eval/run.py --runs a=runs/a gt_dir=data/synth/val suite=synthetic \\
        metrics.joint_error.weights=checkpoints/joint_estimator.safetensors

Writes OUT (weights + config + held-out error in the safetensors metadata), OUT.json (the full report) and
OUT.preview.png (test frames, ground truth green, estimate red), each atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import imageio.v3 as iio
import numpy as np
import torch
from tqdm import tqdm

from scail_lab.data import schema
from scail_lab.data.synthetic import SyntheticWorld, WorldConfig
from scail_lab.data.synthetic.skeleton import BONES, JOINT_NAMES
from scail_lab.files import atomic_path, atomic_write_text
from scail_lab.metrics.joint_estimator import JointEstimatorConfig, JointHeatmapEstimator, num_parameters
from scail_lab.metrics.joint_training import AugmentConfig, FitConfig, fit_estimator, summarize_errors
from scail_lab.metrics.synthetic import estimate_top_down

logger = logging.getLogger("fit_joint_estimator")


# ---------------------------------------------------------------------------- data


def collect(
    world: SyntheticWorld, split: str, num_samples: int, with_driving: bool, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frames uint8 [M, H, W, 3] and joints float32 [M, 14, 2] of the single-character samples 0..n-1 of a
    split (target videos, plus driving videos when `with_driving`), and counts of what was used."""
    cfg = world.config
    name = (
        f"{split}_n{num_samples}_{cfg.height}x{cfg.width}_seed{cfg.seed}{'_drv' if with_driving else ''}.npz"
    )
    if cache_dir is not None and (cache_dir / name).is_file():
        with np.load(cache_dir / name) as cached:
            logger.info("loaded %s from the cache", name)
            return cached["frames"], cached["joints"], json.loads(str(cached["info"]))
    frames, joints, used, two = [], [], 0, 0
    for index in tqdm(range(num_samples), desc=f"render {split}", unit="sample"):
        sample = world.sample(split, index)
        if sample.num_characters != 1:
            two += 1
            continue
        used += 1
        frames.append(sample.target)
        joints.append(np.asarray(sample.gt[schema.GT_JOINTS], np.float32))
        if with_driving:
            frames.append(sample.raw_driving)
            joints.append(np.asarray(sample.gt[schema.GT_DRIVING_JOINTS], np.float32))
    info = {"split": split, "samples": num_samples, "single_character_samples": used,
            "two_character_samples_skipped": two, "videos": len(frames)}  # fmt: skip
    out = np.concatenate(frames), np.concatenate(joints), info
    if cache_dir is not None:
        with atomic_path(cache_dir / name, suffix=".npz") as tmp:
            np.savez(tmp, frames=out[0], joints=out[1], info=json.dumps(info))
    return out


def mp4_round_trip(frames: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """Encode each clip of `num_frames` as H.264 yuv420p (libx264 defaults, CRF 23) and decode it again."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        for start in range(0, frames.shape[0], num_frames):
            iio.imwrite(path, frames[start : start + num_frames], fps=fps, codec="libx264")
            out.append(iio.imread(path, plugin="pyav"))
    return np.concatenate(out)


# ---------------------------------------------------------------------------- report


def preview(frames: np.ndarray, target: np.ndarray, estimated: np.ndarray, path: Path, zoom: int = 4) -> None:
    """A grid of frames (zoomed) with ground-truth (green) and estimated (red) skeletons."""
    tiles = []
    for frame, gt, est in zip(frames, target, estimated, strict=True):
        tile = cv2.resize(frame, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        for joints, colour in ((gt, (0, 220, 0)), (est, (255, 40, 40))):
            pts = [(int(round((x + 0.5) * zoom)), int(round((y + 0.5) * zoom))) for x, y in joints]
            for a, b in BONES:
                cv2.line(tile, pts[JOINT_NAMES.index(a)], pts[JOINT_NAMES.index(b)], colour, 1, cv2.LINE_AA)
            for p in pts:
                cv2.circle(tile, p, 2, colour, -1, cv2.LINE_AA)
        tiles.append(tile)
    cols = 8
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)
    grid = np.concatenate([np.concatenate(tiles[r : r + cols], 1) for r in range(0, len(tiles), cols)], 0)
    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, grid)


def evaluate(estimator: JointHeatmapEstimator, frames: np.ndarray, joints: np.ndarray, pck: tuple) -> dict:
    return summarize_errors(estimator(frames), joints, estimator.joint_names, pck).to_dict()


def two_character_heldout(
    estimator: JointHeatmapEstimator, world: SyntheticWorld, split: str, num_samples: int, pck: tuple
) -> dict:
    """Top-down error (the metric's path: each character alone in its ground-truth box on the plate) on the
    two-character samples among the split's first `num_samples`, as rendered."""
    estimated, target = [], []
    for index in tqdm(range(num_samples), desc=f"two-character {split}", unit="sample"):
        sample = world.sample(split, index)
        if sample.num_characters != 2:
            continue
        joints = np.asarray(sample.gt[schema.GT_JOINTS], np.float64)  # [N, 2 * 14, 2]
        estimated.append(estimate_top_down(estimator, sample.target, sample.target_background, joints, 2))
        target.append(joints)
    if not target:
        return {"split": split, "two_character_samples": 0}
    per_char = len(estimator.joint_names)
    as_singles = lambda x: np.concatenate(x).reshape(-1, per_char, 2)  # noqa: E731  [N, 2J, 2] -> [2N, J, 2]
    errors = summarize_errors(as_singles(estimated), as_singles(target), estimator.joint_names, pck).to_dict()
    return {"split": split, "two_character_samples": len(target), **errors}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("checkpoints/joint_estimator.safetensors"))
    parser.add_argument("--size", type=int, default=64, help="world frame height = width (multiple of 32)")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--train-samples", type=int, default=600)
    parser.add_argument("--val-samples", type=int, default=64)
    parser.add_argument("--test-samples", type=int, default=64)
    parser.add_argument("--no-driving", action="store_true", help="train on target videos only")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--widths", type=int, nargs=4, default=[16, 32, 48, 96])
    parser.add_argument("--num-blocks", type=int, nargs=2, default=[2, 2])
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pck", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenCV threads")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep rendered frames here (.npz)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {args.out}")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    world = SyntheticWorld(WorldConfig(height=args.size, width=args.size, seed=args.world_seed))
    pck = tuple(args.pck)

    start, cpu_start = time.time(), time.process_time()
    train_frames, train_joints, train_info = collect(
        world, "train", args.train_samples, not args.no_driving, args.cache_dir
    )
    heldout_data = {split: collect(world, split, n, False, args.cache_dir)
                    for split, n in (("val", args.val_samples), ("test", args.test_samples))}  # fmt: skip
    render_seconds, render_cpu = time.time() - start, time.process_time() - cpu_start
    logger.info("rendered %d training frames in %.0f s", train_frames.shape[0], render_seconds)

    config = JointEstimatorConfig(
        JOINT_NAMES, (args.size, args.size), tuple(args.widths), tuple(args.num_blocks)
    )
    torch.manual_seed(args.seed)
    estimator = JointHeatmapEstimator(config)
    fit = FitConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    augment=None if args.no_augment else AugmentConfig())  # fmt: skip
    start, cpu_start = time.time(), time.process_time()
    losses = fit_estimator(estimator, train_frames, train_joints, fit)
    fit_seconds, fit_cpu = time.time() - start, time.process_time() - cpu_start

    heldout: dict = {
        "world": {"height": args.size, "width": args.size, "seed": args.world_seed},
        "estimator": {"parameters": num_parameters(estimator.net), "widths": args.widths},
        "train": {**train_info, "frames": int(train_frames.shape[0]), "steps": args.steps,
                  "batch_size": args.batch_size, "threads": args.threads, "seconds": round(fit_seconds, 1),
                  "cpu_seconds": round(fit_cpu, 1), "render_cpu_seconds": round(render_cpu, 1),
                  "final_loss": float(np.mean(losses[-50:])),
                  "error": evaluate(estimator, train_frames[::7], train_joints[::7], pck)},
    }  # fmt: skip
    for split, (frames, joints, info) in heldout_data.items():
        heldout[split] = {**info, **evaluate(estimator, frames, joints, pck)}
        lossy = mp4_round_trip(frames, world.config.num_frames, world.config.fps)
        heldout[f"{split}_mp4"] = evaluate(estimator, lossy, joints, pck)
    heldout["test_two_character"] = two_character_heldout(estimator, world, "test", args.test_samples, pck)
    estimator.heldout = heldout
    estimator.save(args.out)
    report = args.out.with_name(args.out.name + ".json")
    atomic_write_text(report, json.dumps(heldout, indent=2))
    test_frames, test_joints, _ = heldout_data["test"]
    pick = np.linspace(0, test_frames.shape[0] - 1, 32).astype(int)
    preview(test_frames[pick], test_joints[pick], estimator(test_frames[pick]),
            args.out.with_name(args.out.name + ".preview.png"))  # fmt: skip
    for split in ("train", "val", "val_mp4", "test", "test_mp4", "test_two_character"):
        err = heldout[split] if split != "train" else heldout["train"]["error"]
        if "mean_px" not in err:
            continue
        pcks = " ".join(f"PCK@{k} {v:.3f}" for k, v in err["pck"].items())
        logger.info("%-9s mean %.2f px  median %.2f px  %s  (%d frames)", split, err["mean_px"], err["median_px"],
                    pcks, err["num_frames"])  # fmt: skip
    logger.info("render %.0f s (%.0f s CPU), fit %.0f s (%.0f s CPU); wrote %s (%.2f MB), %s", render_seconds,
                render_cpu, fit_seconds, fit_cpu, args.out, args.out.stat().st_size / 1e6, report)  # fmt: skip
    return heldout


if __name__ == "__main__":
    main()
