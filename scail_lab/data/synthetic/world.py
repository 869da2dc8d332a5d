"""The synthetic motion-transfer world: procedural motion pairs with exact ground truth.

A sample is deterministic from (world seed, split, index). Per sample:
- reference image of identity A (+ colour mask), standing in its own scene (scene_a);
- driving video of identity B doing motion M in scene_b (+ per-frame colour mask), the skeleton render
  of M (coloured limbs on black, + its colour mask), and an augmented driving variant (identity C doing M
  for end-to-end samples; a jittered skeleton with other limb widths for pose-driven samples);
- the ground-truth target: A doing M along B's trajectory, on scene_a for animation or in scene_b for
  replacement (whose driving mask is the colour silhouette on a white background);
- reverse-driving extras for end-to-end samples: a reference of B and the target's own driving mask;
- caption, gt.json content (target joints, identity colours, ...), target foreground mask and the target's
  background plate (its scene with no character, same camera pan: what a foreground estimator compares with).

Two-character samples bind people with the SCAIL palette: people are sorted left-to-right by the centre
of their first-frame bounding box, slot k gets DEFAULT_PALETTE[k] (blue, red, green, magenta, cyan,
yellow) in both the reference and the driving masks, and the reference person in slot k performs the
motion of the driving person in slot k. A single character takes the first colour (blue).

Splits (identities, motions and scenes are disjoint id pools): ids [0, n_train) are train,
[n_train, n_train + n_val) val, the next n_test ids test. A sample of split s draws every identity,
motion and scene from split s's pools, so val/test identities and motions never appear in train.
`families` restricts the motion pools to some motion families (motion id k has family k mod 6): a world
without one family trains a base model that never saw it, and a world of only that family (same seed, so the
same identity and scene pools) gives the "new motion pairs" to fine-tune and test on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scail_lab.data import schema
from scail_lab.data.synthetic.character import Identity, make_identity
from scail_lab.data.synthetic.motion import MOTION_FAMILIES, MotionSpec, motion_spec, motion_track
from scail_lab.data.synthetic.render import character_parts, compose, rasterize, skeleton_parts
from scail_lab.data.synthetic.scene import Scene, make_scene
from scail_lab.data.synthetic.skeleton import JOINT_NAMES, body_points, neutral_track, place, rotate_facing

SPLITS = ("train", "val", "test")
# SCAIL-Pose DEFAULT_PALETTE order (blue, red, green, magenta, cyan, yellow) as RGB mask colours.
DEFAULT_PALETTE = ((0, 0, 255), (255, 0, 0), (0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0))
DEFAULT_PALETTE_NAMES = ("blue", "red", "green", "magenta", "cyan", "yellow")


@dataclass(frozen=True)
class WorldConfig:
    """Sizes, clip length, split pools and sample-kind probabilities of the synthetic world."""

    height: int = 64
    width: int = 64
    num_frames: int = 17
    fps: float = 8.0
    seed: int = 0
    identities: tuple[int, int, int] = (48, 12, 12)  # pool sizes: train, val, test
    motions: tuple[int, int, int] = (60, 12, 12)  # multiples of 6 give every family to every split
    scenes: tuple[int, int, int] = (32, 8, 8)
    p_replace: float = 0.3
    p_pose_driven: float = 0.25  # among animation samples
    p_two_characters: float = 0.2
    p_pan: float = 0.3
    p_continuation: float = 0.2
    supersample: int = 2
    families: tuple[str, ...] = MOTION_FAMILIES  # motion families the samples draw from

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if v % 32 or not 32 <= v <= 256:
                raise ValueError(f"{name} must be a multiple of 32 in [32, 256], got {v}")
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1, got {self.num_frames}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        for name in ("p_replace", "p_pose_driven", "p_two_characters", "p_pan", "p_continuation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        need = 6 if self.p_two_characters > 0 else 3
        for name, least in (("identities", need), ("motions", 2), ("scenes", 2)):
            pools = tuple(int(v) for v in getattr(self, name))
            if len(pools) != 3 or min(pools) < least:
                raise ValueError(
                    f"{name} must be 3 pool sizes (train, val, test) each >= {least}, got {pools}"
                )
            object.__setattr__(self, name, pools)
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        families = tuple(str(f) for f in self.families)
        unknown = sorted(set(families) - set(MOTION_FAMILIES))
        if not families or unknown or len(set(families)) != len(families):
            raise ValueError(f"families must be distinct names from {MOTION_FAMILIES}, got {families}")
        object.__setattr__(self, "families", families)
        need_motions = 2 if self.p_two_characters > 0 else 1
        for split in SPLITS:
            if len(self.motion_pool(split)) < need_motions:
                raise ValueError(
                    f"the {split} motion pool has {len(self.motion_pool(split))} motions of families {families}; "
                    f"need {need_motions} (raise `motions` pool sizes: motion id k has family k mod "
                    f"{len(MOTION_FAMILIES)})"
                )

    def pool(self, kind: str, split: str) -> range:
        """Ids of `kind` ("identities" | "motions" | "scenes") that belong to `split`."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        sizes = getattr(self, kind)
        start = sum(sizes[: SPLITS.index(split)])
        return range(start, start + sizes[SPLITS.index(split)])

    def motion_pool(self, split: str) -> list[int]:
        """Motion ids of `split` whose family is one of `families`."""
        return [m for m in self.pool("motions", split) if MOTION_FAMILIES[m % len(MOTION_FAMILIES)] in self.families]


@dataclass
class SyntheticSample:
    """All media of one sample as uint8 RGB arrays ([N, H, W, 3] videos, [H, W, 3] images) plus GT."""

    key: str
    split: str
    index: int
    mode: str
    driving_kind: str
    continuation: bool
    num_characters: int
    ref: np.ndarray
    ref_mask: np.ndarray
    raw_driving: np.ndarray
    driving: np.ndarray  # the model's driving input: raw_driving (video) or pose (pose-driven)
    driving_mask: np.ndarray
    driving_aug: np.ndarray
    driving_mask_aug: np.ndarray
    pose: np.ndarray
    pose_mask: np.ndarray
    target: np.ndarray
    target_mask: np.ndarray
    target_background: np.ndarray  # the target's scene with no character (same camera), the plate
    caption: str
    gt: dict
    ref_driving: np.ndarray | None = None
    ref_driving_mask: np.ndarray | None = None
    target_driving_mask: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class _Plan:
    """The random draws of one sample (identities A = ref, B = driving, C = augmented driving)."""

    num: int
    mode: str
    kind: str
    continuation: bool
    ref_ids: list[int]
    drv_ids: list[int]
    aug_ids: list[int]
    identities: dict[int, Identity]
    motions: list[MotionSpec]
    tracks: list[dict]
    scene_ids: list[int]
    scenes: list[Scene]
    pan_speed: float
    pan_px: np.ndarray  # [N] view offset into the scene canvas


@dataclass
class _Render:
    frames: np.ndarray  # [N, H, W, 3]
    person: np.ndarray  # [N, H, W] actor index, -1 background
    joints: list[np.ndarray]  # per actor [N, 14, 2], pixel-index coordinates (centre of pixel 0 = 0)
    heights: list[float]
    background: np.ndarray  # [N, H, W, 3] the scene the actors were composited over


class SyntheticWorld:
    """Generates samples; `sample(split, index)` is a pure function of the config, split and index."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config or WorldConfig()
        self.hw = (self.config.height, self.config.width)

    # ----------------------------------------------------------------------------------------- api
    def sample_seed(self, split: str, index: int) -> list[int]:
        return [self.config.seed, SPLITS.index(split), int(index)]

    def sample(self, split: str, index: int) -> SyntheticSample:
        """Sample `index` of `split` (see the module docstring for its contents)."""
        plan = self._plan(split, index)
        ident, num, white_bg = plan.identities, plan.num, plan.mode == "replace"
        scene_a, scene_b = plan.scenes
        actors = lambda ids: [(ident[i], tr) for i, tr in zip(ids, plan.tracks, strict=True)]  # noqa: E731
        # driving video of B; slots = left-to-right order of the first frame's bounding boxes
        drv = self._render(actors(plan.drv_ids), scene_b, plan.pan_px)
        drv_slot = _slots(drv.person[0], drv.joints)
        # reference image of A: the person in slot k stands at the k-th position from the left
        ref_pose_rng = np.random.default_rng(self.sample_seed(split, index) + [1])
        ref = self._render_still([ident[i] for i in plan.ref_ids], scene_a, ref_pose_rng)
        ref_slot = _slots(ref.person[0], ref.joints)
        ref_at_slot = {slot: a for a, slot in enumerate(ref_slot)}
        tgt_ids = [plan.ref_ids[ref_at_slot[drv_slot[j]]] for j in range(num)]  # binding by palette slot
        tgt_scene = scene_a if plan.mode == "animate" else scene_b
        tgt = self._render(actors(tgt_ids), tgt_scene, plan.pan_px)
        pose, pose_person = self._skeleton(drv, jitter_rng=None)
        pose_mask = _colour_mask(pose_person, drv_slot, False)
        if plan.kind == "video":
            aug = self._render(actors(plan.aug_ids), scene_b, plan.pan_px)
            driving_aug, driving_mask_aug = aug.frames, _colour_mask(aug.person, drv_slot, white_bg)
        else:
            jitter = np.random.default_rng(self.sample_seed(split, index) + [2])
            driving_aug, aug_person = self._skeleton(drv, jitter_rng=jitter)
            driving_mask_aug = _colour_mask(aug_person, drv_slot, False)
        video = plan.kind == "video"
        sample = SyntheticSample(
            key=f"{split}_{index:06d}", split=split, index=int(index), mode=plan.mode, driving_kind=plan.kind,
            continuation=plan.continuation, num_characters=num,
            ref=ref.frames[0], ref_mask=_colour_mask(ref.person, ref_slot, False)[0],
            raw_driving=drv.frames, driving=drv.frames if video else pose,
            driving_mask=_colour_mask(drv.person, drv_slot, white_bg) if video else pose_mask,
            driving_aug=driving_aug, driving_mask_aug=driving_mask_aug, pose=pose, pose_mask=pose_mask,
            target=tgt.frames,
            target_mask=np.repeat(((tgt.person >= 0) * 255).astype(np.uint8)[..., None], 3, axis=-1),
            target_background=tgt.background,
            caption=self._caption(plan.mode, [ident[i] for i in tgt_ids], plan.motions, drv_slot, tgt_scene, plan.pan_speed),
            gt={},
        )  # fmt: skip
        if video:
            rev_slot = _slots(tgt.person[0], tgt.joints)
            order = sorted(range(num), key=lambda j: rev_slot[j])  # B_j stands at position rev_slot[j]
            rev_ref = self._render_still([ident[plan.drv_ids[j]] for j in order], scene_b, ref_pose_rng)
            sample.ref_driving = rev_ref.frames[0]
            sample.ref_driving_mask = _colour_mask(
                rev_ref.person, _slots(rev_ref.person[0], rev_ref.joints), False
            )[0]
            sample.target_driving_mask = _colour_mask(tgt.person, rev_slot, white_bg)
        sample.gt = self._ground_truth(plan, split, index, tgt, drv, tgt_ids, drv_slot)
        sample.gt[schema.GT_REF_JOINTS] = _joint_lists([ref.joints[a] for a in sorted(range(num), key=lambda a: ref_slot[a])])
        return sample

    def _plan(self, split: str, index: int) -> _Plan:
        """Every random draw of a sample, in a fixed order."""
        cfg = self.config
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = np.random.default_rng(self.sample_seed(split, index))
        num = 2 if rng.random() < cfg.p_two_characters else 1
        mode = "replace" if rng.random() < cfg.p_replace else "animate"
        kind = "pose" if (mode == "animate" and rng.random() < cfg.p_pose_driven) else "video"
        pan = rng.random() < cfg.p_pan
        continuation = bool(rng.random() < cfg.p_continuation)
        ids = [
            int(i) for i in rng.choice(np.array(cfg.pool("identities", split)), size=3 * num, replace=False)
        ]
        motion_ids = rng.choice(np.array(cfg.motion_pool(split)), size=num, replace=False)
        motions = [motion_spec(cfg.seed, int(m)) for m in motion_ids]
        scene_ids = [int(s) for s in rng.choice(np.array(cfg.pool("scenes", split)), size=2, replace=False)]
        t = np.arange(cfg.num_frames) / cfg.fps
        pan_speed = 0.0  # pixels per second; a walk is followed by the camera
        if pan:
            sign = motions[0].direction if motions[0].family == "walk" else int(rng.choice([-1, 1]))
            pan_speed = sign * rng.uniform(0.04, 0.12) * cfg.width
        margin = int(math.ceil(abs(pan_speed) * t[-1])) + 2
        # view offset into the wider scene canvas; it stays inside [0, margin] for the whole clip
        start = (margin - 1.0) if pan_speed < 0 else (1.0 if pan_speed > 0 else 0.0)
        ground = float(rng.uniform(0.86, 0.95))
        lanes = [None] if num == 1 else [0.3 + rng.uniform(-0.04, 0.04), 0.7 + rng.uniform(-0.04, 0.04)]
        tracks = []
        for spec, lane in zip(motions, lanes, strict=True):
            track = motion_track(spec, cfg.num_frames, cfg.fps, x0=lane)
            track["ground_y"][:] = ground
            tracks.append(track)
        return _Plan(
            num=num, mode=mode, kind=kind, continuation=continuation,
            ref_ids=ids[:num], drv_ids=ids[num : 2 * num], aug_ids=ids[2 * num :],
            identities={i: make_identity(cfg.seed, i) for i in ids}, motions=motions, tracks=tracks,
            scene_ids=scene_ids, scenes=[make_scene(cfg.seed, s, self.hw, margin) for s in scene_ids],
            pan_speed=float(pan_speed), pan_px=start + pan_speed * t,
        )  # fmt: skip

    def _ground_truth(self, plan: _Plan, split: str, index: int, tgt: _Render, drv: _Render, tgt_ids: list[int],
                      drv_slot: list[int]) -> dict:  # fmt: skip
        """gt.json content; characters listed by palette slot."""
        cfg, ident = self.config, plan.identities
        by_slot = sorted(range(plan.num), key=lambda j: drv_slot[j])
        return {
            schema.GT_JOINTS: _joint_lists([tgt.joints[j] for j in by_slot]),
            schema.GT_JOINT_NAMES: _joint_names(plan.num),
            schema.GT_IDENTITY_COLORS: [c for j in by_slot for c in ident[tgt_ids[j]].colours],
            schema.GT_FPS: float(cfg.fps),
            schema.GT_MODE: plan.mode,
            schema.GT_MOTION: "+".join(plan.motions[j].family for j in by_slot),
            schema.GT_IDENTITY_REF: "+".join(ident[tgt_ids[j]].name for j in by_slot),
            schema.GT_IDENTITY_DRIVING: "+".join(ident[plan.drv_ids[j]].name for j in by_slot),
            schema.GT_SPLIT: split,
            schema.GT_SEED: cfg.seed,
            schema.GT_INDEX: int(index),
            schema.GT_NUM_CHARACTERS: plan.num,
            schema.GT_DRIVING_KIND: plan.kind,
            schema.GT_DRIVING_JOINTS: _joint_lists([drv.joints[j] for j in by_slot]),
            schema.GT_MOTION_PARAMS: [plan.motions[j].to_dict() for j in by_slot],
            schema.GT_SCENE: {
                "ref": plan.scene_ids[0],
                "driving": plan.scene_ids[1],
                "pan_px_per_s": plan.pan_speed,
            },
            schema.GT_PALETTE: [DEFAULT_PALETTE_NAMES[k] for k in range(plan.num)],
            schema.GT_HEIGHT: cfg.height,
            schema.GT_WIDTH: cfg.width,
            schema.GT_NUM_FRAMES: cfg.num_frames,
        }

    # ----------------------------------------------------------------------------------- rendering
    def _geometry(
        self, ident: Identity, track: dict, shift_px: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Continuous pixel coordinates (pixel i spans [i, i + 1)) [N, 14, 2], depth [N, 14], height."""
        height_px = ident.height_frac * self.hw[0]
        cam = rotate_facing(body_points(track, ident.lengths), track["facing"])
        xy, depth = place(cam, track, height_px, self.hw, shift_px, ident.widths["foot"] / 2)
        return xy, depth, height_px

    def _render(self, actors: list[tuple[Identity, dict]], scene: Scene, pan_px: np.ndarray) -> _Render:
        ss = self.config.supersample
        n = len(pan_px)
        frames = [[] for _ in range(n)]
        joints, heights = [], []
        for a, (ident, track) in enumerate(actors):
            # the camera moves by pan_px - pan_px[0]: characters start where their track puts them
            xy, depth, height_px = self._geometry(ident, track, pan_px - pan_px[0])
            joints.append(xy - 0.5)
            heights.append(height_px)
            for i in range(n):
                # supersampled pixel-index coordinates; actor a is drawn in front of actors < a
                parts = character_parts(
                    ident, xy[i] * ss - 0.5, depth[i] + 10.0 * a, float(track["facing"][i]), height_px * ss, a
                )
                frames[i].extend(parts)
        rgb, alpha, person = rasterize(frames, self.hw, ss)
        background = scene.frames(self.hw[1], pan_px)
        return _Render(compose(background, rgb, alpha), person, joints, heights, background)

    def _render_still(self, idents: list[Identity], scene: Scene, rng: np.random.Generator) -> _Render:
        """A standing rest pose (random arm angles, slight turn); person k at the k-th position from the left."""
        num = len(idents)
        positions = (
            [float(rng.uniform(0.35, 0.65))]
            if num == 1
            else [0.28 + rng.uniform(-0.03, 0.03), 0.72 + rng.uniform(-0.03, 0.03)]
        )
        actors = []
        for ident, x in zip(idents, positions, strict=True):
            track = neutral_track(1)
            track["root_x"][:] = x
            track["ground_y"][:] = rng.uniform(0.86, 0.95)
            track["facing"][:] = rng.uniform(-0.25, 0.25)
            for s in ("l", "r"):
                track[f"{s}_upper_arm_abd"][:] = rng.uniform(0.1, 0.5)
                track[f"{s}_forearm_abd"][:] = rng.uniform(0.05, 0.6)
            actors.append((ident, track))
        return self._render(actors, scene, np.zeros(1))

    def _skeleton(
        self, drv: _Render, jitter_rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pose render of the driving joints: coloured limbs on black ([N, H, W, 3]) and its person map."""
        ss = self.config.supersample
        n = drv.frames.shape[0]
        frames = [[] for _ in range(n)]
        for a, (xy, height_px) in enumerate(zip(drv.joints, drv.heights, strict=True)):
            radius = max(0.6, 0.022 * height_px) * ss
            if jitter_rng is not None:
                radius *= float(jitter_rng.uniform(0.6, 1.6))
            for i in range(n):
                jitter = (
                    None
                    if jitter_rng is None
                    else jitter_rng.normal(0.0, 0.012 * height_px * ss, size=xy[i].shape)
                )
                frames[i].extend(skeleton_parts((xy[i] + 0.5) * ss - 0.5, a, radius, jitter))
        rgb, _, person = rasterize(frames, self.hw, ss)
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8), person  # premultiplied over black

    # ------------------------------------------------------------------------------------- caption
    @staticmethod
    def _caption(mode, idents, motions, drv_slot, scene, pan_speed) -> str:
        where = f"in front of {scene.description}" if mode == "animate" else f"among {scene.description}"
        camera = "" if pan_speed == 0 else f", the camera pans {'right' if pan_speed > 0 else 'left'}"
        if len(idents) == 1:
            return f"{idents[0].describe()} {motions[0].verb} {where}{camera}."
        order = sorted(range(len(idents)), key=lambda j: drv_slot[j])
        left, right = order[0], order[1]
        return (
            f"Two people {where}{camera}: on the left, {idents[left].describe()} {motions[left].verb}; "
            f"on the right, {idents[right].describe()} {motions[right].verb}."
        )


def _slots(person0: np.ndarray, joints: list[np.ndarray]) -> list[int]:
    """Slot of each actor: rank of its first-frame bounding-box centre from the left (root x if unseen)."""
    centres = []
    for a, xy in enumerate(joints):
        cols = np.nonzero((person0 == a).any(axis=0))[0]
        centres.append((cols.min() + cols.max()) / 2.0 if cols.size else float(xy[0, :, 0].mean()))
    order = np.argsort(np.array(centres), kind="stable")
    slots = [0] * len(joints)
    for rank, a in enumerate(order):
        slots[int(a)] = rank
    return slots


def _colour_mask(person: np.ndarray, slots: list[int], white_background: bool) -> np.ndarray:
    """Person map [N, H, W] -> palette colour mask [N, H, W, 3] (black or white background)."""
    mask = np.full((*person.shape, 3), 255 if white_background else 0, np.uint8)
    for a, slot in enumerate(slots):
        mask[person == a] = DEFAULT_PALETTE[slot]
    return mask


def _joint_lists(per_actor: list[np.ndarray]) -> list:
    """[P] x [N, 14, 2] -> [N][P * 14][2] rounded floats (JSON)."""
    stacked = np.concatenate(per_actor, axis=1)  # [N, P*14, 2]
    return np.round(stacked, 3).tolist()


def _joint_names(num: int) -> list[str]:
    if num == 1:
        return list(JOINT_NAMES)
    return [f"p{p}_{name}" for p in range(num) for name in JOINT_NAMES]
