"""Textured backgrounds (sky, horizon, ground with tiles or stripes, props, grain) and camera pans.

A scene is deterministic from (world seed, scene id). It is drawn wider than the frame so the camera can
pan; `frames(pan_px)` crops the view at a sub-pixel horizontal offset per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

GROUNDS = ("tiles", "stripes", "grass", "plain")
SKY_WORDS = ("a blue sky", "an evening sky", "a grey sky", "a pale wall")
_SKIES = (((90, 150, 230), (190, 220, 250)), ((240, 130, 80), (250, 210, 150)), ((120, 125, 135), (190, 190, 195)),
          ((225, 215, 200), (240, 235, 225)))  # fmt: skip
_PROP_WORDS = {"trees": "trees", "boxes": "boxes", "columns": "columns"}


@dataclass(frozen=True)
class Scene:
    scene_id: int
    canvas: np.ndarray  # [H, W + margin, 3] uint8
    description: str

    def frames(self, width: int, pan_px: np.ndarray) -> np.ndarray:
        """[N] camera offsets in pixels (0 = left edge) -> [N, H, width, 3] uint8 views."""
        h = self.canvas.shape[0]
        out = np.empty((len(pan_px), h, width, 3), np.uint8)
        for i, offset in enumerate(pan_px):
            shift = np.float32([[1, 0, -float(offset)], [0, 1, 0]])
            out[i] = cv2.warpAffine(
                self.canvas, shift, (width, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
            )
        return out


def make_scene(world_seed: int, scene_id: int, hw: tuple[int, int], margin: int) -> Scene:
    """Scene `scene_id` drawn at `hw` plus `margin` extra columns for panning."""
    rng = np.random.default_rng([world_seed, 0x5C, scene_id])
    h, w = hw[0], hw[1] + margin
    sky_idx = int(rng.integers(len(_SKIES)))
    top, bottom = (np.array(c, np.float32) for c in _SKIES[sky_idx])
    horizon = int(h * rng.uniform(0.5, 0.7))
    ramp = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:horizon] = top * (1 - ramp) + bottom * ramp
    ground_kind = GROUNDS[int(rng.integers(len(GROUNDS)))]
    g1 = rng.integers(40, 200, size=3).astype(np.float32)
    g2 = np.clip(g1 + rng.integers(-60, 61, size=3), 0, 255).astype(np.float32)
    yy, xx = np.mgrid[horizon:h, 0:w].astype(np.float32)
    depth = (yy - horizon + 1) / (h - horizon + 1)  # 0 far .. 1 near: perspective-ish spacing
    period = max(2.0, h * rng.uniform(0.05, 0.1))
    if ground_kind == "tiles":
        alt = (np.floor(xx / (period * (0.4 + depth))) + np.floor(np.sqrt(depth) * 6)) % 2
    elif ground_kind == "stripes":
        alt = np.floor(np.sqrt(depth) * 8) % 2
    elif ground_kind == "grass":
        alt = (rng.random(depth.shape) < 0.35).astype(np.float32)
    else:
        alt = np.zeros_like(depth)
    canvas[horizon:] = np.where(alt[..., None] > 0, g2, g1)
    props = list(_PROP_WORDS)[int(rng.integers(len(_PROP_WORDS)))]
    for _ in range(int(rng.integers(2, 6))):
        _draw_prop(canvas, props, rng, horizon)
    grain = rng.normal(0.0, rng.uniform(2.0, 7.0), size=canvas.shape).astype(np.float32)
    canvas = np.clip(canvas + grain, 0, 255).astype(np.uint8)
    canvas = cv2.GaussianBlur(canvas, (3, 3), 0.6)
    description = f"{_PROP_WORDS[props]} on {ground_kind} ground under {SKY_WORDS[sky_idx]}"
    if sky_idx == 3:
        description = f"{_PROP_WORDS[props]} in front of a pale wall on {ground_kind} floor"
    return Scene(scene_id=int(scene_id), canvas=canvas, description=description)


def _draw_prop(canvas: np.ndarray, kind: str, rng: np.random.Generator, horizon: int) -> None:
    h, w = canvas.shape[:2]
    x = int(rng.integers(0, w))
    size = max(3, int(h * rng.uniform(0.08, 0.22)))
    colour = tuple(float(v) for v in rng.integers(20, 235, size=3))
    if kind == "trees":
        trunk = tuple(float(v) for v in (90 + rng.integers(-20, 20), 60, 30))
        cv2.rectangle(
            canvas, (x - max(1, size // 8), horizon - size), (x + max(1, size // 8), horizon), trunk, -1
        )
        cv2.circle(
            canvas, (x, horizon - size), max(2, size // 2), (40.0, float(rng.integers(100, 190)), 50.0), -1
        )
    elif kind == "boxes":
        cv2.rectangle(canvas, (x, horizon - size), (x + size, horizon + size // 4), colour, -1)
        cv2.rectangle(
            canvas, (x, horizon - size), (x + size, horizon + size // 4), tuple(c * 0.6 for c in colour), 1
        )
    else:
        cv2.rectangle(canvas, (x, max(0, horizon - 3 * size)), (x + max(2, size // 3), horizon), colour, -1)
