"""Run a set of metrics over one run's manifest: load each pair once, feed every metric, record everything.

Bad samples (unreadable video, wrong sizes with `size_mismatch: error`, a metric's ValueError) are recorded in
the per-sample records and skipped; the run goes on.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from eval.manifest import ManifestRow
from scail_lab.metrics import Frames, Metric, MetricResult, SyntheticGT, to_masks
from scail_lab.metrics.video_io import read_video

logger = logging.getLogger(__name__)

FRAME_MISMATCH = ("truncate", "error")
SIZE_MISMATCH = ("resize", "error")


@dataclass
class RunResult:
    name: str
    results: dict[str, MetricResult]
    records: list[dict[str, Any]] = field(default_factory=list)
    unmatched: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_failed(self) -> int:
        return sum(1 for r in self.records if r.get("error"))


class GroundTruthCache:
    """Decoded ground-truth videos (targets, their masks, background plates), kept between the runs of one
    evaluation: every run reads the same ones. Keyed by path, modification time and size; the least recently used
    are dropped past `max_bytes` (0: keep nothing). `read` returns a copy the caller may change."""

    def __init__(self, max_bytes: int = 1 << 30):
        if max_bytes < 0:
            raise ValueError(f"ground-truth cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._frames: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    def read(self, path: str | os.PathLike) -> np.ndarray:
        try:
            stat = os.stat(path)
        except OSError:
            return read_video(path)  # its error names the missing file
        key = (os.fspath(path), stat.st_mtime_ns, stat.st_size)
        frames = self._frames.get(key)
        if frames is not None:
            self._frames.move_to_end(key)
            self.hits += 1
            return frames.copy()
        frames = read_video(path)
        if frames.nbytes <= self.max_bytes:
            self._frames[key] = frames.copy()
            self._bytes += frames.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._frames.popitem(last=False)
                self._bytes -= old.nbytes
        return frames


def _resize(video: Tensor, size: tuple[int, int]) -> Tensor:
    """[N, 3, H, W] 0..255 -> [N, 3, *size] (antialiased bilinear, the DisCo way of matching sizes)."""
    out = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp(0, 255)


def _load_background(path: str, num: int, size: tuple[int, int], notes: list[str], read=read_video) -> Tensor:
    """The background plate [N, 3, H, W] (or one frame [1, 3, H, W]) cut to `num` frames, at the target size."""
    plate = torch.from_numpy(read(path)).permute(0, 3, 1, 2).float()  # [N, H, W, 3] -> [N, 3, H, W]
    if plate.shape[0] != 1 and plate.shape[0] < num:
        raise ValueError(f"background plate {path} has {plate.shape[0]} frames, the videos have {num}")
    plate = plate[:num]
    if plate.shape[-2:] != size:
        notes.append(f"background plate resized from {tuple(plate.shape[-2:])} to {size}")
        plate = _resize(plate, size)
    return plate


def load_pair(
    row: ManifestRow, frame_mismatch: str = "truncate", size_mismatch: str = "resize",
    cache: GroundTruthCache | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Decode one sample -> (inputs for Metric.update, notes about adjustments made). `cache`: ground-truth videos
    decoded for an earlier run of the same evaluation.

    The background plate (`row.background`) always follows the ground truth: cut to the compared frames and
    resized to the ground-truth size (it is the target's scene, so `size_mismatch` does not apply to it).
    """
    notes: list[str] = []
    read_gt = cache.read if cache else read_video
    pred = torch.from_numpy(read_video(row.pred)).permute(0, 3, 1, 2).float()  # [N, H, W, 3] -> [N, 3, H, W]
    target = torch.from_numpy(read_gt(row.target)).permute(0, 3, 1, 2).float()
    pred_mask = to_masks(read_video(row.pred_mask)) if row.pred_mask else None
    target_mask = to_masks(read_gt(row.target_mask)) if row.target_mask else None
    num = min(pred.shape[0], target.shape[0])
    if pred.shape[0] != target.shape[0]:
        if frame_mismatch == "error":
            raise ValueError(f"generated video has {pred.shape[0]} frames, ground truth {target.shape[0]}")
        notes.append(f"frames truncated to {num} (generated {pred.shape[0]}, ground truth {target.shape[0]})")
    pred, target = pred[:num], target[:num]
    pred_mask = pred_mask[:num] if pred_mask is not None else None
    target_mask = target_mask[:num] if target_mask is not None else None
    size = tuple(target.shape[-2:])
    background = _load_background(row.background, num, size, notes, read_gt) if row.background else None
    if pred.shape[-2:] != target.shape[-2:]:
        if size_mismatch == "error":
            raise ValueError(f"generated frames are {tuple(pred.shape[-2:])}, ground truth {size}")
        notes.append(f"generated frames resized from {tuple(pred.shape[-2:])} to {size}")
        pred = _resize(pred, size)
        if pred_mask is not None:
            pred_mask = F.interpolate(pred_mask[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    gt = SyntheticGT.load(row.gt_json) if row.gt_json else None
    if gt is not None and gt.joints.shape[0] != num:
        if gt.joints.shape[0] < num:
            raise ValueError(
                f"{row.gt_json} has joints for {gt.joints.shape[0]} frames, the videos have {num}"
            )
        gt = SyntheticGT(gt.joints[:num], gt.joint_names, gt.identity_colors, gt.fps)
    inputs = {
        "pred": Frames(pred),
        "target": Frames(target),
        "pred_mask": pred_mask,
        "target_mask": target_mask,
        "background": Frames(background) if background is not None else None,
        "gt": gt,
    }
    return inputs, notes


def evaluate_run(
    name: str,
    rows: list[ManifestRow],
    metrics: Mapping[str, Metric],
    frame_mismatch: str = "truncate",
    size_mismatch: str = "resize",
    cache: GroundTruthCache | None = None,
) -> RunResult:
    """Evaluate one run. Metrics are reset first, so one set of (weight-loaded) metrics serves several runs, and
    one `cache` lets them decode each ground-truth video once."""
    if frame_mismatch not in FRAME_MISMATCH:
        raise ValueError(f"frame_mismatch must be one of {FRAME_MISMATCH}, got {frame_mismatch!r}")
    if size_mismatch not in SIZE_MISMATCH:
        raise ValueError(f"size_mismatch must be one of {SIZE_MISMATCH}, got {size_mismatch!r}")
    for metric in metrics.values():
        metric.reset()
    records: list[dict[str, Any]] = []
    for row in tqdm(rows, desc=f"eval {name}", unit="sample"):
        record: dict[str, Any] = {
            "id": row.id,
            "pred": row.pred,
            "target": row.target,
            "metrics": {},
            "errors": {},
        }
        try:
            inputs, notes = load_pair(row, frame_mismatch, size_mismatch, cache)
        except (OSError, ValueError) as err:
            logger.warning("run %s: skipping sample %s: %s", name, row.id, err)
            record["error"] = str(err)
            records.append(record)
            continue
        record["notes"] = notes
        record["num_frames"] = int(inputs["pred"].data.shape[0])
        for metric in metrics.values():
            try:
                value = metric.update(sample_id=row.id, **inputs)
            except ValueError as err:
                record["errors"][metric.name] = str(err)
                continue
            if value is not None:
                record["metrics"][metric.name] = float(value)
        records.append(record)
    results = {metric.name: metric.compute() for metric in metrics.values()}
    return RunResult(name, results, records)
