"""Colour masks with SCAIL-2's semantics (SCAIL_SPEC.md section 3): person in palette slot k painted in
DEFAULT_PALETTE[k] for the whole clip; animation masks on black, the replacement mask (the chosen person only)
on white. Optional clean-up (morphological open / close) and temporal smoothing (per-pixel majority over a
window). Masks are written losslessly by the callers (png, lossless h264): jpg would blur palette edges."""

from __future__ import annotations

import cv2
import numpy as np

from scail_lab.data.synthetic.world import DEFAULT_PALETTE
from scail_lab.preprocess.people import PersonTrack


def clean(masks: np.ndarray, radius: int = 1) -> np.ndarray:
    """[N, H, W] bool -> opened then closed with a (2r+1)^2 ellipse: specks and pinholes gone."""
    if radius <= 0:
        return masks
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    out = np.empty_like(masks)
    for i, m in enumerate(masks.astype(np.uint8)):
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
        out[i] = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel).astype(bool)
    return out


def smooth(masks: np.ndarray, window: int = 3) -> np.ndarray:
    """Per-pixel majority over `window` frames centred on each frame (odd window; 1 = off)."""
    if window <= 1:
        return masks
    if window % 2 == 0:
        raise ValueError(f"the smoothing window must be odd, got {window}")
    half = window // 2
    padded = np.concatenate([masks[:1].repeat(half, 0), masks, masks[-1:].repeat(half, 0)])
    counts = sum(padded[k : k + len(masks)].astype(np.int16) for k in range(window))
    return counts * 2 > window


def colour_masks(tracks: list[PersonTrack], white_background: bool = False, only: int | None = None,
                 clean_radius: int = 0, smooth_window: int = 1) -> np.ndarray:  # fmt: skip
    """Tracks in slot order -> uint8 [N, H, W, 3]: slot k in DEFAULT_PALETTE[k] on black (animation) or, with
    `white_background`, on white (replacement). `only`: paint just that slot (replacement of one person)."""
    if not tracks:
        raise ValueError("no person to paint")
    if len(tracks) > len(DEFAULT_PALETTE):
        raise ValueError(f"{len(tracks)} people but the palette has {len(DEFAULT_PALETTE)} colours")
    n, h, w = tracks[0].masks.shape
    out = np.full((n, h, w, 3), 255 if white_background else 0, np.uint8)
    for slot, track in enumerate(tracks):
        if only is not None and slot != only:
            continue
        masks = smooth(clean(track.masks, clean_radius), smooth_window)
        out[masks] = DEFAULT_PALETTE[slot]
    return out


def replacement_slot(tracks: list[PersonTrack], point: tuple[float, float] | None = None) -> int:
    """The person to replace: the one whose first-frame mask is nearest to `point` (x, y), else the largest."""
    if point is None:
        return int(np.argmax([t.area() for t in tracks]))
    px, py = point
    distances = []
    for track in tracks:
        first = next((m for m in track.masks if m.any()), None)
        if first is None:
            distances.append(float("inf"))
            continue
        ys, xs = np.nonzero(first)
        distances.append(float(np.min((xs - px) ** 2 + (ys - py) ** 2)))
    return int(np.argmin(distances))


def tracks_from_colour_masks(masks: np.ndarray, num_people: int | None = None) -> list[PersonTrack]:
    """A user's own (edited) colour-mask video [N, H, W, 3] -> mask-only tracks in slot order (palette colours
    matched within 60 levels per channel), so an edited mask is reused as is."""
    n = masks.shape[0]
    tracks = []
    for slot, colour in enumerate(DEFAULT_PALETTE):
        hit = (np.abs(masks.astype(np.int16) - np.array(colour)).max(axis=-1) <= 60)
        if num_people is not None and slot >= num_people:
            break
        if not hit.any() and num_people is None:
            break
        tracks.append(PersonTrack(np.full((n, 14, 2), np.nan, np.float32), np.zeros((n, 14), np.float32), hit))
    return tracks
