"""Set-level metrics: FID (frames), FVD (16-frame clips, I3D) and FID-VID (DisCo's 3D-ResNet-50 video FID).

Each keeps two `FeatureStats` (generated and ground truth) and reports the Frechet distance between them.
Weights come from a file path (see `extractors.py` for the exact files and call conventions) or, for tests and
callbacks, an injected `extractor` module with the same call convention. Statistics use the unbiased (n - 1)
covariance. FD from few samples is biased upward, so the sample count is part of every result's protocol.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scail_lab.metrics.base import Metric, MetricResult, file_protocol, resolve_weights, to_frames
from scail_lab.metrics.extractors import (
    I3DTorchscript,
    InceptionTorchscript,
    build_video_extractor,
    is_torchscript,
)
from scail_lab.metrics.frechet import FeatureStats, frechet_from_stats
from scail_lab.metrics.inception import FIDInceptionV3

logger = logging.getLogger(__name__)

RESIZE_MODES = ("center_crop", "squash")
KINETICS_MEAN_255 = (114.7748, 107.7354, 99.4750)  # Hara et al. 3D-ResNet input mean (0..255), no std


def resize_frames(frames: Tensor, size: int, mode: str, interpolation: str = "bilinear") -> Tensor:
    """[N, 3, H, W] float -> [N, 3, size, size].

    center_crop: scale the short side to `size` (ceil on the long side, bilinear, align_corners=False, no
    antialias: the SCAIL FVD script's `F.interpolate`), then crop the centre. squash: resize both sides.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = frames.shape[-2:]
    kwargs: dict[str, Any] = {"mode": interpolation, "align_corners": False}
    if interpolation == "bicubic":
        kwargs["antialias"] = True  # closest torch match to PIL bicubic downscaling
    if mode == "squash":
        return F.interpolate(frames, size=(size, size), **kwargs)
    scale = size / min(h, w)
    new_hw = (size, math.ceil(w * scale)) if h <= w else (math.ceil(h * scale), size)
    if new_hw != (h, w):
        frames = F.interpolate(frames, size=new_hw, **kwargs)
    top, left = (frames.shape[-2] - size) // 2, (frames.shape[-1] - size) // 2
    return frames[..., top : top + size, left : left + size]


class FrechetMetric(Metric):
    """Shared machinery: weight resolution, two feature accumulators, FD in `compute`.

    Subclasses define `expected_file` and implement `_load(path)` and `features(frames) -> [k, D]`, where
    frames are canonical float [N, 3, H, W] 0..255 of one video.

    reference_stats: optional .npz cache of the ground-truth statistics. When the file exists it is loaded (and
    checked against this metric's protocol) and ground-truth videos are not passed through the network; when
    it does not, it is written by the first `compute()` that has ground-truth features. Runs compared against
    the same ground truth then pay for its features once.
    """

    higher_is_better = False
    expected_file: str | tuple[str, ...] = ""

    def __init__(
        self,
        weights: str | Path | None,
        extractor: nn.Module | None,
        on_missing: str,
        sha256: str | None,
        reference_stats: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.extractor: nn.Module | None = extractor
        self._file_protocol: dict[str, Any] = {"weights": "injected extractor"}
        self.reference_stats = Path(reference_stats) if reference_stats else None
        if extractor is None:
            path, reason = resolve_weights(self.name, weights, self.expected_file, on_missing, sha256)
            self.skipped = reason
            if path is not None:
                self.extractor = self._load(path)
                self._file_protocol = file_protocol(path)
        self.reset()

    def _stats_meta(self) -> dict[str, Any]:
        return {"metric": self.name, **self.protocol(), **self._file_protocol}

    def _load_reference(self) -> FeatureStats | None:
        if self.reference_stats is None or not self.reference_stats.is_file():
            return None
        stats = FeatureStats.load(self.reference_stats)
        expected = json.loads(json.dumps(self._stats_meta(), sort_keys=True, default=str))
        if stats.meta != expected:
            diff = sorted(k for k in set(stats.meta) | set(expected) if stats.meta.get(k) != expected.get(k))
            raise ValueError(
                f"{self.name}: reference statistics {self.reference_stats} were made with another protocol "
                f"(differs in {diff}); delete the file or point reference_stats elsewhere"
            )
        return stats

    def _load(self, path: Path) -> nn.Module:
        raise NotImplementedError

    def features(self, frames: Tensor) -> Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        super().reset()
        self.pred_stats = FeatureStats()
        reference = self._load_reference() if self.skipped is None else None
        self._reference_loaded = reference is not None
        self.target_stats = reference if reference is not None else FeatureStats()

    def update(
        self, pred: Tensor, target: Tensor | None, sample_id: str | None = None, **extras: Any
    ) -> None:
        """Add one generated video and (unless cached reference statistics are loaded) its ground truth."""
        if self.skipped is not None:
            return None
        self.pred_stats.update(self.features(to_frames(pred)))
        if target is not None and not self._reference_loaded:
            self.target_stats.update(self.features(to_frames(target)))
        return None

    def compute(self) -> MetricResult:
        protocol = {
            **self.protocol(),
            **self._file_protocol,
            "num_pred": self.pred_stats.count,
            "num_target": self.target_stats.count,
            "covariance": "unbiased (n-1)",
        }
        if self.reference_stats is not None and self.skipped is None:
            protocol["reference_stats"] = str(self.reference_stats)
            if not self._reference_loaded and self.target_stats.count >= 2:
                self.target_stats.meta = self._stats_meta()
                self.target_stats.save(self.reference_stats)
                logger.info("%s: wrote reference statistics %s", self.name, self.reference_stats)
        if self.skipped is not None:
            return MetricResult(self.name, None, {}, protocol, self.higher_is_better, self.skipped)
        if min(self.pred_stats.count, self.target_stats.count) < 2:
            reason = f"{self.name} needs at least 2 feature rows per set, have {self.pred_stats.count} / {self.target_stats.count}"
            logger.warning(reason)
            return MetricResult(self.name, None, {}, protocol, self.higher_is_better, reason)
        value = frechet_from_stats(self.pred_stats, self.target_stats)
        return MetricResult(self.name, value, {}, protocol, self.higher_is_better)


class FID(FrechetMetric):
    """Frame FID: Inception pool3 features of every `frame_stride`-th frame, pooled over all videos (DisCo).

    Weights: pytorch-fid's state dict `pt_inception-2015-12-05-6726825d.pth` (loaded into `FIDInceptionV3`) or
    NVIDIA's TorchScript `inception-2015-12-05.pt`.
    """

    name = "fid"
    expected_file = ("pt_inception-2015-12-05-6726825d.pth", "inception-2015-12-05.pt")

    def __init__(
        self,
        weights: str | Path | None = None,
        extractor: nn.Module | None = None,
        on_missing: str = "error",
        sha256: str | None = None,
        frame_stride: int = 1,
        batch_size: int = 32,
        reference_stats: str | Path | None = None,
    ) -> None:
        if frame_stride < 1 or batch_size < 1:
            raise ValueError(
                f"fid: frame_stride and batch_size must be >= 1, got {frame_stride}, {batch_size}"
            )
        self.frame_stride, self.batch_size = int(frame_stride), int(batch_size)
        self.variant = "injected extractor"
        super().__init__(weights, extractor, on_missing, sha256, reference_stats)

    def _load(self, path: Path) -> nn.Module:
        if is_torchscript(path):
            self.variant = "nvidia torchscript (resize inside the network)"
            return InceptionTorchscript(path)
        self.variant = "pytorch-fid state dict (bilinear resize to 299, align_corners=False)"
        return FIDInceptionV3.from_file(path)

    def protocol(self) -> dict[str, Any]:
        return {
            "backbone": "inception-v3 2015-12-05 pool3",
            "implementation": self.variant,
            "unit": "frames",
            "frame_stride": self.frame_stride,
        }

    def features(self, frames: Tensor) -> Tensor:
        frames = frames[:: self.frame_stride].round().to(torch.uint8)
        feats = [
            self.extractor(frames[i : i + self.batch_size])
            for i in range(0, frames.shape[0], self.batch_size)
        ]
        return torch.cat(feats).flatten(1)  # [N, 2048, (1, 1)] -> [N, 2048]


class FVD(FrechetMetric):
    """Frechet video distance on one clip per video: the first `num_frames` frames (StyleGAN-V / SCAIL)."""

    name = "fvd"
    expected_file = "i3d_torchscript.pt"

    def __init__(
        self,
        weights: str | Path | None = None,
        extractor: nn.Module | None = None,
        on_missing: str = "error",
        sha256: str | None = None,
        num_frames: int = 16,
        resolution: int = 224,
        resize: str = "center_crop",
        reference_stats: str | Path | None = None,
    ) -> None:
        if num_frames < 1 or resolution < 1:
            raise ValueError(f"fvd: num_frames and resolution must be >= 1, got {num_frames}, {resolution}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"fvd: resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.num_frames, self.resolution, self.resize = int(num_frames), int(resolution), resize
        super().__init__(weights, extractor, on_missing, sha256, reference_stats)

    def _load(self, path: Path) -> nn.Module:
        if not is_torchscript(path):
            raise ValueError(f"fvd: {path} is not TorchScript; supported: StyleGAN-V's i3d_torchscript.pt")
        return I3DTorchscript(path)

    def protocol(self) -> dict[str, Any]:
        return {
            "backbone": "i3d kinetics-400 (stylegan-v torchscript)",
            "clip_frames": self.num_frames,
            "clip": "first frames",
            "resolution": self.resolution,
            "resize": self.resize,
            "range": "[-1, 1]",
        }

    def features(self, frames: Tensor) -> Tensor:
        if frames.shape[0] < self.num_frames:
            raise ValueError(f"fvd: video has {frames.shape[0]} frames, the protocol needs {self.num_frames}")
        clip = resize_frames(frames[: self.num_frames], self.resolution, self.resize)  # [T, 3, r, r]
        clip = clip / 127.5 - 1.0
        return self.extractor(clip.permute(1, 0, 2, 3)[None])  # [T, 3, r, r] -> [1, 3, T, r, r]


class FIDVID(FrechetMetric):
    """DisCo's FID-VID: 3D-ResNet-50 features of 16-frame segments (last one padded), averaged per video."""

    name = "fid_vid"
    expected_file = "resnet-50-kinetics.pth"

    def __init__(
        self,
        weights: str | Path | None = None,
        extractor: nn.Module | None = None,
        on_missing: str = "error",
        sha256: str | None = None,
        segment_frames: int = 16,
        resolution: int = 112,
        reference_stats: str | Path | None = None,
    ) -> None:
        if segment_frames < 1 or resolution < 1:
            raise ValueError(
                f"fid_vid: segment_frames and resolution must be >= 1, got {segment_frames}, {resolution}"
            )
        self.segment_frames, self.resolution = int(segment_frames), int(resolution)
        super().__init__(weights, extractor, on_missing, sha256, reference_stats)

    def _load(self, path: Path) -> nn.Module:
        return build_video_extractor(path, "fid_vid")

    def protocol(self) -> dict[str, Any]:
        return {
            "backbone": "3d-resnet-50 kinetics-400 (hara, shortcut B)",
            "clip_frames": self.segment_frames,
            "clip": "all non-overlapping segments, last padded, features averaged",
            "resolution": self.resolution,
            "resize": "squash bicubic",
            "normalisation": "minus kinetics mean (0..255)",
        }

    def features(self, frames: Tensor) -> Tensor:
        n, seg = frames.shape[0], self.segment_frames
        pad = (-n) % seg
        if pad:
            frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
        frames = resize_frames(frames, self.resolution, "squash", "bicubic")
        frames = frames - torch.tensor(KINETICS_MEAN_255).view(1, 3, 1, 1)
        clips = frames.view(
            -1, seg, 3, self.resolution, self.resolution
        )  # [S*seg, 3, r, r] -> [S, seg, 3, r, r]
        feats = self.extractor(clips.permute(0, 2, 1, 3, 4).contiguous())  # [S, 3, seg, r, r] -> [S, D]
        return feats.flatten(1).mean(dim=0, keepdim=True)  # [S, D] -> [1, D]
