"""SCAIL-2 example folders -> raw samples (field -> encoded bytes), and the validation every sample passes.

A raw sample is the dict a pixel shard stores: shard field names (schema `F_*`) mapped to the file bytes,
plus `__key__`. Reading a folder and reading its shard give the same dict, so both paths share one decoder.

Folder layout (accepted names, preferred first; see schema.py):
    ref.jpg|ref.png, ref_mask.jpg|ref_mask.png, rendered_v2.mp4|rendered_aligned.mp4|rendered.mp4,
    replace_mask.mp4 (replacement) or rendered_mask_v2.mp4 (animation), target.mp4|GT.mp4, prompt.txt,
    optional meta.json, gt.json, target_mask.mp4, rendered_v2_aug.mp4 (+ its mask), ref_driving.png,
    ref_driving_mask.png, target_driving_mask.mp4 (reverse driving).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from scail_lab.data import schema
from scail_lab.data.media import VideoInfo, decode_image, decode_video, probe_video

logger = logging.getLogger(__name__)

FPS_TOLERANCE = 1e-2
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-/]")


@dataclass(frozen=True)
class SampleInfo:
    """What validation learned about a raw sample."""

    key: str
    num_frames: int
    fps: float
    height: int
    width: int
    mode: str
    driving_kind: str
    has_masks: bool
    has_driving_aug: bool
    has_reverse: bool

    def to_dict(self) -> dict:
        return asdict(self)


def sample_key(folder: Path, root: Path | None = None) -> str:
    """A webdataset-safe key: the folder path relative to `root`, dots and odd characters replaced by `_`."""
    rel = folder.relative_to(root) if root is not None else Path(folder.name)
    if rel == Path("."):  # the root itself is the sample folder
        rel = Path(folder.resolve().name)
    key = _KEY_BAD_CHARS.sub("_", rel.as_posix()).replace("/", "__")
    return key or "sample"


def find_sample_folders(root: str | Path) -> list[Path]:
    """Folders under `root` (recursively, `root` included) that hold a driving video, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"sample root is not a directory: {root}")
    found = set()
    for name in schema.DRIVING_FILES:
        found.update(p.parent for p in root.rglob(name))
    return sorted(found)


def _first(files: Mapping[str, bytes], names: Iterable[str]) -> str | None:
    for name in names:
        if name in files:
            return name
    return None


def _image_field(base: str, name: str) -> str:
    return f"{base}.{Path(name).suffix.lower().lstrip('.')}"


KNOWN_FILES = frozenset(
    (*schema.REF_IMAGE_FILES, *schema.REF_MASK_FILES, *schema.DRIVING_FILES, *schema.REPLACE_MASK_FILES,
     *schema.ANIMATE_MASK_FILES, *schema.TARGET_FILES, *schema.CAPTION_FILES, schema.META_FILE, schema.GT_FILE,
     schema.TARGET_MASK_FILE, *schema.DRIVING_AUG_FILES, *schema.DRIVING_MASK_AUG_FILES, *schema.REVERSE_REF_FILES,
     *schema.REVERSE_REF_MASK_FILES, *schema.REVERSE_DRIVING_MASK_FILES)
)  # fmt: skip


def collect_folder(folder: str | Path, key: str | None = None) -> dict[str, bytes | str]:
    """Read the files of one example folder into a raw sample (field -> bytes). Missing files are absent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"sample folder does not exist: {folder}")
    files = {name: (folder / name).read_bytes() for name in KNOWN_FILES if (folder / name).is_file()}
    return collect_files(files, key or sample_key(folder), source=str(folder))


def collect_files(files: Mapping[str, bytes], key: str, source: str = "") -> dict[str, bytes | str]:
    """Folder files (file name -> bytes) -> raw sample (shard field -> bytes).

    meta.json (written into the sample) records the original file names, the mode (replace when
    replace_mask.mp4 exists, else animate, unless the folder's meta.json says otherwise) and the driving
    kind ("pose" for SCAIL-Preview pose renders, else "video", unless meta.json says otherwise).
    """
    sample: dict[str, bytes | str] = {schema.KEY: key}
    used: dict[str, str] = {}

    def put(field: str, name: str | None) -> None:
        if name is not None:
            sample[field] = files[name]
            used[field] = name

    for base, names in (
        (schema.F_REF, schema.REF_IMAGE_FILES),
        (schema.F_REF_MASK, schema.REF_MASK_FILES),
        (schema.F_REVERSE_REF, schema.REVERSE_REF_FILES),
        (schema.F_REVERSE_REF_MASK, schema.REVERSE_REF_MASK_FILES),
    ):
        name = _first(files, names)
        if name is not None:
            put(_image_field(base, name), name)
    driving = _first(files, schema.DRIVING_FILES)
    put(schema.F_DRIVING, driving)
    replace_mask = _first(files, schema.REPLACE_MASK_FILES)
    put(schema.F_DRIVING_MASK, replace_mask or _first(files, schema.ANIMATE_MASK_FILES))
    put(schema.F_TARGET, _first(files, schema.TARGET_FILES))
    put(schema.F_CAPTION, _first(files, schema.CAPTION_FILES))
    put(schema.F_TARGET_MASK, _first(files, (schema.TARGET_MASK_FILE,)))
    put(schema.F_DRIVING_AUG, _first(files, schema.DRIVING_AUG_FILES))
    put(schema.F_DRIVING_MASK_AUG, _first(files, schema.DRIVING_MASK_AUG_FILES))
    put(schema.F_REVERSE_DRIVING_MASK, _first(files, schema.REVERSE_DRIVING_MASK_FILES))
    put(schema.F_GT, _first(files, (schema.GT_FILE,)))

    meta: dict = {}
    if schema.META_FILE in files:
        try:
            meta = json.loads(files[schema.META_FILE])
        except json.JSONDecodeError as exc:
            sample["__bad_meta__"] = f"meta.json is not valid JSON: {exc}"
        if not isinstance(meta, dict):
            sample["__bad_meta__"] = "meta.json must hold an object"
            meta = {}
    meta.setdefault(schema.META_MODE, "replace" if replace_mask is not None else "animate")
    preview_pose = driving is not None and driving in schema.PREVIEW_POSE_FILES
    meta.setdefault(schema.META_DRIVING_KIND, "pose" if preview_pose else "video")
    if source:
        meta[schema.META_SOURCE] = source
    meta[schema.META_FILES] = used
    sample[schema.F_META] = json.dumps(meta, sort_keys=True).encode()
    return sample


def read_meta(sample: Mapping[str, bytes]) -> dict:
    """The sample's meta.json as a dict ({} when absent)."""
    raw = sample.get(schema.F_META)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"meta.json is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"meta.json must hold an object, got {type(meta).__name__}")
    return meta


def _required(sample: Mapping, require_masks: bool) -> list[tuple[str, str]]:
    """(field, human name) of every field a sample must have."""
    needed = [
        (schema.image_field(schema.F_REF, sample) or "ref.*", "reference image (ref.jpg|ref.png)"),
        (schema.F_DRIVING, "driving video (rendered_v2.mp4|rendered_aligned.mp4|rendered.mp4)"),
        (schema.F_TARGET, "target video (target.mp4|GT.mp4)"),
        (schema.F_CAPTION, "caption (prompt.txt)"),
    ]
    if require_masks:
        needed += [
            (schema.image_field(schema.F_REF_MASK, sample) or "ref_mask.*", "reference mask (ref_mask.jpg|ref_mask.png)"),
            (schema.F_DRIVING_MASK, "driving mask (rendered_mask_v2.mp4|replace_mask.mp4)"),
        ]
    return needed


def _check_video(sample: Mapping, field: str, full_decode: bool) -> VideoInfo:
    try:
        info = probe_video(sample[field])
        if full_decode:
            frames = decode_video(sample[field])
            if frames.shape[0] != info.num_frames:
                raise ValueError(f"header says {info.num_frames} frames, decoded {frames.shape[0]}")
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from exc
    return info


def has_variants(raw: Mapping, driving_kind: str, need_masks: bool) -> tuple[bool, bool]:
    """(has an augmented driving variant, has the reverse-driving files), given whether masks are needed."""
    has_aug = schema.F_DRIVING_AUG in raw and (not need_masks or schema.F_DRIVING_MASK_AUG in raw)
    rev_masks = schema.image_field(schema.F_REVERSE_REF_MASK, raw) is not None and schema.F_REVERSE_DRIVING_MASK in raw
    has_rev = (
        driving_kind == "video"
        and schema.image_field(schema.F_REVERSE_REF, raw) is not None
        and (not need_masks or rev_masks)
    )
    return has_aug, has_rev


def _check_meta(sample: Mapping, require_masks: bool) -> tuple[str, str]:
    """Required files, caption encoding, meta.json values -> (mode, driving kind)."""
    if "__bad_meta__" in sample:
        raise ValueError(str(sample["__bad_meta__"]))
    for field, name in _required(sample, require_masks):
        if field not in sample:
            raise ValueError(f"missing {name}")
    meta = read_meta(sample)
    mode = meta.get(schema.META_MODE, "animate")
    kind = meta.get(schema.META_DRIVING_KIND, "video")
    if mode not in schema.MODES:
        raise ValueError(f"meta.json mode must be one of {schema.MODES}, got {mode!r}")
    if kind not in schema.DRIVING_KINDS:
        raise ValueError(f"meta.json driving_kind must be one of {schema.DRIVING_KINDS}, got {kind!r}")
    try:
        sample[schema.F_CAPTION].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"caption is not UTF-8: {exc}") from exc
    return mode, kind


def _check_images(sample: Mapping) -> dict[str, tuple[int, int]]:
    """Decode every image; each mask must match its image's size. -> base name -> (H, W)."""
    sizes = {}
    for base in (schema.F_REF, schema.F_REF_MASK, schema.F_REVERSE_REF, schema.F_REVERSE_REF_MASK):
        field = schema.image_field(base, sample)
        if field is not None:
            try:
                sizes[base] = decode_image(sample[field]).shape[:2]
            except ValueError as exc:
                raise ValueError(f"{field}: {exc}") from exc
    for image, mask in ((schema.F_REF, schema.F_REF_MASK), (schema.F_REVERSE_REF, schema.F_REVERSE_REF_MASK)):
        if image in sizes and mask in sizes and sizes[image] != sizes[mask]:
            raise ValueError(f"{mask} size {sizes[mask]} differs from {image} size {sizes[image]}")
    return sizes


def _check_videos(sample: Mapping, full_decode: bool) -> VideoInfo:
    """Every video readable and agreeing with the driving video in frame count, fps and size."""
    fields = (schema.F_DRIVING, schema.F_DRIVING_MASK, schema.F_TARGET, schema.F_TARGET_MASK,
              schema.F_DRIVING_AUG, schema.F_DRIVING_MASK_AUG, schema.F_REVERSE_DRIVING_MASK)  # fmt: skip
    infos = {f: _check_video(sample, f, full_decode) for f in fields if f in sample}
    ref = infos[schema.F_DRIVING]
    for field, info in infos.items():
        if info.num_frames != ref.num_frames:
            raise ValueError(f"frame count mismatch: {field} has {info.num_frames}, driving has {ref.num_frames}")
        if abs(info.fps - ref.fps) > FPS_TOLERANCE:
            raise ValueError(f"fps mismatch: {field} is {info.fps:g}, driving is {ref.fps:g}")
        if (info.height, info.width) != (ref.height, ref.width):
            raise ValueError(f"size mismatch: {field} is {info.height}x{info.width}, driving is {ref.height}x{ref.width}")
    return ref


def validate_sample(
    sample: Mapping[str, bytes],
    require_masks: bool = True,
    min_frames: int = 5,
    min_size: int = 32,
    full_decode: bool = True,
) -> SampleInfo:
    """Check a raw sample; raise ValueError naming the first problem, else return its SampleInfo.

    Checks: required files present (masks only when `require_masks`); images and videos readable
    (every frame decoded when `full_decode`); all videos share frame count, fps and size; ref and ref
    mask share a size; at least `min_frames` frames and `min_size` pixels per side; caption is UTF-8;
    meta.json (if any) has a known mode and driving kind.
    """
    mode, kind = _check_meta(sample, require_masks)
    image_sizes = _check_images(sample)
    video = _check_videos(sample, full_decode)
    if video.num_frames < min_frames:
        raise ValueError(f"too few frames: {video.num_frames} < {min_frames}")
    if video.fps <= 0:
        raise ValueError(f"fps must be positive, got {video.fps}")
    if min(video.height, video.width, *(min(s) for s in image_sizes.values())) < min_size:
        raise ValueError(f"frames or images smaller than {min_size} px")
    has_aug, has_reverse = has_variants(sample, kind, require_masks)
    return SampleInfo(
        key=str(sample.get(schema.KEY, "?")),
        num_frames=video.num_frames,
        fps=video.fps,
        height=video.height,
        width=video.width,
        mode=mode,
        driving_kind=kind,
        has_masks=schema.F_DRIVING_MASK in sample and schema.image_field(schema.F_REF_MASK, sample) is not None,
        has_driving_aug=has_aug,
        has_reverse=has_reverse,
    )


def with_validated_meta(sample: dict, info: SampleInfo) -> dict:
    """Copy of `sample` whose meta.json also records the validated frame count, fps and size."""
    meta = read_meta(sample)
    meta.update(
        {
            schema.META_NUM_FRAMES: info.num_frames,
            schema.META_FPS: info.fps,
            schema.META_HEIGHT: info.height,
            schema.META_WIDTH: info.width,
            schema.META_MODE: info.mode,
            schema.META_DRIVING_KIND: info.driving_kind,
            schema.META_VALIDATED: True,
        }
    )
    out = {k: v for k, v in sample.items() if not k.startswith("__bad")}
    out[schema.F_META] = json.dumps(meta, sort_keys=True).encode()
    return out
