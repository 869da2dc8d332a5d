"""Tensor contracts shared by the model, conditioning, training and sampling.

Shape legend (latent space; pixel sizes are 8x larger spatially, frames N = 4 (T - 1) + 1):
    B   batch                         C   latent channels (16 for the Wan VAE)
    T   latent frames of the target   H,W latent height / width (multiples of 4)
    Cm  mask channels (from the mask scheme: 28 for color28, 4 for binary4, 0 for none)
    N   extra reference images        L   text tokens (<= text_len)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

SEGMENT_NAMES = ("extra_ref", "ref", "video", "pose")


@dataclass(frozen=True)
class DiTInputs:
    """Everything one denoiser call needs. Built by the ConditionBuilder; validated by the model."""

    latents: Tensor  # [B, C, T, H, W] noisy target latents (clean on history frames)
    timestep: Tensor  # [B] flow time x 1000 (sigma * 1000)
    text_emb: Tensor  # [B, L, text_dim] text encoder states; the model zero-pads to text_len
    ref_latents: Tensor  # [B, C, 1, H, W] reference image latent
    pose_latents: Tensor  # [B, C, T, H/2, W/2] driving video / pose render latents at half resolution
    clip_emb: Tensor | None = None  # [B, 257, 1280] CLIP penultimate-block tokens of the reference
    ref_mask: Tensor | None = None  # [B, Cm, 1, H, W] mask code of the reference mask
    driving_mask: Tensor | None = None  # [B, Cm, T, H/2, W/2] mask code of the driving mask video
    history_mask: Tensor | None = None  # [B, 4, T, H, W] ones on clean history frames (Wan I2V packing)
    extra_ref_latents: Tensor | None = None  # [B, C, N, H, W] extra reference images, one frame each
    extra_ref_masks: Tensor | None = None  # [B, Cm, N, H, W] their mask codes
    mode: str | tuple[str, ...] = "animate"  # motion mode, for the whole batch or one per sample

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    def modes(self) -> tuple[str, ...]:
        """One mode name per sample."""
        if isinstance(self.mode, str):
            return (self.mode,) * self.batch_size
        return tuple(self.mode)

    def tensors(self) -> dict[str, Tensor]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }

    def replace(self, **changes) -> DiTInputs:
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiTInputs:
        """Move tensors; `dtype` applies to floating tensors except the timestep (kept as is)."""
        changes = {}
        for name, value in self.tensors().items():
            target_dtype = (
                dtype if (dtype is not None and value.is_floating_point() and name != "timestep") else None
            )
            changes[name] = value.to(device=device, dtype=target_dtype)
        return self.replace(**changes)

    def select(self, index: int) -> DiTInputs:
        """Sample `index` as a batch of one."""
        changes = {name: value[index : index + 1] for name, value in self.tensors().items()}
        changes["mode"] = self.modes()[index]
        return self.replace(**changes)

    @staticmethod
    def cat(items: Sequence[DiTInputs]) -> DiTInputs:
        """Concatenate batches (e.g. conditional and unconditional CFG branches)."""
        if not items:
            raise ValueError("DiTInputs.cat needs at least one item")
        first = items[0]
        changes: dict[str, object] = {}
        for field in dataclasses.fields(first):
            if field.name == "mode":
                continue
            values = [getattr(item, field.name) for item in items]
            present = [v is not None for v in values]
            if any(present) and not all(present):
                raise ValueError(
                    f"DiTInputs.cat: field {field.name!r} is set on some items and missing on others"
                )
            if all(present):
                changes[field.name] = torch.cat(values, dim=0)
        modes = tuple(m for item in items for m in item.modes())
        changes["mode"] = modes[0] if len(set(modes)) == 1 else modes
        return dataclasses.replace(first, **changes)


@dataclass(frozen=True)
class Segment:
    """A contiguous run of tokens that share one patch embedding and one RoPE rule.

    grid: tokens along (t, h, w). stride: how many video-token positions one token covers along h and w
    (2 for the half-resolution pose tokens, 1 otherwise).
    """

    name: str
    grid: tuple[int, int, int]
    stride: int = 1

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


@dataclass(frozen=True)
class TokenLayout:
    """The order of segments in the self-attention sequence, e.g. [extra_ref | ref | video | pose]."""

    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.segments]
        assert len(set(names)) == len(names), f"duplicate segment names {names}"
        assert all(n in SEGMENT_NAMES for n in names), f"unknown segment in {names}"

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segments)

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.segments)

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(name)

    def slice(self, name: str) -> slice:
        start = 0
        for s in self.segments:
            if s.name == name:
                return slice(start, start + s.num_tokens)
            start += s.num_tokens
        raise KeyError(name)

    def num_frames(self, name: str) -> int:
        """Temporal length of a segment, 0 when absent."""
        return self.segment(name).grid[0] if self.has(name) else 0


@dataclass(frozen=True)
class MotionMode:
    """RoPE offsets of each segment, in patch-token units along (t, h, w).

    Temporal positions: extra refs take t = extra_ref[0] + 0..N-1; every other segment starts at
    N + its own t offset. SCAIL-2's animate mode puts the video one step after the reference
    (video t offset 1); replace mode moves the reference +120 rows in h instead, so identity is read
    from it without copying its layout. Pose tokens always sit +120 columns in w, in their own region.
    """

    name: str
    extra_ref: tuple[int, int, int] = (0, 0, 0)
    ref: tuple[int, int, int] = (0, 0, 0)
    video: tuple[int, int, int] = (1, 0, 0)
    pose: tuple[int, int, int] = (1, 0, 120)

    def __post_init__(self) -> None:
        for seg in SEGMENT_NAMES:
            value = tuple(int(v) for v in getattr(self, seg))
            if len(value) != 3 or min(value) < 0:
                raise ValueError(
                    f"motion mode {self.name!r}: {seg} offset must be 3 non-negative ints, got {value}"
                )
            object.__setattr__(self, seg, value)

    def offset(self, segment: str) -> tuple[int, int, int]:
        return getattr(self, segment)
