"""Rasterise characters and stick figures: parts sorted by depth, drawn supersampled, then area-downsampled.

A part is a set of primitives (capsules, convex polygons, discs) with one material (a solid colour or a
two-colour pattern in the part's own frame, so clothing patterns move with the limb). Per frame the
rasteriser returns premultiplied RGB, coverage alpha and a person-index map (-1 = background); masks are
read from the person map at the centre sample of each output pixel, so they are exactly binary.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

from scail_lab.data.synthetic.character import Identity
from scail_lab.data.synthetic.skeleton import BONES, JOINT_NAMES, J

_SHIFT = 4  # fixed-point bits for OpenCV drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Material:
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int] | None = None
    pattern: str = "solid"  # solid | stripes (across the axis) | bands (along) | checks
    origin: tuple[float, float] = (0.0, 0.0)
    axis: tuple[float, float] = (0.0, 1.0)
    period: float = 4.0


@dataclass(frozen=True)
class Part:
    depth: float
    person: int
    prims: tuple  # ("capsule", p0, p1, r) | ("poly", pts) | ("disc", c, r) | ("half_disc", c, r)
    material: Material


def _fx(p) -> tuple[int, int]:
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


def _draw(canvas: np.ndarray, part: Part, value: int) -> None:
    """Draw every primitive of a part into `canvas` with `value` (OpenCV clips what leaves the canvas)."""
    for prim in part.prims:
        kind = prim[0]
        if kind == "capsule":
            thickness = max(1, int(round(2 * prim[3])))
            cv2.line(canvas, _fx(prim[1]), _fx(prim[2]), value, thickness, cv2.LINE_8, _SHIFT)
        elif kind == "poly":
            pts = np.array([_fx(p) for p in prim[1]], dtype=np.int32)
            cv2.fillConvexPoly(canvas, pts, value, cv2.LINE_8, _SHIFT)
        elif kind == "disc":
            cv2.circle(canvas, _fx(prim[1]), int(round(prim[2] * _ONE)), value, -1, cv2.LINE_8, _SHIFT)
        elif kind == "half_disc":  # upper half (hair cap)
            r = int(round(prim[2] * _ONE))
            cv2.ellipse(canvas, _fx(prim[1]), (r, r), 0, 180, 360, value, -1, cv2.LINE_8, _SHIFT)
        else:
            raise ValueError(f"unknown primitive {kind!r}")


_PATTERNS = {"solid": 0, "stripes": 1, "bands": 2, "checks": 3}


def _paint(parts: list[Part], k: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Colours [n, 3] float32 of the pixels (ys, xs) drawn by parts[k - 1]; a pattern is evaluated in its part's
    own frame at the pixels' coordinates."""
    colour = np.zeros((len(parts) + 1, 3), np.float32)
    colour[1:] = [p.material.colour for p in parts]
    out = colour[k]
    patterned = [j for j, p in enumerate(parts, 1) if p.material.pattern != "solid" and p.material.colour2 is not None]
    if not patterned:
        return out
    table = np.zeros((len(parts) + 1, 6), np.float64)  # origin x, y, axis x, y, period, pattern
    colour2 = np.zeros((len(parts) + 1, 3), np.float32)
    for j in patterned:
        mat = parts[j - 1].material
        table[j] = (*mat.origin, *mat.axis, mat.period, _PATTERNS[mat.pattern])
        colour2[j] = mat.colour2
    at = np.nonzero(table[k, 5] > 0)[0]
    ox, oy, ax, ay, period, pattern = table[k[at]].T
    dx, dy = xs[at] - ox, ys[at] - oy
    u = np.floor((dx * ax + dy * ay) / period)
    v = np.floor((-dx * ay + dy * ax) / period)
    alt = at[np.where(pattern == 1, u, np.where(pattern == 2, v, u + v)) % 2 == 1]
    out[alt] = colour2[k[alt]]
    return out


def rasterize(
    frames: list[list[Part]], hw: tuple[int, int], ss: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parts per frame (coordinates in supersampled pixels) -> (premultiplied RGB [N, H, W, 3] float32,
    alpha [N, H, W] float32, person index [N, H, W] int16, -1 = background).

    The person map follows coverage, like the pixels: a pixel belongs to a person when at least half of its
    ss x ss sub-pixels are covered (alpha >= 0.5), and then to the person covering most of them (ties: the one
    in front). So masks agree with what the antialiased frame shows."""
    h, w = hw
    big = (h * ss, w * ss)
    n = len(frames)
    rgb_out = np.zeros((n, h, w, 3), np.float32)
    alpha_out = np.zeros((n, h, w), np.float32)
    person_out = np.full((n, h, w), -1, np.int16)
    person_big = np.full((n, *big), -1, np.int16)
    for i, parts in enumerate(frames):
        order = sorted(parts, key=lambda p: p.depth)  # back to front: a later part covers an earlier one
        if len(order) >= np.iinfo(np.uint16).max:
            raise ValueError(f"frame {i} has {len(order)} parts; at most 65534 fit the label map")
        label = np.zeros(big, np.uint16)  # 0: no part; k: order[k - 1], the frontmost part drawn there
        for k, part in enumerate(order, 1):
            _draw(label, part, k)
        ys, xs = np.nonzero(label)
        k = label[ys, xs]
        owner = np.array([-1] + [p.person for p in order], np.int16)
        person = person_big[i]
        person[ys, xs] = owner[k]
        cover = (person >= 0).astype(np.float32)
        rgb = np.zeros((*big, 3), np.float32)
        rgb[ys, xs] = _paint(order, k, ys, xs)
        rgb_out[i] = cv2.resize(rgb * cover[..., None], (w, h), interpolation=cv2.INTER_AREA)
        alpha_out[i] = cv2.resize(cover, (w, h), interpolation=cv2.INTER_AREA)
    person_out[:] = _majority_person(person_big, ss)
    return rgb_out, alpha_out, person_out


def _majority_person(person: np.ndarray, ss: int) -> np.ndarray:
    """Supersampled person maps [N, H*ss, W*ss] -> [N, H, W]: the most-covering person where coverage >= 1/2,
    else -1."""
    subs = [person[:, dy::ss, dx::ss] for dy in range(ss) for dx in range(ss)]  # one sub-pixel of each pixel
    out = np.full(subs[0].shape, -1, np.int16)
    covered = sum((sub >= 0).astype(np.int16) for sub in subs) * 2 >= ss * ss
    best = np.zeros(out.shape, np.int16)
    for actor in np.unique(person[person >= 0]):  # ascending: a later (front) actor wins ties
        count = sum((sub == actor).astype(np.int16) for sub in subs)
        take = covered & (count >= best) & (count > 0)
        out[take], best[take] = actor, count[take]
    return out


def compose(background: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-composite premultiplied layers over a background [N, H, W, 3] uint8 -> uint8."""
    out = background.astype(np.float32) * (1.0 - alpha[..., None]) + rgb
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _pattern(colour, colour2, pattern, p0, p1, period) -> Material:
    axis = np.asarray(p1, np.float64) - np.asarray(p0, np.float64)
    norm = float(np.hypot(*axis)) or 1.0
    return Material(
        colour, colour2, pattern, (float(p0[0]), float(p0[1])), (axis[0] / norm, axis[1] / norm), period
    )


def character_parts(
    ident: Identity, xy: np.ndarray, depth: np.ndarray, facing: float, height_px: float, person: int
) -> list[Part]:
    """Body parts of one character in one frame. xy: [14, 2] joint pixels (supersampled); depth: [14]."""
    H = height_px
    wd = {k: v * H / 2.0 for k, v in ident.widths.items()}  # radii in pixels
    pelvis = (xy[J["l_hip"]] + xy[J["r_hip"]]) / 2
    z_pelvis = (depth[J["l_hip"]] + depth[J["r_hip"]]) / 2
    period = max(1.5, 0.045 * H)
    shirt = lambda p0, p1: _pattern(ident.shirt, ident.shirt2, ident.shirt_pattern, p0, p1, period)  # noqa: E731
    pants = lambda p0, p1: _pattern(ident.pants, ident.pants2, ident.pants_pattern, p0, p1, period)  # noqa: E731
    skin = Material(ident.skin)
    parts: list[Part] = []

    def add(depth_value, prims, material):
        parts.append(Part(float(depth_value), person, tuple(prims), material))

    for s in ("l", "r"):
        hip, knee, ankle = xy[J[f"{s}_hip"]], xy[J[f"{s}_knee"]], xy[J[f"{s}_ankle"]]
        zs = depth[J[f"{s}_knee"]]
        add(zs - 0.02, [("capsule", hip, knee, wd["thigh"])], pants(hip, knee))
        add(zs - 0.019, [("capsule", knee, ankle, wd["shin"])], pants(hip, knee))
        toe = ankle + np.array([math.sin(facing), 0.15]) * 0.06 * H
        add(depth[J[f"{s}_ankle"]] - 0.018, [("capsule", ankle, toe, wd["foot"])], Material(ident.shoes))
        shoulder, elbow, wrist = xy[J[f"{s}_shoulder"]], xy[J[f"{s}_elbow"]], xy[J[f"{s}_wrist"]]
        za = (depth[J[f"{s}_shoulder"]] + depth[J[f"{s}_elbow"]] + depth[J[f"{s}_wrist"]]) / 3 + 0.01
        add(za, [("capsule", shoulder, elbow, wd["upper_arm"])], shirt(shoulder, elbow))
        add(
            za + 0.001,
            [("capsule", elbow, wrist, wd["forearm"])],
            shirt(shoulder, elbow) if ident.long_sleeves else skin,
        )
        add(za + 0.002, [("disc", wrist, wd["hand"])], skin)
    ls, rs, lh, rh, neck = (
        xy[J["l_shoulder"]],
        xy[J["r_shoulder"]],
        xy[J["l_hip"]],
        xy[J["r_hip"]],
        xy[J["neck"]],
    )
    torso = [("poly", [ls, rs, rh, lh]), ("capsule", pelvis, neck, wd["torso"])]
    add(z_pelvis, torso, shirt(neck, pelvis))
    head = xy[J["head"]]
    head_r = ident.lengths["head_radius"] * H
    z_head = depth[J["head"]] + 0.02
    add(z_head - 0.03, [("capsule", neck, head, wd["neck"])], skin)
    hair = Material(ident.hair)
    if ident.hair_style == "long":
        add(
            depth[J["head"]] - 0.05 * math.cos(facing),
            [("capsule", head, head + np.array([0, 1.3 * head_r]), head_r)],
            hair,
        )
    add(z_head, [("disc", head, head_r)], skin)
    front = math.cos(facing)
    if ident.hair_style != "bald":
        cap = (
            ("disc", head, head_r * 1.02)
            if front < -0.2
            else ("half_disc", head - np.array([0, 0.15 * head_r]), head_r * 1.05)
        )
        add(z_head + 0.001, [cap], hair)
    if front > 0.15:
        eye_r = max(0.6, 0.16 * head_r)
        for side in (-1.0, 1.0):
            c = head + np.array(
                [0.4 * head_r * side * front + 0.5 * head_r * math.sin(facing), 0.05 * head_r]
            )
            add(z_head + 0.002, [("disc", c, eye_r)], Material((20, 20, 30)))
    return parts


def bone_colours() -> list[tuple[int, int, int]]:
    """One saturated colour per bone (hues spread around the wheel), pose-render style."""
    return [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / len(BONES), 1.0, 1.0)) for i in range(len(BONES))
    ]


def skeleton_parts(
    xy: np.ndarray, person: int, radius: float, jitter: np.ndarray | None = None
) -> list[Part]:
    """Stick-figure parts (coloured limbs + white joint dots) of one person in one frame."""
    pts = xy + (jitter if jitter is not None else 0.0)
    parts = []
    for i, ((a, b), colour) in enumerate(zip(BONES, bone_colours(), strict=True)):
        parts.append(Part(float(i), person, (("capsule", pts[J[a]], pts[J[b]], radius),), Material(colour)))
    for k in range(len(JOINT_NAMES)):
        parts.append(Part(100.0 + k, person, (("disc", pts[k], radius * 1.2),), Material((255, 255, 255))))
    return parts
