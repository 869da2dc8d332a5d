"""A 14-joint 2.5-D skeleton: pose parameters -> joint positions by forward kinematics.

Body frame: X = the character's left, Y = down, Z = the character's front. A character facing the camera
(facing angle 0) has its left side on the image's right, as in COCO keypoints. The body is rotated about
the vertical axis by the facing angle and projected orthographically, so turning 180 degrees swaps left
and right joints in the image. Depth (toward the camera) orders the drawing of body parts.

Limb directions use two angles: abduction `a` (0 = hanging down, pi/2 = straight out sideways, pi = up)
and flexion `f` (positive = toward the front): d = (s sin a cos f, cos a cos f, sin f), s = +1 for left
limbs, -1 for right limbs. |d| = 1 for every angle pair.
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES = (
    "head", "neck", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist",
    "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)  # fmt: skip
J = {name: i for i, name in enumerate(JOINT_NAMES)}
# (joint a, joint b) pairs of the stick figure; the pose render colours them in this order
BONES = (
    ("neck", "head"),
    ("neck", "r_shoulder"), ("r_shoulder", "r_elbow"), ("r_elbow", "r_wrist"),
    ("neck", "l_shoulder"), ("l_shoulder", "l_elbow"), ("l_elbow", "l_wrist"),
    ("neck", "r_hip"), ("r_hip", "r_knee"), ("r_knee", "r_ankle"),
    ("neck", "l_hip"), ("l_hip", "l_knee"), ("l_knee", "l_ankle"),
)  # fmt: skip
LIMBS = ("upper_arm", "forearm", "thigh", "shin")
SIDES = ("l", "r")

# Pose parameters (one array over frames each). Angles in radians; root_x and ground_y are fractions of
# the frame width / height; lift is in body heights.
POSE_PARAMS = (
    "root_x", "ground_y", "lift", "facing", "torso_side", "torso_fwd", "head_tilt",
    *(f"{side}_{limb}_{angle}" for side in SIDES for limb in LIMBS for angle in ("abd", "flex")),
)  # fmt: skip

NEUTRAL = {
    "root_x": 0.5, "ground_y": 0.92, "lift": 0.0, "facing": 0.0, "torso_side": 0.0, "torso_fwd": 0.0,
    "head_tilt": 0.0,
    "upper_arm_abd": 0.15, "upper_arm_flex": 0.0, "forearm_abd": 0.1, "forearm_flex": 0.15,
    "thigh_abd": 0.06, "thigh_flex": 0.0, "shin_abd": 0.04, "shin_flex": 0.0,
}  # fmt: skip


def neutral_track(num_frames: int) -> dict[str, np.ndarray]:
    """A standing pose held for `num_frames` frames."""
    track = {}
    for name in POSE_PARAMS:
        base = name.split("_", 1)[1] if name[:2] in ("l_", "r_") else name
        track[name] = np.full(num_frames, NEUTRAL[base], dtype=np.float64)
    return track


def limb_direction(abd: np.ndarray, flex: np.ndarray, side_sign: float) -> np.ndarray:
    """[N] angles -> [N, 3] unit directions in the body frame."""
    return np.stack(
        [side_sign * np.sin(abd) * np.cos(flex), np.cos(abd) * np.cos(flex), np.sin(flex)], axis=-1
    )


def body_points(track: dict[str, np.ndarray], lengths: dict[str, float]) -> np.ndarray:
    """Joint positions in body-frame units, pelvis at the origin, before the facing rotation: [N, 14, 3].

    `lengths` (body-height units): torso, neck, head_radius, shoulder_half, hip_half, upper_arm,
    forearm, thigh, shin.
    """
    n = len(track["root_x"])
    side, fwd = track["torso_side"], track["torso_fwd"]
    up = np.stack([np.sin(side) * np.cos(fwd), -np.cos(side) * np.cos(fwd), np.sin(fwd)], axis=-1)  # [N, 3]
    across = np.stack([np.cos(side), np.sin(side), np.zeros(n)], axis=-1)  # [N, 3] toward the left
    pts = np.zeros((n, len(JOINT_NAMES), 3))
    neck = up * lengths["torso"]
    pts[:, J["neck"]] = neck
    tilt = track["head_tilt"]
    head_dir = np.stack([np.sin(side + tilt), -np.cos(side + tilt), np.sin(fwd)], axis=-1)
    head_dir /= np.linalg.norm(head_dir, axis=-1, keepdims=True)
    pts[:, J["head"]] = neck + head_dir * (lengths["neck"] + lengths["head_radius"])
    for s, sign in (("l", 1.0), ("r", -1.0)):
        shoulder = neck + sign * lengths["shoulder_half"] * across
        elbow = shoulder + lengths["upper_arm"] * limb_direction(
            track[f"{s}_upper_arm_abd"], track[f"{s}_upper_arm_flex"], sign
        )
        wrist = elbow + lengths["forearm"] * limb_direction(
            track[f"{s}_forearm_abd"], track[f"{s}_forearm_flex"], sign
        )
        hip = np.tile(np.array([sign * lengths["hip_half"], 0.0, 0.0]), (n, 1))
        knee = hip + lengths["thigh"] * limb_direction(
            track[f"{s}_thigh_abd"], track[f"{s}_thigh_flex"], sign
        )
        ankle = knee + lengths["shin"] * limb_direction(track[f"{s}_shin_abd"], track[f"{s}_shin_flex"], sign)
        for name, value in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist),
                            ("hip", hip), ("knee", knee), ("ankle", ankle)):  # fmt: skip
            pts[:, J[f"{s}_{name}"]] = value
    return pts


def rotate_facing(points: np.ndarray, facing: np.ndarray) -> np.ndarray:
    """Rotate body-frame points [N, K, 3] about the vertical axis by `facing` [N] (0 = facing the camera).

    Returns camera-frame points: x = image right, y = down, z = toward the camera.
    """
    c, s = np.cos(facing)[:, None], np.sin(facing)[:, None]
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack([x * c + z * s, y, -x * s + z * c], axis=-1)


def place(
    camera_points: np.ndarray,
    track: dict[str, np.ndarray],
    height_px: float,
    frame_hw: tuple[int, int],
    pan_px: np.ndarray,
    foot_radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points [N, K, 3] -> (image xy [N, K, 2] pixels, depth [N, K]).

    The lower ankle rests on the ground line (plus `lift`), so squats lower the pelvis and jumps raise it;
    `pan_px` [N] is the camera's horizontal offset (the world moves left when the camera pans right).
    """
    h, w = frame_hw
    ankles = camera_points[:, [J["l_ankle"], J["r_ankle"]], 1].max(axis=1)  # [N] lowest ankle (y down)
    pelvis_y = track["ground_y"] * h - height_px * (ankles + foot_radius + track["lift"])
    pelvis_x = track["root_x"] * w - pan_px
    xy = camera_points[..., :2] * height_px
    xy[..., 0] += pelvis_x[:, None]
    xy[..., 1] += pelvis_y[:, None]
    return xy, camera_points[..., 2]
