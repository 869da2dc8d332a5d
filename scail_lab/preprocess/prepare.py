"""Raw footage -> a SCAIL-2 example folder that sample.py, tools/make_shards.py and the loader accept unchanged.

    ref.jpg, ref_mask.png                    the reference and its colour mask (slot colours on black)
    rendered_v2.mp4                          the driving video (end-to-end) or the pose render (pose-driven)
    rendered_mask_v2.mp4 | replace_mask.mp4  colour masks on black (animation) | the replaced person on white
    target.mp4                               optional: the ground-truth result, for training pairs
    prompt.txt, meta.json, preview.png       caption; what ran (backends, versions, settings, coverage); a contact sheet

Everything is written into a temporary folder beside `out` and renamed into place, so an interrupted run leaves
no half-written example. Errors that name the problem come before any detector runs where they can.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scail_lab.data import media, schema
from scail_lab.data.transforms import resize_cover_crop
from scail_lab.preprocess.captions import TemplateCaptioner
from scail_lab.preprocess.masks import colour_masks, replacement_slot, tracks_from_colour_masks
from scail_lab.preprocess.people import PersonTrack, bind_slots
from scail_lab.preprocess.render import align_to_reference, render_pose

MODES = ("animate", "replace")
KINDS = ("video", "pose")


@dataclass
class PrepareOptions:
    mode: str = "animate"
    driving_kind: str = "video"
    size: tuple[int, int] | None = None  # (H, W) multiples of 32; None: the driving video's size, cropped to 32s
    render_style: str = "3d"
    align: bool = True  # pose renders take the reference's proportions and placement
    clean_radius: int = 1
    smooth_window: int = 3
    min_coverage: float = 0.5  # share of driving frames that must show the people
    replace_point: tuple[float, float] | None = None  # (x, y) in output pixels: the person to replace
    prompt: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.driving_kind not in KINDS:
            raise ValueError(f"mode must be one of {MODES} and driving_kind one of {KINDS}, got {self.mode!r}, "
                             f"{self.driving_kind!r}")  # fmt: skip
        if self.size is not None and (len(self.size) != 2 or any(s % 32 or s <= 0 for s in self.size)):
            raise ValueError(f"size must be (H, W), positive multiples of 32, got {self.size}")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in [0, 1], got {self.min_coverage}")


def read_inputs(driving: Path, ref: Path, target: Path | None) -> tuple[np.ndarray, float, np.ndarray, np.ndarray | None]:
    """Decode with errors that name the file; nothing runs on a missing or unreadable input."""
    for path in (driving, ref, *([target] if target else [])):
        if not Path(path).is_file():
            raise FileNotFoundError(f"input not found: {path}")
    try:
        frames = media.decode_video(driving)
        fps = media.probe_video(driving).fps
    except ValueError as err:
        raise ValueError(f"cannot read the driving video {driving}: {err}") from err
    try:
        image = media.decode_image(Path(ref).read_bytes())
    except ValueError as err:
        raise ValueError(f"cannot read the reference image {ref}: {err}") from err
    target_frames = None
    if target is not None:
        try:
            target_frames = media.decode_video(target)
        except ValueError as err:
            raise ValueError(f"cannot read the target video {target}: {err}") from err
        if len(target_frames) != len(frames):
            raise ValueError(f"the target has {len(target_frames)} frames, the driving video {len(frames)}")
    if len(frames) < 5:
        raise ValueError(f"the driving video {driving} has {len(frames)} frames; at least 5 are needed")
    return frames, fps, image, target_frames


def output_size(frames: np.ndarray, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return tuple(size)
    h, w = frames.shape[1:3]
    if h < 32 or w < 32:
        raise ValueError(f"the driving video is {h}x{w}; at least 32x32 is needed")
    return (h // 32 * 32, w // 32 * 32)


def prepare_example(driving: str | Path, ref: str | Path, out: str | Path, options: PrepareOptions,
                    driving_backend, ref_backend=None, target: str | Path | None = None,
                    edited_mask: str | Path | None = None, captioner=None) -> dict:  # fmt: skip
    """Write one example folder (see the module docstring); returns its meta.json content.

    `driving_backend` / `ref_backend` (default: the same) find the people (scail_lab.preprocess.backends);
    `edited_mask`: a colour-mask video of the driving clip (a user's own or edited one) used instead of the
    detector's masks (the detector still gives the joints for pose renders)."""
    start = time.perf_counter()
    out = Path(out)
    frames, fps, image, target_frames = read_inputs(Path(driving), Path(ref), Path(target) if target else None)
    hw = output_size(frames, options.size)
    same_size = tuple(frames.shape[1:3]) == tuple(hw)
    frames = resize_cover_crop(frames, hw)
    image = resize_cover_crop(image[None], hw)[0]
    target_frames = None if target_frames is None else resize_cover_crop(target_frames, hw)
    ref_people = bind_slots((ref_backend or driving_backend).people(image[None]))
    if not ref_people:
        raise ValueError(f"no person found in the reference image {ref}")
    people = bind_slots(driving_backend.people(frames))
    if edited_mask is not None:
        edited = resize_cover_crop(media.decode_video(edited_mask), hw, nearest=True)
        if len(edited) != len(frames):
            raise ValueError(f"the edited mask has {len(edited)} frames, the driving video {len(frames)}")
        masks_only = tracks_from_colour_masks(edited)
        for track, own in zip(people, masks_only, strict=False):
            track.masks = own.masks
        people = people if len(people) >= len(masks_only) else masks_only
    if not people:
        raise ValueError(f"no person found in the driving video {driving}")
    coverage = np.stack([t.coverage() for t in people]).any(axis=0)
    if coverage.mean() < options.min_coverage:
        raise ValueError(f"people are found in {coverage.mean():.0%} of the driving frames ({int(coverage.sum())} of "
                         f"{len(coverage)}), below min_coverage {options.min_coverage:.0%}")  # fmt: skip
    if options.mode == "animate" and len(people) != len(ref_people):
        raise ValueError(f"the reference shows {len(ref_people)} people and the driving video {len(people)}: animation "
                         "binds them one to one by palette colour; crop one of them or use replacement")  # fmt: skip

    files: dict[str, bytes] = {}
    notes: dict = {}
    files[schema.REF_IMAGE_FILES[0]] = media.encode_image(image, ".jpg")
    files[schema.REF_MASK_FILES[1]] = media.encode_image(colour_masks(ref_people, clean_radius=options.clean_radius)[0])
    if options.mode == "replace":  # as many people as the reference shows take their places, slot by slot
        if len(ref_people) == 1:
            slot = replacement_slot(people, options.replace_point)
            chosen = [people[slot]]
        elif len(ref_people) <= len(people):
            slot, chosen = list(range(len(ref_people))), people[: len(ref_people)]
        else:
            raise ValueError(f"the reference shows {len(ref_people)} people, the driving video only {len(people)}")
        mask_video = colour_masks(chosen, white_background=True, clean_radius=options.clean_radius,
                                  smooth_window=options.smooth_window)  # fmt: skip
        files[schema.REPLACE_MASK_FILES[0]] = media.encode_video(mask_video, fps)
        notes["replaced_slot"] = slot
    if options.driving_kind == "pose":
        drawn = people
        if options.align and options.mode == "animate" and len(people) == 1 and np.isfinite(ref_people[0].joints).all():
            aligned, notes["alignment"] = align_to_reference(people[0], ref_people[0])
            drawn = [aligned]
        render, person_map = render_pose(drawn, hw, style=options.render_style)
        files[schema.DRIVING_FILES[0]] = media.encode_video(render, fps)
        if options.mode == "animate":
            pose_tracks = [PersonTrack(t.joints, t.confidence, person_map == k) for k, t in enumerate(drawn)]
            files[schema.ANIMATE_MASK_FILES[0]] = media.encode_video(colour_masks(pose_tracks), fps)
    else:
        # a byte copy when no resize is needed (as SCAIL-Pose copies driving.mp4), else re-encoded at CRF 18
        files[schema.DRIVING_FILES[0]] = Path(driving).read_bytes() if same_size else media.encode_video(frames, fps, 18)
        if options.mode == "animate":
            files[schema.ANIMATE_MASK_FILES[0]] = media.encode_video(
                colour_masks(people, clean_radius=options.clean_radius, smooth_window=options.smooth_window), fps)
    if target_frames is not None:
        files[schema.TARGET_FILES[0]] = media.encode_video(target_frames, fps, 18)
    prompt = options.prompt if options.prompt is not None else (captioner or TemplateCaptioner()).caption(
        options.mode, len(ref_people))
    files[schema.CAPTION_FILES[0]] = prompt.encode()
    meta = {
        schema.META_MODE: options.mode, schema.META_DRIVING_KIND: options.driving_kind,
        schema.META_FPS: fps, schema.META_NUM_FRAMES: len(frames), schema.META_HEIGHT: hw[0], schema.META_WIDTH: hw[1],
        schema.META_NUM_CHARACTERS: len(ref_people) if options.mode == "animate" else 1,
        "preprocess": {
            "driving_backend": driving_backend.name, "ref_backend": (ref_backend or driving_backend).name,
            "versions": {b.name: getattr(b, "version", None) for b in (driving_backend, ref_backend) if b is not None},
            "render_style": options.render_style if options.driving_kind == "pose" else None,
            "clean_radius": options.clean_radius, "smooth_window": options.smooth_window,
            "people_driving": len(people), "people_ref": len(ref_people),
            "coverage": float(coverage.mean()), "frames_with_people": [bool(c) for c in coverage],
            "confidence": [float(np.nanmean(t.confidence)) for t in people],
            "edited_mask": str(edited_mask) if edited_mask else None, "seconds": time.perf_counter() - start,
            **notes,
        },
    }  # fmt: skip
    files[schema.META_FILE] = json.dumps(meta, indent=1).encode()
    files["preview.png"] = media.encode_image(preview(image, files, fps))
    media.atomic_write_folder(files, out)
    return meta


def preview(image: np.ndarray, files: dict[str, bytes], fps: float, num_frames: int = 4) -> np.ndarray:
    """Reference and its mask, then rows of frames of the driving input and its mask (whatever was written)."""
    rows = [np.concatenate([image, media.decode_image(files[schema.REF_MASK_FILES[1]])], axis=1)]
    for name in (schema.DRIVING_FILES[0], schema.ANIMATE_MASK_FILES[0], schema.REPLACE_MASK_FILES[0]):
        if name in files:
            video = media.decode_video(files[name])
            picks = np.linspace(0, len(video) - 1, num_frames).round().astype(int)
            rows.append(np.concatenate(list(video[picks]), axis=1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
