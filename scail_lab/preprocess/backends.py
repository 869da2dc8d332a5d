"""People detectors behind one interface, chosen by name: `backend.people(frames) -> [PersonTrack]` (unordered;
`people.bind_slots` orders them).

- `gt`: the synthetic world's ground truth (gt.json joints and the colour masks of its folder), for tests and for
  measuring the others;
- `mediapipe`: MediaPipe Pose 0.10.x with its bundled models (33 landmarks, world coordinates for depth, person
  segmentation); one person; the CPU default. An optional extra: `pip install -e ".[preprocess]"`;
- `segformer`: a user's transformers semantic-segmentation checkpoint in a local folder (e.g. a SegFormer trained
  with a "person" label): people split into connected components and tracked by mask overlap; masks only (no
  joints), for multi-person colour masks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from scail_lab.data import media
from scail_lab.preprocess.people import NUM_JOINTS, PersonTrack, track_people

log = logging.getLogger(__name__)
BACKENDS = ("gt", "mediapipe", "segformer")

# MediaPipe Pose landmark indices -> our 14 joints (head = mean of nose and ears, neck = mid-shoulders)
MP_JOINTS = {"l_shoulder": 11, "r_shoulder": 12, "l_elbow": 13, "r_elbow": 14, "l_wrist": 15, "r_wrist": 16,
             "l_hip": 23, "r_hip": 24, "l_knee": 25, "r_knee": 26, "l_ankle": 27, "r_ankle": 28}  # fmt: skip


class GroundTruthBackend:
    """The synthetic world's truth for one video of a sample folder: role `driving` (gt `driving_joints`, the
    driving colour mask), `target` (gt `joints`, target_mask.mp4) or `ref` (gt `ref_joints`, ref_mask.png)."""

    name = "gt"

    def __init__(self, folder: str | Path, role: str = "driving") -> None:
        if role not in ("driving", "target", "ref"):
            raise ValueError(f"gt role must be driving, target or ref, got {role!r}")
        self.folder, self.role = Path(folder), role
        if not (self.folder / "gt.json").is_file():
            raise FileNotFoundError(f"the gt backend needs {self.folder / 'gt.json'} (a synthetic-world folder)")

    def people(self, frames: np.ndarray) -> list[PersonTrack]:
        gt = json.loads((self.folder / "gt.json").read_text())
        key = {"driving": "driving_joints", "target": "joints", "ref": "ref_joints"}[self.role]
        joints = np.asarray(gt[key], np.float32)  # [N, P * 14, 2]
        n = frames.shape[0]
        if joints.shape[0] != n:
            raise ValueError(f"gt has {joints.shape[0]} frames of {key}, the video {n}")
        num = joints.shape[1] // NUM_JOINTS
        masks = self._person_masks(frames.shape[1:3], num, n)
        return [PersonTrack(joints[:, p * NUM_JOINTS : (p + 1) * NUM_JOINTS].copy(),
                            np.ones((n, NUM_JOINTS), np.float32), masks[p]) for p in range(num)]  # fmt: skip

    def _person_masks(self, hw, num: int, n: int) -> list[np.ndarray]:
        from scail_lab.data.synthetic.world import DEFAULT_PALETTE

        if self.role == "ref":
            colours = media.decode_image((self.folder / "ref_mask.png").read_bytes())[None]
        elif self.role == "target":
            white = media.decode_video(self.folder / "target_mask.mp4")[..., 0] > 127
            if num != 1:  # the target mask is binary: split it by the driving colour mask's slots
                colours = media.decode_video(self._driving_mask())
                return [white & (np.abs(colours.astype(int) - DEFAULT_PALETTE[p]).max(-1) <= 60) for p in range(num)]
            return [white]
        else:
            colours = media.decode_video(self._driving_mask())
        return [np.abs(colours.astype(int) - DEFAULT_PALETTE[p]).max(-1) <= 60 for p in range(num)]

    def _driving_mask(self) -> Path:
        for name in ("rendered_mask_v2.mp4", "replace_mask.mp4"):
            if (self.folder / name).is_file():
                return self.folder / name
        raise FileNotFoundError(f"no driving mask in {self.folder}")


class MediaPipeBackend:
    """MediaPipe Pose (legacy solutions API, bundled tflite models): one person per frame, 14 joints, depth from
    the world landmarks, the segmentation mask thresholded at 0.5."""

    name = "mediapipe"

    def __init__(self, model_complexity: int = 1, min_confidence: float = 0.5) -> None:
        try:
            import mediapipe as mp
        except ImportError as err:
            raise ImportError("the mediapipe backend needs mediapipe 0.10.21 with its bundled models: "
                              'pip install -e ".[preprocess]" (it pins numpy<2; use its own environment)') from err  # fmt: skip
        self.mp = mp
        self.model_complexity, self.min_confidence = int(model_complexity), float(min_confidence)
        self.version = getattr(mp, "__version__", "?")

    def people(self, frames: np.ndarray) -> list[PersonTrack]:
        n, h, w = frames.shape[:3]
        detections: list[list[dict]] = []
        with self.mp.solutions.pose.Pose(static_image_mode=n == 1, model_complexity=self.model_complexity,
                                         enable_segmentation=True, min_detection_confidence=self.min_confidence,
                                         min_tracking_confidence=self.min_confidence) as pose:  # fmt: skip
            for frame in frames:
                result = pose.process(np.ascontiguousarray(frame))
                if result.pose_landmarks is None:
                    detections.append([])
                    continue
                lm = np.array([[p.x, p.y, p.z, p.visibility] for p in result.pose_landmarks.landmark], np.float32)
                world = result.pose_world_landmarks
                wz = np.array([p.z for p in world.landmark], np.float32) if world is not None else lm[:, 2]
                joints, conf, depth = self._joints(lm, wz, w, h)
                mask = (result.segmentation_mask > 0.5) if result.segmentation_mask is not None else np.zeros((h, w), bool)
                detections.append([{"mask": mask, "joints": joints, "confidence": conf, "depth": depth}])
        return track_people(detections, (h, w))

    @staticmethod
    def _joints(lm: np.ndarray, wz: np.ndarray, w: int, h: int):
        from scail_lab.data.synthetic.skeleton import JOINT_NAMES

        xy = lm[:, :2] * np.array([w, h], np.float32) - 0.5  # normalised [0, 1] -> pixel-centre coordinates
        joints = np.zeros((NUM_JOINTS, 2), np.float32)
        conf = np.zeros(NUM_JOINTS, np.float32)
        depth = np.zeros(NUM_JOINTS, np.float32)
        for k, name in enumerate(JOINT_NAMES):
            if name == "head":
                idx = [0, 7, 8]
            elif name == "neck":
                idx = [11, 12]
            else:
                idx = [MP_JOINTS[name]]
            joints[k] = xy[idx].mean(0)
            conf[k] = lm[idx, 3].min()
            depth[k] = wz[idx].mean()
        return joints, conf, depth


class SegformerBackend:
    """A local transformers semantic-segmentation checkpoint (`AutoModelForSemanticSegmentation`) with a
    `person` label: per frame, person pixels split into connected components (one per person, the smallest
    dropped below `min_area` of the frame), tracked over the clip by mask overlap. Masks only."""

    name = "segformer"

    def __init__(self, folder: str | Path, label: str = "person", min_area: float = 0.01, device: str = "cpu") -> None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"segformer backend: no config.json in {folder} (a local transformers checkpoint)")
        from transformers import AutoModelForSemanticSegmentation

        self.model = AutoModelForSemanticSegmentation.from_pretrained(str(folder), local_files_only=True).eval().to(device)
        labels = {v.lower(): int(k) for k, v in self.model.config.id2label.items()}
        if label.lower() not in labels:
            raise ValueError(f"segformer backend: {folder} has no {label!r} label (labels: {sorted(labels)[:10]}...)")
        self.person, self.min_area, self.device = labels[label.lower()], float(min_area), device

    def people(self, frames: np.ndarray) -> list[PersonTrack]:
        import torch

        n, h, w = frames.shape[:3]
        detections = []
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        for frame in frames:
            x = (torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255 - mean) / std
            with torch.no_grad():
                logits = self.model(pixel_values=x.to(self.device)).logits  # [1, C, h', w']
            logits = torch.nn.functional.interpolate(logits.float().cpu(), size=(h, w), mode="bilinear", align_corners=False)
            person = (logits[0].argmax(0) == self.person).numpy().astype(np.uint8)
            count, labels = cv2.connectedComponents(person)
            found = []
            for k in range(1, count):
                mask = labels == k
                if mask.mean() >= self.min_area:
                    found.append({"mask": mask})
            detections.append(found)
        return track_people(detections, (h, w))


def build_backend(name: str, **kwargs):
    """A backend by name (`BACKENDS`); keyword arguments go to its constructor."""
    if name == "gt":
        return GroundTruthBackend(**kwargs)
    if name == "mediapipe":
        return MediaPipeBackend(**kwargs)
    if name == "segformer":
        return SegformerBackend(**kwargs)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
