"""Metrics that need no downloaded weights: foreground-mask IoU and temporal stability.

Shapes: frames canonical float [N, 3, H, W] 0..255 (see `base.to_frames`); masks bool [N, H, W]; a background
plate (the scene with no character, same camera) [N or 1, 3, H, W] canonical.

A foreground mask that is not given is derived from the frames (`foreground_mask`): by difference with the
background plate when one is given (exact on any background), else by difference with the median colour of the
frame border (only right on flat backgrounds).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor

from scail_lab.metrics.base import Metric, check_same_shape, to_frames, to_masks


def background_difference_mask(frames: Tensor, threshold: float = 30.0, border: int = 2) -> Tensor:
    """Foreground of frames on a flat background: pixels whose colour differs from the frame's background.

    The background colour of each frame is the per-channel median of its `border`-pixel frame edge; a pixel is
    foreground when its largest channel difference exceeds `threshold` (0..255). Suits the synthetic world
    (characters on plain backgrounds), not real footage. frames [N, 3, H, W] -> bool [N, H, W].
    """
    if border < 1 or 2 * border >= min(frames.shape[-2:]):
        raise ValueError(
            f"border must be in [1, min(H, W) / 2), got {border} for frames {tuple(frames.shape)}"
        )
    edge = torch.cat(
        [
            frames[..., :border, :].flatten(2),
            frames[..., -border:, :].flatten(2),
            frames[..., :, :border].flatten(2),
            frames[..., :, -border:].flatten(2),
        ],
        dim=2,
    )  # [N, 3, E] edge pixels
    background = edge.median(dim=2).values[..., None, None]  # [N, 3] -> [N, 3, 1, 1]
    return (frames - background).abs().amax(dim=1) > threshold  # [N, 3, H, W] -> [N, H, W]


def plate_difference_mask(frames: Tensor, plate: Tensor, threshold: float = 30.0) -> Tensor:
    """Foreground by difference with the background plate: largest channel |frames - plate| > `threshold`.

    frames [N, 3, H, W] and plate [N, 3, H, W] or [1, 3, H, W] (a static camera's single plate), both canonical
    0..255 -> bool [N, H, W].
    """
    if plate.ndim != 4 or plate.shape[1:] != frames.shape[1:] or plate.shape[0] not in (1, frames.shape[0]):
        raise ValueError(
            f"background plate {tuple(plate.shape)} does not match frames {tuple(frames.shape)}: it needs the "
            "frames' channels and size, and one frame or as many frames"
        )
    return (frames - plate).abs().amax(dim=1) > threshold  # [N, 3, H, W] -> [N, H, W]


def mask_source_names(threshold: float, border: int) -> dict[str, str]:
    """How each side's mask was obtained, as stamped in metric protocols."""
    return {
        "given": "given",
        "plate": f"plate difference > {threshold:g}",
        "border": f"border median difference > {threshold:g} ({border}-px border)",
    }


def foreground_mask(
    frames: Tensor, mask: Any = None, background: Any = None, threshold: float = 30.0, border: int = 2
) -> tuple[Tensor, str]:
    """The foreground of frames [N, 3, H, W]: `mask` when given, else by plate difference when a `background`
    plate is given, else by border-median difference.

    mask: [N, H, W] or a mask video (see `to_masks`); background: a plate video in any `to_frames` form.
    Returns (bool [N, H, W], source) with source "given" | "plate" | "border".
    """
    if mask is not None:
        return to_masks(mask, frames.shape[0]), "given"
    if background is not None:
        return plate_difference_mask(frames, to_frames(background), threshold), "plate"
    return background_difference_mask(frames, threshold, border), "border"


def fallback_protocol(sources: Counter, threshold: float, border: int) -> dict[str, Any]:
    """Protocol entries saying which fallback made the missing masks, with counts over (sample, side) pairs."""
    names = mask_source_names(threshold, border)
    used = [names[k] for k in ("plate", "border") if sources.get(k)]
    return {
        "missing_mask": " and ".join(used)
        if used
        else ("none (every mask given)" if sources else "no sample"),
        "mask_sources": {names[k]: int(sources.get(k, 0)) for k in ("given", "plate", "border")},
    }


def mask_iou_per_frame(pred: Tensor, target: Tensor) -> Tensor:
    """IoU per frame [N] (float64); NaN where both masks are empty."""
    inter = (pred & target).flatten(1).sum(dim=1).double()
    union = (pred | target).flatten(1).sum(dim=1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))


class MaskIoU(Metric):
    """Foreground IoU between the generated character's mask and the ground-truth mask, mean over frames.

    Masks come from the `pred_mask` / `target_mask` extras (mask videos, white on black); a missing one is
    derived from its frames by `foreground_mask`: difference with the `background` extra (the target's
    background plate, e.g. target_background.mp4 of a synthetic sample) when given, else with the frame
    border's median colour. The protocol says which fallback was used and how often. Frames where both masks
    are empty are left out; a sample whose frames are all empty on both sides scores 1 (the masks agree).
    """

    name = "mask_iou"
    higher_is_better = True

    def __init__(self, threshold: float = 30.0, border: int = 2, name: str | None = None) -> None:
        super().__init__()
        self.threshold, self.border = float(threshold), int(border)
        self.name = name or "mask_iou"
        self.mask_sources: Counter = Counter()

    def reset(self) -> None:
        super().reset()
        self.mask_sources = Counter()

    def protocol(self) -> dict[str, Any]:
        return {
            **fallback_protocol(self.mask_sources, self.threshold, self.border),
            "reduction": "frame mean",
        }

    def _score(
        self,
        pred: Tensor,
        target: Tensor,
        pred_mask: Any = None,
        target_mask: Any = None,
        background: Any = None,
        **extras: Any,
    ) -> float:
        p, t = to_frames(pred), to_frames(target)
        check_same_shape(self.name, p, t)
        pm, pred_source = foreground_mask(p, pred_mask, background, self.threshold, self.border)
        tm, target_source = foreground_mask(t, target_mask, background, self.threshold, self.border)
        if pm.shape != tm.shape:
            raise ValueError(f"{self.name}: masks {tuple(pm.shape)} and {tuple(tm.shape)} differ")
        self.mask_sources.update((pred_source, target_source))
        iou = mask_iou_per_frame(pm, tm)
        valid = iou[~iou.isnan()]
        return float(valid.mean()) if valid.numel() else 1.0


def flicker_score(frames: Tensor) -> float:
    """VBench temporal-flickering score: (255 - mean |f_t+1 - f_t|) / 255 over consecutive frames, in [0, 1]."""
    if frames.shape[0] < 2:
        raise ValueError(f"temporal metrics need at least 2 frames, got {frames.shape[0]}")
    mad = (frames[1:].double() - frames[:-1].double()).abs().mean()
    return float((255.0 - mad) / 255.0)


class TemporalFlicker(Metric):
    """VBench temporal flickering of the generated video alone (1 = static, higher is steadier)."""

    name = "temporal_flicker"
    higher_is_better = True

    def protocol(self) -> dict[str, Any]:
        return {
            "definition": "(255 - mean |f[t+1] - f[t]|) / 255 (VBench temporal_flickering)",
            "paired": False,
        }

    def _score(self, pred: Tensor, target: Tensor | None = None, **extras: Any) -> float:
        return flicker_score(to_frames(pred))


class TemporalDiffError(Metric):
    """Paired temporal error: mean |(p[t+1] - p[t]) - (g[t+1] - g[t])| / 255, in [0, 1] (lower is better).

    Unlike flicker, real motion in the ground truth is not penalised: only changes that differ from the
    ground truth's changes count.
    """

    name = "temporal_diff_error"
    higher_is_better = False

    def protocol(self) -> dict[str, Any]:
        return {"definition": "mean |diff_t(pred) - diff_t(target)| / 255", "paired": True}

    def _score(self, pred: Tensor, target: Tensor, **extras: Any) -> float:
        p, t = to_frames(pred).double(), to_frames(target).double()
        check_same_shape(self.name, p, t)
        if p.shape[0] < 2:
            raise ValueError(f"temporal metrics need at least 2 frames, got {p.shape[0]}")
        return float(((p[1:] - p[:-1]) - (t[1:] - t[:-1])).abs().mean() / 255.0)
