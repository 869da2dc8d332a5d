"""Synthetic samples -> SCAIL-2-layout folder files (name -> bytes), folders on disk, contact sheets.

Folder contents (see docs/DATA.md):
    ref.png, ref_mask.png                   reference of identity A and its palette mask (black background)
    rendered_v2.mp4                         the driving input: driving.mp4 (end-to-end) or pose.mp4 (pose-driven)
    rendered_mask_v2.mp4 | replace_mask.mp4 its palette mask (black background | white background)
    target.mp4, prompt.txt                  ground-truth video and caption
    gt.json, target_mask.mp4, meta.json     ground truth for evaluation (white-on-black target mask)
    target_background.mp4                   the target's scene with no character (same camera): the plate
    driving.mp4, pose.mp4, pose_mask.mp4    raw driving video of B, skeleton render of M and its mask
    rendered_v2_aug.mp4 + *_mask*_aug.mp4   augmented driving variant
    ref_driving.png, ref_driving_mask.png, target_driving_mask.mp4   reverse driving (end-to-end only)
Masks and the background plate are written lossless (`libx264rgb` qp 0 / png): palette classes decode back
exactly, and a plate difference measures the generated video, not codec noise in the plate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from scail_lab.data import schema
from scail_lab.data.media import LOSSLESS, encode_image, encode_video
from scail_lab.data.synthetic.world import SyntheticSample


def sample_files(sample: SyntheticSample, fps: float, rgb_quality: str | int = LOSSLESS) -> dict[str, bytes]:
    """Encode every medium of a sample into folder files (file name -> bytes)."""

    def video(frames: np.ndarray, lossless: bool = False) -> bytes:
        return encode_video(frames, fps, LOSSLESS if lossless else rgb_quality)

    replace = sample.mode == "replace"
    mask_name = schema.REPLACE_MASK_FILES[0] if replace else schema.ANIMATE_MASK_FILES[0]
    raw_driving = video(sample.raw_driving)
    pose = video(sample.pose)
    files = {
        schema.SYNTH_REF_FILE: encode_image(sample.ref),
        schema.SYNTH_REF_MASK_FILE: encode_image(sample.ref_mask),
        schema.DRIVING_FILES[0]: raw_driving if sample.driving_kind == "video" else pose,
        mask_name: video(sample.driving_mask, lossless=True),
        schema.TARGET_FILES[0]: video(sample.target),
        schema.CAPTION_FILES[0]: sample.caption.encode(),
        schema.TARGET_MASK_FILE: video(sample.target_mask, lossless=True),
        schema.TARGET_BACKGROUND_FILES[0]: video(sample.target_background, lossless=True),
        schema.RAW_DRIVING_FILE: raw_driving,
        schema.POSE_RENDER_FILE: pose,
        schema.POSE_MASK_FILE: video(sample.pose_mask, lossless=True),
        schema.DRIVING_AUG_FILES[0]: video(sample.driving_aug),
        (schema.DRIVING_MASK_AUG_FILES[1] if replace else schema.DRIVING_MASK_AUG_FILES[0]): video(
            sample.driving_mask_aug, lossless=True
        ),
        schema.GT_FILE: json.dumps(sample.gt).encode(),
    }
    if sample.ref_driving is not None:
        files[schema.REVERSE_REF_FILES[0]] = encode_image(sample.ref_driving)
        files[schema.REVERSE_REF_MASK_FILES[0]] = encode_image(sample.ref_driving_mask)
        files[schema.REVERSE_DRIVING_MASK_FILES[0]] = video(sample.target_driving_mask, lossless=True)
    meta = {
        schema.META_MODE: sample.mode,
        schema.META_DRIVING_KIND: sample.driving_kind,
        schema.META_CONTINUATION: sample.continuation,
        schema.META_NUM_CHARACTERS: sample.num_characters,
        schema.META_SPLIT: sample.split,
        schema.META_FPS: fps,
        schema.META_NUM_FRAMES: int(sample.target.shape[0]),
        schema.META_HEIGHT: int(sample.target.shape[1]),
        schema.META_WIDTH: int(sample.target.shape[2]),
        "generator": "scail_lab.data.synthetic",
    }
    files[schema.META_FILE] = json.dumps(meta, sort_keys=True).encode()
    return files


def contact_sheet(samples: Sequence[SyntheticSample], frames_shown: int = 3) -> np.ndarray:
    """One row per sample: ref | ref mask | driving frames | driving mask | pose | target frames | target mask.

    Returns [rows * H, cols * W, 3] uint8 RGB with a 1-px separator grid.
    """
    rows = []
    for s in samples:
        n = s.target.shape[0]
        picks = np.linspace(0, n - 1, frames_shown).round().astype(int)
        mid = picks[len(picks) // 2]
        tiles = [s.ref, s.ref_mask, *(s.raw_driving[i] for i in picks), s.driving_mask[mid], s.pose[mid],
                 *(s.target[i] for i in picks), s.target_mask[mid]]  # fmt: skip
        tiles = [np.pad(t, ((0, 1), (0, 1), (0, 0)), constant_values=255) for t in tiles]
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_png(image: np.ndarray, path: str | Path, scale: int = 2) -> None:
    """Save an RGB array as PNG (nearest-neighbour upscaled by `scale` for viewing)."""
    from scail_lab.files import atomic_write_bytes

    if scale > 1:
        image = cv2.resize(
            image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST
        )
    atomic_write_bytes(path, encode_image(image, ".png"))
