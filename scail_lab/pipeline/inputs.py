"""Stage 1 of the AnimationPipeline: find, read, validate and resize one motion example.

A SCAIL-2-layout folder (`ref.jpg`, `ref_mask.jpg`, `rendered_v2.mp4` | `rendered.mp4` | `rendered_aligned.mp4`,
`rendered_mask_v2.mp4` | `replace_mask.mp4`, optional `prompt.txt`) or explicit paths. Everything is checked
before any model work: missing files, unreadable media, mask / driving frame-count mismatches, bad sizes.

Resize policy: the training loader's `data.transforms.resize_cover_crop` (the released `resize_for_rectangle_crop`:
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

from scail_lab.data import media, schema
from scail_lab.data.transforms import resize_cover_crop


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

    @property
    def num_frames(self) -> int:
        return self.driving.shape[1]

    def replace(self, **changes) -> MotionExample:
        return dataclasses.replace(self, **changes)


def _find(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _image(path: Path) -> Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return torch.from_numpy(media.decode_image(path.read_bytes())).permute(2, 0, 1).contiguous()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _video(path: Path) -> tuple[Tensor, float]:
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        info = media.probe_video(path)
        frames = media.decode_video(path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
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
) -> MotionExample:
    """Read a folder (explicit paths override its files). Mode: `replace` when the mask is replace_mask.mp4."""
    root = Path(folder) if folder is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"example folder not found: {root}")

    def pick(explicit, names, what, required=True) -> Path | None:
        if explicit is not None:
            return Path(explicit)
        found = _find(root, names) if root is not None else None
        if found is None and required:
            where = f" in {root}" if root is not None else ""
            raise FileNotFoundError(f"no {what}{where}; expected one of {list(names)}")
        return found

    ref_path = pick(image, schema.REF_IMAGE_FILES, "reference image")
    driving_path = pick(pose, schema.DRIVING_FILES, "driving / pose video")
    ref_mask_path = pick(mask_image, schema.REF_MASK_FILES, "reference mask", required=False)
    mask_path = pick(
        mask_video, schema.REPLACE_MASK_FILES + schema.ANIMATE_MASK_FILES, "mask video", required=False
    )
    if mode is None:
        mode = (
            "replace" if mask_path is not None and mask_path.name in schema.REPLACE_MASK_FILES else "animate"
        )
    if mode not in schema.MODES:
        raise ValueError(f"mode must be one of {schema.MODES}, got {mode!r}")
    if prompt is None:
        caption = _find(root, schema.CAPTION_FILES) if root is not None else None
        prompt = caption.read_text().strip() if caption is not None else ""

    ref = _image(ref_path)
    driving, fps = _video(driving_path)
    ref_mask = _image(ref_mask_path) if ref_mask_path is not None else None
    driving_mask = None
    if mask_path is not None:
        driving_mask, _ = _video(mask_path)
        if driving_mask.shape[1] != driving.shape[1]:
            raise ValueError(
                f"mask video {mask_path.name} has {driving_mask.shape[1]} frames but the driving video "
                f"{driving_path.name} has {driving.shape[1]}"
            )
    extras = tuple((_image(Path(i)), _image(Path(m)) if m is not None else None) for i, m in extra_refs)
    name = root.name if root is not None else ref_path.stem
    return MotionExample(ref, driving, ref_mask, driving_mask, prompt, fps, mode, name, extras)


def target_size(ref_hw: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """(H, W) after the orientation rule, validated as multiples of 32."""
    if height % 32 or width % 32 or height <= 0 or width <= 0:
        raise ValueError(f"target height and width must be positive multiples of 32, got {height}x{width}")
    ref_h, ref_w = ref_hw
    if (ref_h > ref_w and height < width) or (ref_h < ref_w and height > width):
        height, width = width, height
    return height, width


def cover_crop(x: Tensor, height: int, width: int, nearest: bool = False) -> Tensor:
    """uint8 [..., C, h, w] frames -> [..., C, height, width]: scale to cover, centre-crop.

    The training loader's resize (`data.transforms.resize_cover_crop`), so sampling sees exactly the pixels
    training saw (tests/test_train_infer_parity.py).
    """
    channels_last = x.movedim(-3, -1).contiguous().numpy()  # [..., h, w, C]
    out = resize_cover_crop(channels_last, (height, width), nearest=nearest)  # [..., H, W, C]
    return torch.from_numpy(np.ascontiguousarray(out)).movedim(-1, -3).contiguous()


def prepare(example: MotionExample, height: int, width: int, max_frames: int | None = None) -> MotionExample:
    """Resize/crop every image and video of the example to the target size (orientation from the ref)."""
    h, w = target_size(tuple(example.ref_image.shape[-2:]), height, width)
    n = example.num_frames if max_frames is None else min(max_frames, example.num_frames)

    def video(v: Tensor | None, nearest: bool = False) -> Tensor | None:
        if v is None:
            return None
        return (
            cover_crop(v[:, :n].transpose(0, 1), h, w, nearest).transpose(0, 1).contiguous()
        )  # [3, N, H, W]

    def image(i: Tensor | None, nearest: bool = False) -> Tensor | None:
        return None if i is None else cover_crop(i, h, w, nearest)

    return example.replace(
        ref_image=image(example.ref_image),
        ref_mask=image(example.ref_mask, nearest=True),
        driving=video(example.driving),
        driving_mask=video(example.driving_mask, nearest=True),
        extra_refs=tuple((image(i), image(m, nearest=True)) for i, m in example.extra_refs),
    )
