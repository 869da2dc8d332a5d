"""People in a clip: per-person tracks (joints, confidences, masks, optional depth), tracking across frames and
SCAIL's colour binding (people sorted left to right on the first frame, slot k -> palette colour k).

Conventions: frames uint8 [N, H, W, 3]; joints float32 [N, J, 2] in pixels with the centre of pixel (0, 0) at
(0, 0), J = 14 in the synthetic world's order (`JOINT_NAMES`), NaN where a joint is not seen; masks bool [N, H, W].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scail_lab.data.synthetic.skeleton import JOINT_NAMES

NUM_JOINTS = len(JOINT_NAMES)


@dataclass
class PersonTrack:
    """One person over a clip."""

    joints: np.ndarray  # [N, J, 2] float32 pixels, NaN where unseen
    confidence: np.ndarray  # [N, J] in [0, 1]
    masks: np.ndarray  # [N, H, W] bool
    depth: np.ndarray | None = None  # [N, J] relative depth, larger = farther (depth-ordered renders)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.masks.shape[0]
        if self.joints.shape != (n, NUM_JOINTS, 2) or self.confidence.shape != (n, NUM_JOINTS):
            raise ValueError(f"a track needs joints [{n}, {NUM_JOINTS}, 2] and confidence [{n}, {NUM_JOINTS}], got "
                             f"{self.joints.shape} and {self.confidence.shape}")  # fmt: skip
        if self.depth is not None and self.depth.shape != (n, NUM_JOINTS):
            raise ValueError(f"depth must be [{n}, {NUM_JOINTS}], got {self.depth.shape}")

    @property
    def num_frames(self) -> int:
        return self.masks.shape[0]

    def coverage(self) -> np.ndarray:
        """[N] bool: frames where the person was found (a mask pixel or a confident joint)."""
        return self.masks.reshape(self.num_frames, -1).any(axis=1) | (self.confidence > 0.5).any(axis=1)

    def first_centre_x(self) -> float:
        """x of the centre of the person's bounding box in the first frame it is seen (binding order)."""
        for i in np.flatnonzero(self.coverage()):
            ys, xs = np.nonzero(self.masks[i])
            if xs.size:
                return float((xs.min() + xs.max()) / 2)
            seen = self.joints[i][self.confidence[i] > 0.5]
            if len(seen):
                return float((seen[:, 0].min() + seen[:, 0].max()) / 2)
        return float("inf")

    def area(self) -> float:
        return float(self.masks.sum()) / max(1, self.num_frames)


def bind_slots(tracks: list[PersonTrack]) -> list[PersonTrack]:
    """Tracks in palette-slot order: left to right by first-frame bounding-box centre (SCAIL-Pose's rule)."""
    return sorted(tracks, key=lambda t: t.first_centre_x())


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def track_people(detections: list[list[dict]], hw: tuple[int, int], min_iou: float = 0.1) -> list[PersonTrack]:
    """Link per-frame detections ({"mask": [H, W] bool, "joints": [J, 2], "confidence": [J], "depth": [J] | None})
    into tracks: each frame's detections are matched greedily to the tracks by mask IoU with the track's last
    mask, position predicted one frame ahead by the track's last displacement (so people who cross keep their
    identity while they move apart); unmatched detections start new tracks."""
    n = len(detections)
    h, w = hw
    tracks: list[dict] = []
    for i, found in enumerate(detections):
        pairs = []
        for t_index, track in enumerate(tracks):
            predicted = _predict(track, h, w)
            for d_index, det in enumerate(found):
                score = mask_iou(predicted, det["mask"])
                if score >= min_iou:
                    pairs.append((score, t_index, d_index))
        used_t, used_d = set(), set()
        for _, t_index, d_index in sorted(pairs, reverse=True):
            if t_index in used_t or d_index in used_d:
                continue
            used_t.add(t_index)
            used_d.add(d_index)
            tracks[t_index]["frames"][i] = found[d_index]
        for d_index, det in enumerate(found):
            if d_index not in used_d:
                tracks.append({"frames": {i: det}})
    return [_to_track(t["frames"], n, hw) for t in tracks]


def _predict(track: dict, h: int, w: int) -> np.ndarray:
    """The track's last mask shifted by its last frame-to-frame centroid displacement."""
    frames = sorted(track["frames"])
    last = track["frames"][frames[-1]]["mask"]
    if len(frames) < 2:
        return last
    prev = track["frames"][frames[-2]]["mask"]
    (py, px), (ly, lx) = _centroid(prev), _centroid(last)
    dy, dx = int(round(ly - py)), int(round(lx - px))
    return np.roll(np.roll(last, dy, axis=0), dx, axis=1)


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return (float(ys.mean()), float(xs.mean())) if ys.size else (0.0, 0.0)


def _to_track(frames: dict[int, dict], n: int, hw: tuple[int, int]) -> PersonTrack:
    joints = np.full((n, NUM_JOINTS, 2), np.nan, np.float32)
    confidence = np.zeros((n, NUM_JOINTS), np.float32)
    masks = np.zeros((n, *hw), bool)
    depth = None
    for i, det in frames.items():
        masks[i] = det["mask"]
        if det.get("joints") is not None:
            joints[i] = det["joints"]
            confidence[i] = det["confidence"]
        if det.get("depth") is not None:
            depth = np.zeros((n, NUM_JOINTS), np.float32) if depth is None else depth
            depth[i] = det["depth"]
    return PersonTrack(joints, confidence, masks, depth)
