"""Pose renders for pose-driven examples: the synthetic world's stick figure (bone colours, white joints), so a
model trained on the world reads prepared renders the same way.

- `style="3d"`: each limb a shaded capsule (dark rim, light core, like a lit cylinder), limbs depth-ordered from
  the joints' depth so a limb in front covers one behind (SCAIL's 3-D-consistent render, with our colours);
- `style="2d"`: flat capsules in skeleton order (for backends with no depth).
`scale_joints` maps joints between frame sizes with the pixel-centre rule, so the figure does not shift when the
output size changes. `align_to_reference` gives the driving motion the reference's bone lengths and placement
(SCAIL's `rendered_aligned`).
"""

from __future__ import annotations

import numpy as np

from scail_lab.data.synthetic.render import Material, Part, bone_colours, rasterize
from scail_lab.data.synthetic.skeleton import BONES, JOINT_NAMES, J
from scail_lab.preprocess.people import PersonTrack

STYLES = ("3d", "2d")
LEGS = ("l_knee", "r_knee", "l_ankle", "r_ankle")


def scale_joints(joints: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates (centre of pixel 0 = 0) from a frame of size src_hw to one of size dst_hw."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    out = joints.astype(np.float64).copy()
    out[..., 0] = (out[..., 0] + 0.5) * sx - 0.5
    out[..., 1] = (out[..., 1] + 0.5) * sy - 0.5
    return out


def body_height(track: PersonTrack) -> float:
    """Median over frames of the head-to-lowest-joint extent in pixels (sets the limb thickness)."""
    ys = track.joints[..., 1]
    seen = track.confidence > 0.5
    spans = [float(np.nanmax(y[s]) - np.nanmin(y[s])) for y, s in zip(ys, seen, strict=True) if s.sum() >= 2]
    return float(np.median(spans)) if spans else 0.0


def _frame_parts(xy: np.ndarray, conf: np.ndarray, depth: np.ndarray | None, person: int, radius: float,
                 style: str) -> list[Part]:  # fmt: skip
    """One person, one frame: bones (shaded capsules ordered by depth, or flat in skeleton order) + joint dots."""
    bones = [(i, a, b) for i, (a, b) in enumerate(BONES) if conf[J[a]] > 0.5 and conf[J[b]] > 0.5]
    if style == "3d" and depth is not None:  # farther first: its rank is drawn below
        bones.sort(key=lambda bone: -(depth[J[bone[1]]] + depth[J[bone[2]]]))
    colours = bone_colours()
    parts = []
    for rank, (i, a, b) in enumerate(bones):
        colour = colours[i]
        p0, p1 = xy[J[a]], xy[J[b]]
        if style == "3d":
            rim = tuple(int(c * 0.55) for c in colour)
            parts.append(Part(2.0 * rank + person * 1000, person, (("capsule", p0, p1, radius),), Material(rim)))
            parts.append(Part(2.0 * rank + 1 + person * 1000, person, (("capsule", p0, p1, radius * 0.55),),
                              Material(colour)))  # fmt: skip
        else:
            parts.append(Part(float(rank) + person * 1000, person, (("capsule", p0, p1, radius),), Material(colour)))
    for k in range(len(JOINT_NAMES)):
        if conf[k] > 0.5:
            parts.append(Part(900.0 + k + person * 1000, person, (("disc", xy[k], radius * 1.2),),
                              Material((255, 255, 255))))  # fmt: skip
    return parts


def render_pose(tracks: list[PersonTrack], hw: tuple[int, int], src_hw: tuple[int, int] | None = None,
                style: str = "3d", supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Tracks (slot order) -> (render uint8 [N, H, W, 3] on black, person map int16 [N, H, W], -1 background).

    Joints are in `src_hw` pixels (default: `hw`); the limb radius follows each person's body height as in the
    synthetic world (2.2% of it, at least 0.6 px)."""
    if style not in STYLES:
        raise ValueError(f"render style must be one of {STYLES}, got {style!r}")
    if not tracks:
        raise ValueError("nothing to render: no person")
    src_hw = src_hw or hw
    n = tracks[0].num_frames
    ss = supersample
    frames: list[list[Part]] = [[] for _ in range(n)]
    for person, track in enumerate(tracks):
        xy = scale_joints(track.joints, src_hw, hw)
        height = body_height(track) * hw[0] / src_hw[0]
        radius = max(0.6, 0.022 * height) * ss
        for i in range(n):
            depth = None if track.depth is None else track.depth[i]
            frames[i].extend(_frame_parts((xy[i] + 0.5) * ss - 0.5, track.confidence[i], depth, person, radius, style))
    rgb, _, person_map = rasterize(frames, hw, ss)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), person_map


# ------------------------------------------------------------------------------------------- alignment
_PARENT = {b: a for a, b in BONES}  # the kinematic tree of BONES: neck is the root


def _median_length(track: PersonTrack, a: str, b: str) -> float | None:
    ok = (track.confidence[:, J[a]] > 0.5) & (track.confidence[:, J[b]] > 0.5)
    if not ok.any():
        return None
    d = track.joints[ok, J[a]] - track.joints[ok, J[b]]
    return float(np.median(np.hypot(d[:, 0], d[:, 1])))


def align_to_reference(driving: PersonTrack, reference: PersonTrack) -> tuple[PersonTrack, dict]:
    """The driving motion with the reference's bone lengths and placement (one person each).

    Bone directions come from the driving frames; each bone the reference shows gets the reference's length; the
    neck starts where the reference's is and moves as the driving neck does, scaled by the body-size ratio (torso
    lengths, or shoulder widths when the reference shows no hip). A half-body reference (knees or ankles, maybe hips,
    not seen) keeps the unseen bones at the driving lengths times that ratio: the body keeps its proportions and
    the legs run out of the frame below, as they do in the reference, instead of being squeezed into it (which is
    what makes the pose drift). Returns the aligned track and notes."""
    torso_ref = _median_length(reference, "neck", "l_hip") or _median_length(reference, "neck", "r_hip")
    torso_drv = _median_length(driving, "neck", "l_hip") or _median_length(driving, "neck", "r_hip")
    shoulders_ref = _median_length(reference, "l_shoulder", "r_shoulder")
    shoulders_drv = _median_length(driving, "l_shoulder", "r_shoulder")
    if torso_ref and torso_drv:
        ratio, basis = torso_ref / torso_drv, "torso length"
    elif shoulders_ref and shoulders_drv:
        ratio, basis = shoulders_ref / shoulders_drv, "shoulder width"
    else:
        raise ValueError("alignment needs the neck and a hip, or both shoulders, in the reference and the driving video")
    half_body = any(reference.confidence[:, J[j]].max() <= 0.5 for j in LEGS)
    lengths = {}
    for a, b in BONES:
        ref_len = _median_length(reference, a, b)
        drv_len = _median_length(driving, a, b)
        lengths[(a, b)] = ref_len if ref_len is not None else (drv_len or 0.0) * ratio
    neck_ref = reference.joints[0, J["neck"]]
    neck0 = driving.joints[np.argmax(driving.confidence[:, J["neck"]] > 0.5), J["neck"]]
    out = np.full_like(driving.joints, np.nan)
    for i in range(driving.num_frames):
        out[i, J["neck"]] = neck_ref + (driving.joints[i, J["neck"]] - neck0) * ratio
        for a, b in BONES:  # BONES lists every parent before its children
            d = driving.joints[i, J[b]] - driving.joints[i, J[a]]
            norm = float(np.hypot(*d))
            out[i, J[b]] = out[i, J[a]] + (d / norm * lengths[(a, b)] if norm > 1e-6 else 0.0)
    notes = {"torso_ratio": ratio, "scale_from": basis, "half_body_reference": bool(half_body),
             "legs": "driving legs scaled by the torso ratio" if half_body else "reference leg lengths"}  # fmt: skip
    return PersonTrack(out.astype(np.float32), driving.confidence.copy(), driving.masks.copy(), driving.depth), notes
