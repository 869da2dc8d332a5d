"""Motion families: a motion id -> random speed, phase, amplitude, direction -> per-frame pose tracks.

A motion is independent of who performs it: tracks hold angles and normalised positions only; body
proportions enter later through forward kinematics. Families: walk, wave, jump, squat, turn (180 degrees,
so left and right swap in the image) and dance. Time is in seconds, so the same motion at another fps
samples the same movement more or less densely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from scail_lab.data.synthetic.skeleton import neutral_track

MOTION_FAMILIES = ("walk", "wave", "jump", "squat", "turn", "dance")
TWO_PI = 2.0 * np.pi


@dataclass(frozen=True)
class MotionSpec:
    """One motion: a family plus the random draws that make it unique."""

    motion_id: int
    family: str
    speed: float  # multiplies the family's base frequency
    phase: float  # cycles, in [0, 1)
    amplitude: float  # multiplies the family's joint excursions, in [0.6, 1.2]
    direction: int  # +1 / -1: walking or turning direction, waving hand, first dance side
    x0: float  # starting pelvis x as a fraction of the frame width

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def verb(self) -> str:
        side = "left" if self.direction > 0 else "right"
        pace = "slowly " if self.speed < 0.85 else ("quickly " if self.speed > 1.2 else "")
        return {
            "walk": f"walks {pace}to the {'right' if self.direction > 0 else 'left'}",
            "wave": f"waves {pace}with the {side} hand",
            "jump": f"jumps {pace}on the spot",
            "squat": f"squats down and up {pace}".rstrip(),
            "turn": f"turns around {pace}to face away",
            "dance": f"dances {pace}with swinging arms",
        }[self.family]


def motion_spec(world_seed: int, motion_id: int) -> MotionSpec:
    """The motion with this id: deterministic from (world seed, id); the family cycles with the id."""
    rng = np.random.default_rng([world_seed, 0x6D6F74, motion_id])
    family = MOTION_FAMILIES[motion_id % len(MOTION_FAMILIES)]
    return MotionSpec(
        motion_id=int(motion_id),
        family=family,
        speed=float(rng.uniform(0.7, 1.4)),
        phase=float(rng.uniform(0.0, 1.0)),
        amplitude=float(rng.uniform(0.6, 1.2)),
        direction=int(rng.choice([-1, 1])),
        x0=float(rng.uniform(0.4, 0.6)),
    )


def motion_track(
    spec: MotionSpec, num_frames: int, fps: float, x0: float | None = None
) -> dict[str, np.ndarray]:
    """Pose parameters over `num_frames` frames at `fps` (see skeleton.POSE_PARAMS)."""
    t = np.arange(num_frames, dtype=np.float64) / fps
    track = neutral_track(num_frames)
    track["root_x"][:] = spec.x0 if x0 is None else x0
    builder = {
        "walk": _walk, "wave": _wave, "jump": _jump, "squat": _squat, "turn": _turn, "dance": _dance,
    }[spec.family]  # fmt: skip
    builder(track, spec, t)
    return track


def _cycle(spec: MotionSpec, t: np.ndarray, base_hz: float) -> np.ndarray:
    """Phase angle of the motion's main cycle."""
    return TWO_PI * (base_hz * spec.speed * t + spec.phase)


def _walk(track: dict, spec: MotionSpec, t: np.ndarray) -> None:
    a, d = spec.amplitude, spec.direction
    w = _cycle(spec, t, 1.1)
    swing = 0.45 * a * np.sin(w)
    track["facing"][:] = d * 1.1  # three-quarter view toward the walking direction
    track["root_x"] += d * 0.07 * spec.speed * t
    for s, sign in (("l", 1.0), ("r", -1.0)):
        leg = sign * swing
        track[f"{s}_thigh_flex"] = leg
        bend = 0.7 * a * np.clip(sign * np.cos(w), 0.0, None)  # the knee folds while the leg swings forward
        track[f"{s}_shin_flex"] = leg - bend
        track[f"{s}_upper_arm_flex"] = -0.8 * leg
        track[f"{s}_forearm_flex"] = -0.8 * leg + 0.35
    track["lift"] = 0.015 * a * np.abs(np.sin(w))


def _wave(track: dict, spec: MotionSpec, t: np.ndarray) -> None:
    a = spec.amplitude
    s = "l" if spec.direction > 0 else "r"
    w = _cycle(spec, t, 1.8)
    track[f"{s}_upper_arm_abd"][:] = np.pi / 2 + 0.25 * a
    track[f"{s}_forearm_abd"] = np.pi - 0.25 + 0.55 * a * np.sin(w)
    track[f"{s}_forearm_flex"][:] = 0.1
    track["torso_side"] = -spec.direction * 0.06 * a * (1 + np.sin(w)) / 2
    track["head_tilt"] = 0.1 * a * np.sin(w / 2)


def _jump(track: dict, spec: MotionSpec, t: np.ndarray) -> None:
    a = spec.amplitude
    p = (1.0 * spec.speed * t + spec.phase) % 1.0  # jump cycle position
    crouch = np.where(p < 0.25, np.sin(np.pi * p / 0.25), 0.0) + np.where(
        p > 0.8, np.sin(np.pi * (p - 0.8) / 0.2), 0.0
    )
    air = np.where((p >= 0.25) & (p <= 0.8), np.sin(np.pi * (p - 0.25) / 0.55), 0.0)
    track["lift"] = 0.22 * a * air
    for s in ("l", "r"):
        track[f"{s}_thigh_flex"] = 0.9 * a * crouch + 0.25 * air
        track[f"{s}_shin_flex"] = -0.9 * a * crouch - 0.3 * air
        track[f"{s}_upper_arm_abd"] = 0.15 + 2.3 * a * air
        track[f"{s}_forearm_abd"] = 0.1 + 2.5 * a * air
        track[f"{s}_upper_arm_flex"] = -0.4 * crouch
    track["torso_fwd"] = 0.3 * a * crouch


def _squat(track: dict, spec: MotionSpec, t: np.ndarray) -> None:
    a = spec.amplitude
    depth = a * (1.0 - np.cos(_cycle(spec, t, 0.7))) / 2.0  # 0 standing .. a at the bottom
    for s in ("l", "r"):
        track[f"{s}_thigh_flex"] = 1.25 * depth
        track[f"{s}_thigh_abd"] = 0.06 + 0.2 * depth
        track[f"{s}_shin_flex"] = -0.9 * depth
        track[f"{s}_upper_arm_flex"] = 1.35 * depth
        track[f"{s}_forearm_flex"] = 1.4 * depth + 0.1
    track["torso_fwd"] = 0.35 * depth
    track["facing"][:] = spec.direction * 0.35  # slight three-quarter view so the fold is visible


def _turn(track: dict, spec: MotionSpec, t: np.ndarray) -> None:
    a = spec.amplitude
    duration = max(float(t[-1]), 1e-6)
    start = 0.1 + 0.15 * spec.phase
    u = np.clip((t / duration - start) / (0.85 - start), 0.0, 1.0)
    u = u * u * (3.0 - 2.0 * u)  # smoothstep
    track["facing"] = spec.direction * np.pi * u
    for s in ("l", "r"):
        track[f"{s}_upper_arm_abd"] = 0.15 + 0.35 * a * np.sin(np.pi * u)
    track["l_thigh_flex"] = 0.2 * a * np.sin(TWO_PI * u)
    track["r_thigh_flex"] = -0.2 * a * np.sin(TWO_PI * u)
    track["l_shin_flex"] = track["l_thigh_flex"] - 0.1
    track["r_shin_flex"] = track["r_thigh_flex"] - 0.1


def _dance(track: dict, spec: MotionSpec, t: np.ndarray) -> None:
    a, d = spec.amplitude, spec.direction
    w = _cycle(spec, t, 1.2)
    track["l_upper_arm_abd"] = np.pi / 2 + 0.9 * a * np.sin(w)
    track["r_upper_arm_abd"] = np.pi / 2 + 0.9 * a * np.sin(w + d * np.pi / 2)
    track["l_forearm_abd"] = track["l_upper_arm_abd"] + 0.6 * a * np.sin(2 * w)
    track["r_forearm_abd"] = track["r_upper_arm_abd"] + 0.6 * a * np.sin(2 * w + np.pi)
    track["torso_side"] = 0.15 * a * np.sin(w)
    track["root_x"] += 0.03 * a * np.sin(w)
    track["facing"] = 0.45 * a * np.sin(w / 2)
    for s, sign in (("l", 1.0), ("r", -1.0)):
        bend = 0.45 * a * np.clip(sign * np.sin(w), 0.0, None)
        track[f"{s}_thigh_flex"] = bend
        track[f"{s}_shin_flex"] = -bend
