"""Stage 1 of the AnimationPipeline: find, read, validate and resize one motion example.

A SCAIL-2-layout folder (`ref.jpg`, `ref_mask.jpg`, `rendered_v2.mp4` | `rendered.mp4` | `rendered_aligned.mp4`,
`rendered_mask_v2.mp4` | `replace_mask.mp4`, optional `prompt.txt`) or explicit paths. Everything is checked
before any model work: missing files, unreadable media, mask / driving frame-count mismatches, bad sizes.

Resize policy: the training loader's `data.transforms.cover_crop` (the released `resize_for_rectangle_crop`:
scale to cover the target with antialiased bicubic; nearest for masks so colour classes stay crisp; then centre-crop). The target orientation follows the
reference: a portrait reference with a landscape target swaps H and W.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scail_lab.data import media, schema, transforms
from scail_lab.data.folders import collect_folder, read_meta


@dataclass(frozen=True)
class MotionExample:
    """One example in pixels (uint8): ref [3, H, W], driving [3, N, H, W], masks alike or None."""

    ref_image: Tensor
    driving: Tensor
    ref_mask: Tensor | None = None
    driving_mask: Tensor | None = None
    prompt: str = ""
    fps: float = 16.0
    mode: str = "animate"
    name: str = "sample"
    extra_refs: tuple[tuple[Tensor, Tensor | None], ...] = field(default_factory=tuple)
    driving_kind: str = "video"  # "video" (a real clip) or "pose" (a pose render); meta.json's driving_kind

    @property
    def num_frames(self) -> int:
        return self.driving.shape[1]

    def replace(self, **changes) -> MotionExample:
        return dataclasses.replace(self, **changes)


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path.read_bytes()


def _image(data: bytes, label: str) -> Tensor:
    try:
        return torch.from_numpy(media.decode_image(data)).permute(2, 0, 1).contiguous()
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from exc


def _video(data: bytes, label: str) -> tuple[Tensor, float]:
    try:
        info = media.probe_video(data)
        frames = media.decode_video(data)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from exc
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).contiguous(), info.fps


def load_example(
    folder: str | Path | None = None,
    *,
    image: str | Path | None = None,
    mask_image: str | Path | None = None,
    pose: str | Path | None = None,
    mask_video: str | Path | None = None,
    prompt: str | None = None,
    mode: str | None = None,
    extra_refs: Sequence[tuple[str | Path, str | Path | None]] = (),
    driving_kind: str | None = None,
) -> MotionExample:
    """Read a folder (explicit paths override its files) through the training loader's folder reader
    (`data.folders.collect_folder`), so sampling finds the same files and takes the same mode: the folder's
    meta.json if it says, else `replace` when the mask is replace_mask.mp4; an explicit `mode` wins. The driving
    kind ("video" or a "pose" render) likewise: `driving_kind`, else the folder's meta.json, else "video"."""
    root = Path(folder) if folder is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"example folder not found: {root}")
    raw: dict = collect_folder(root) if root is not None else {}
    meta = read_meta(raw) if raw else {}
    if "__bad_meta__" in raw:
        raise ValueError(f"{root}: {raw['__bad_meta__']}")

    def pick(explicit, field: str | None, names, what, required=True) -> tuple[bytes, str] | None:
        if explicit is not None:
            path = Path(explicit)
            return _read(path, what), str(path)
        if field is not None and field in raw:
            return raw[field], str(root / meta[schema.META_FILES][field])
        if required:
            where = f" in {root}" if root is not None else ""
            raise FileNotFoundError(f"no {what}{where}; expected one of {list(names)}")
        return None

    ref_field, mask_field = schema.image_field(schema.F_REF, raw), schema.image_field(schema.F_REF_MASK, raw)
    ref_data = pick(image, ref_field, schema.REF_IMAGE_FILES, "reference image")
    driving_data = pick(pose, schema.F_DRIVING, schema.DRIVING_FILES, "driving / pose video")
    ref_mask_data = pick(mask_image, mask_field, schema.REF_MASK_FILES, "reference mask", required=False)
    mask_data = pick(mask_video, schema.F_DRIVING_MASK, schema.REPLACE_MASK_FILES + schema.ANIMATE_MASK_FILES,
                     "mask video", required=False)  # fmt: skip
    if mode is None:
        if mask_video is not None or root is None:
            mode = "replace" if mask_data is not None and Path(mask_data[1]).name in schema.REPLACE_MASK_FILES else "animate"
        else:
            mode = meta.get(schema.META_MODE, "animate")
    if mode not in schema.MODES:
        raise ValueError(f"mode must be one of {schema.MODES}, got {mode!r}")
    if driving_kind is None:
        driving_kind = meta.get(schema.META_DRIVING_KIND, "video")
    if driving_kind not in schema.DRIVING_KINDS:
        raise ValueError(f"driving_kind must be one of {schema.DRIVING_KINDS}, got {driving_kind!r}")
    if prompt is None:
        prompt = raw[schema.F_CAPTION].decode("utf-8").strip() if schema.F_CAPTION in raw else ""

    ref = _image(*ref_data)
    driving, fps = _video(*driving_data)
    ref_mask = _image(*ref_mask_data) if ref_mask_data is not None else None
    driving_mask = None
    if mask_data is not None:
        driving_mask, _ = _video(*mask_data)
        if driving_mask.shape[1] != driving.shape[1]:
            raise ValueError(
                f"mask video {Path(mask_data[1]).name} has {driving_mask.shape[1]} frames but the driving video "
                f"{Path(driving_data[1]).name} has {driving.shape[1]}"
            )
    extras = tuple((_image(_read(Path(i), "extra reference"), str(i)),
                    _image(_read(Path(m), "extra reference mask"), str(m)) if m is not None else None)
                   for i, m in extra_refs)  # fmt: skip
    name = root.name if root is not None else Path(ref_data[1]).stem
    return MotionExample(ref, driving, ref_mask, driving_mask, prompt, fps, mode, name, extras, driving_kind)


def check_paste_back(example: MotionExample) -> None:
    """Paste-back (replacement: the driving clip's pixels where the replace mask is white) needs a real driving
    clip; a pose render would paste its own background over the scene."""
    if example.mode == "replace" and example.driving_kind == "pose":
        raise ValueError(
            f"{example.name}: paste_back keeps the driving clip's scene where the replace mask is white, but this "
            "example's driving input is a pose render (driving_kind='pose'), so its background would be pasted; "
            "give the real driving video or set pipeline.paste_back=false"
        )


def target_size(ref_hw: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """(H, W) after the orientation rule, validated as multiples of 32."""
    if height % 32 or width % 32 or height <= 0 or width <= 0:
        raise ValueError(f"target height and width must be positive multiples of 32, got {height}x{width}")
    ref_h, ref_w = ref_hw
    if (ref_h > ref_w and height < width) or (ref_h < ref_w and height > width):
        height, width = width, height
    return height, width


def prepare(example: MotionExample, height: int, width: int, max_frames: int | None = None) -> MotionExample:
    """Resize/crop every image and video of the example to the target size (orientation from the ref)."""
    h, w = target_size(tuple(example.ref_image.shape[-2:]), height, width)
    n = example.num_frames if max_frames is None else min(max_frames, example.num_frames)

    def video(v: Tensor | None, nearest: bool = False) -> Tensor | None:
        if v is None:
            return None
        # the training loader's resize, so sampling sees the pixels training saw (tests/test_train_infer_parity.py);
        # it resizes every leading slice alike, so [3, N, H, W] needs no transpose
        return transforms.cover_crop(v[:, :n], (h, w), nearest=nearest)  # [3, N, H, W]

    def image(i: Tensor | None, nearest: bool = False) -> Tensor | None:
        return None if i is None else transforms.cover_crop(i, (h, w), nearest=nearest)

    return example.replace(
        ref_image=image(example.ref_image),
        ref_mask=image(example.ref_mask, nearest=True),
        driving=video(example.driving),
        driving_mask=video(example.driving_mask, nearest=True),
        extra_refs=tuple((image(i), image(m, nearest=True)) for i, m in example.extra_refs),
    )
