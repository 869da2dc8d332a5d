"""Feature extractors behind FID, FVD and FID-VID, each built from a user-supplied weight file.

Supported files (nothing is downloaded):
    FID      pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (see inception.py), or NVIDIA's TorchScript
             Inception-v3 `inception-2015-12-05.pt` (StyleGAN2-ADA / clean-fid), called as
             `model(uint8 [B, 3, H, W], return_features=True) -> [B, 2048]` (pool3; it resizes to 299 inside).
    FVD      StyleGAN-V's TorchScript I3D `i3d_torchscript.pt` (the TF-hub Kinetics-400 I3D), called as
             `model(float [B, 3, T, 224, 224] in [-1, 1], rescale=False, resize=False, return_features=True)
             -> [B, 400]` after our own short-side resize + centre crop (the SCAIL eval script's convention).
    FID-VID  Hara et al.'s 3D-ResNet-50 Kinetics state dict `resnet-50-kinetics.pth` (DisCo's FID-VID), loaded
             into `ResNet3D50` below (2048-d pooled features), or any TorchScript module `model(x) -> [B, D]`.

Shapes: B batch, T frames, D feature width.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

FeatureFn = Callable[[Tensor], Tensor]


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding a `code/` folder (plain state dicts have none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def load_torchscript(path: Path, what: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            # torch marks torch.jit as deprecated, but the published FID / FVD weights are TorchScript files
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{what}: {path} is not a loadable TorchScript file ({err})") from err
    return module.eval()


def load_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """A checkpoint file -> flat state dict: unwraps `state_dict`, strips DataParallel's `module.` prefix."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for corrupt / foreign files
        raise ValueError(f"{what}: cannot read {path} as a torch checkpoint ({err})") from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{what}: {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


class InceptionTorchscript(nn.Module):
    """FID features: uint8 frames [B, 3, H, W] -> pool3 [B, 2048] through a TorchScript Inception file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.model = load_torchscript(path, "fid")

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        return self.model(frames, return_features=True)


class I3DTorchscript(nn.Module):
    """FVD features: videos [B, 3, T, 224, 224] in [-1, 1] -> I3D logits-layer features [B, 400]."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.model = load_torchscript(path, "fvd")

    @torch.no_grad()
    def forward(self, videos: Tensor) -> Tensor:
        return self.model(videos, rescale=False, resize=False, return_features=True)


# --------------------------------------------------------------------------------------------------
# 3D-ResNet-50 (Hara et al., Kinetics-400, shortcut B) for FID-VID
# --------------------------------------------------------------------------------------------------


class _Bottleneck3D(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv3d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + residual)


class ResNet3D50(nn.Module):
    """3D-ResNet-50 feature trunk: [B, 3, T, H, W] (mean-subtracted 0..255) -> [B, 2048] global average.

    Parameter names follow Hara et al.'s checkpoint (`conv1`, `bn1`, `layer1.0.conv1`, `...downsample.0`); the
    `fc` classifier is kept so the file loads strictly, but features come from before it. Global average
    pooling equals the original fixed AvgPool3d for the 16 x 112 x 112 clips it was trained on.
    """

    def __init__(
        self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 400, width: int = 64
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_ch = width
        for index, (num_blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2), strict=True)):
            planes = width * 2**index
            blocks = []
            for block in range(num_blocks):
                blocks.append(_Bottleneck3D(in_ch, planes, stride if block == 0 else 1))
                in_ch = planes * _Bottleneck3D.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(in_ch, num_classes)
        self.feature_dim = in_ch

    @torch.no_grad()
    def forward(self, clips: Tensor) -> Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(clips))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))  # [B, 2048, t, h, w] -> [B, 2048]

    @classmethod
    def from_file(cls, path: Path) -> ResNet3D50:
        state = load_state_dict(path, "fid_vid")
        model = cls()
        expected = set(model.state_dict())
        missing = sorted(k for k in expected - set(state) if not k.endswith("num_batches_tracked"))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"fid_vid: {path} is not a 3D-ResNet-50 Kinetics checkpoint (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]})"
            )
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        bad = [k for k, v in state.items() if tuple(v.shape) != shapes[k]]
        if bad:
            raise ValueError(
                f"fid_vid: {path} has wrongly shaped tensors, e.g. {bad[0]} {tuple(state[bad[0]].shape)}"
            )
        model.load_state_dict(state, strict=False)
        return model.eval()


def build_video_extractor(path: Path, what: str) -> nn.Module:
    """FID-VID backbone from a file: TorchScript modules are used as they are, state dicts load ResNet3D50."""
    if is_torchscript(path):
        return load_torchscript(path, what)
    return ResNet3D50.from_file(path)
