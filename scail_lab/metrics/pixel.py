"""Paired per-frame metrics: PSNR, SSIM, L1.

All arithmetic is float64 on the 0..255 scale, so uint8 inputs never wrap around. Each sample's value is the
mean over its frames of the per-frame value (the DisCo / TikTok convention); the reported aggregate is the mean
over samples.

Functional forms take canonical frames (float [N, 3, H, W], 0..255, see `base.to_frames`) and return per-frame
values [N] (float64).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from scail_lab.metrics.base import Metric, check_same_shape, to_frames, to_uint8_frames

SSIM_VARIANTS = ("gaussian11", "disco_gray7")
SSIM_BORDERS = ("valid", "reflect")
L1_CONVENTIONS = ("unit", "disco")
FRAME_CHUNK = 4  # frames per float64 chunk: bounds memory (and page faults) at high resolution


# --------------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------------


def psnr_per_frame(
    pred: Tensor, target: Tensor, max_db: float = 100.0, legacy_uint8_overflow: bool = False
) -> Tensor:
    """Per-frame PSNR in dB, `10 log10(255^2 / MSE)`, capped at `max_db` (identical frames give `max_db`).

    pred, target: float [N, 3, H, W] on the 0..255 scale. `legacy_uint8_overflow=True` reproduces the old
    DisCo/TikTok bug (uint8 subtraction and square both wrap modulo 256) for comparison with legacy tables only.
    """
    out = []
    for start in range(0, pred.shape[0], FRAME_CHUNK):
        p = pred[start : start + FRAME_CHUNK].double()
        t = target[start : start + FRAME_CHUNK].double()
        if legacy_uint8_overflow:
            diff = torch.remainder(p.round() - t.round(), 256.0)
            sq = torch.remainder(diff * diff, 256.0)
        else:
            sq = (p - t) ** 2
        mse = sq.flatten(1).mean(dim=1)  # [n, 3, H, W] -> [n]
        db = 10.0 * torch.log10((255.0**2) / mse)  # mse 0 -> inf, capped below
        out.append(db.clamp(max=max_db))
    return torch.cat(out)


class PSNR(Metric):
    """Peak signal-to-noise ratio (MAX = 255), per-frame mean per sample."""

    name = "psnr"
    higher_is_better = True

    def __init__(
        self, max_db: float = 100.0, legacy_uint8_overflow: bool = False, name: str | None = None
    ) -> None:
        super().__init__()
        if max_db <= 0:
            raise ValueError(f"psnr: max_db must be positive, got {max_db}")
        self.max_db = float(max_db)
        self.legacy_uint8_overflow = bool(legacy_uint8_overflow)
        self.name = name or ("psnr_legacy_uint8" if legacy_uint8_overflow else "psnr")

    def protocol(self) -> dict[str, Any]:
        return {
            "max_value": 255,
            "reduction": "mean of per-frame PSNR",
            "cap_db": self.max_db,
            "legacy_uint8_overflow": self.legacy_uint8_overflow,
        }

    def _score(self, pred: Tensor, target: Tensor, **extras: Any) -> float:
        p, t = to_frames(pred), to_frames(target)
        check_same_shape(self.name, p, t)
        return float(psnr_per_frame(p, t, self.max_db, self.legacy_uint8_overflow).mean())


# --------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian taps [size] (float64); the 2-D window is their outer product."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _valid_filter_matrix(length: int, taps: Tensor) -> Tensor:
    """[length, length - k + 1] float64 matrix M with x @ M = x correlated with the k taps along its last axis, valid
    positions only (column j holds the taps in rows j..j+k-1). A banded matmul: exact float64 and on CPU several
    times faster than k shifted-slice passes or a float64 depthwise conv."""
    k = taps.shape[0]
    out = torch.zeros(length, length - k + 1, dtype=torch.float64)
    for j in range(length - k + 1):
        out[j : j + k, j] = taps
    return out


def _ssim_map_mean(
    x: Tensor, y: Tensor, taps: Tensor, sample_covariance: bool, border: str = "valid"
) -> Tensor:
    """Mean SSIM map of each image with the separable window outer(taps, taps).

    x, y: float64 [B, C, H, W] 0..255 -> [B, C]. border "valid": windows fully inside the image (Wang's MATLAB
    code, skimage); "reflect": reflect-pad by half a window first and average the full-size map (torchmetrics).
    """
    size = taps.shape[0]
    if border == "reflect":
        pad = (size - 1) // 2
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    rows, cols = (_valid_filter_matrix(n, taps.double()) for n in stack.shape[-2:])
    moments = rows.T @ stack @ cols  # the separable window: columns (dim 2), then rows (dim 3)
    mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(x.shape[1], dim=1)
    norm = 1.0
    if sample_covariance:
        n = size * size
        norm = n / (n - 1.0)
    var_x = norm * (e_xx - mu_x * mu_x)
    var_y = norm * (e_yy - mu_y * mu_y)
    cov = norm * (e_xy - mu_x * mu_y)
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.flatten(2).mean(dim=2)  # [B, C, h, w] -> [B, C]


def _to_gray_uint8(frames: Tensor) -> Tensor:
    """RGB float 0..255 [N, 3, H, W] -> OpenCV BGR2GRAY luma [N, 1, H, W] float64 (rounded to uint8 first)."""
    gray = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in to_uint8_frames(frames)])
    return torch.from_numpy(gray).double()[:, None]  # [N, H, W] -> [N, 1, H, W]


def ssim_per_frame(
    pred: Tensor, target: Tensor, variant: str = "gaussian11", border: str = "valid"
) -> Tensor:
    """Per-frame SSIM [N] (float64).

    gaussian11: Wang et al. 2004: 11x11 Gaussian window sigma 1.5, K1 0.01, K2 0.03, L = 255, population
        covariance, per RGB channel, mean over channels and the SSIM map (= skimage with gaussian_weights=True,
        use_sample_covariance=False for border "valid"; = torchmetrics for border "reflect").
    disco_gray7: DisCo's TikTok code: OpenCV grayscale uint8 frames, 7x7 uniform window, sample covariance
        (skimage `structural_similarity` defaults).
    """
    if variant not in SSIM_VARIANTS:
        raise ValueError(f"ssim variant must be one of {SSIM_VARIANTS}, got {variant!r}")
    if border not in SSIM_BORDERS:
        raise ValueError(f"ssim border must be one of {SSIM_BORDERS}, got {border!r}")
    if min(pred.shape[-2:]) < (11 if variant == "gaussian11" else 7):
        raise ValueError(f"ssim: frames {tuple(pred.shape[-2:])} are smaller than the {variant} window")
    out = []
    for start in range(0, pred.shape[0], FRAME_CHUNK):
        p = pred[start : start + FRAME_CHUNK]
        t = target[start : start + FRAME_CHUNK]
        if variant == "gaussian11":
            values = _ssim_map_mean(p.double(), t.double(), gaussian_window(11, 1.5), False, border)
        else:
            uniform = torch.full((7,), 1.0 / 7.0, dtype=torch.float64)
            values = _ssim_map_mean(_to_gray_uint8(p), _to_gray_uint8(t), uniform, True, border)
        out.append(values.mean(dim=1))
    return torch.cat(out)


class SSIM(Metric):
    """Structural similarity, per-frame mean per sample; see `ssim_per_frame` for the variants."""

    name = "ssim"
    higher_is_better = True

    def __init__(self, variant: str = "gaussian11", border: str = "valid", name: str | None = None) -> None:
        super().__init__()
        if variant not in SSIM_VARIANTS:
            raise ValueError(f"ssim variant must be one of {SSIM_VARIANTS}, got {variant!r}")
        if border not in SSIM_BORDERS:
            raise ValueError(f"ssim border must be one of {SSIM_BORDERS}, got {border!r}")
        self.variant, self.border = variant, border
        self.name = name or ("ssim" if variant == "gaussian11" else f"ssim_{variant}")

    def protocol(self) -> dict[str, Any]:
        if self.variant == "gaussian11":
            return {
                "variant": self.variant,
                "window": "gaussian 11x11 sigma 1.5",
                "color": "rgb",
                "covariance": "population",
                "border": self.border,
            }
        return {
            "variant": self.variant,
            "window": "uniform 7x7",
            "color": "opencv gray",
            "covariance": "sample",
            "border": self.border,
        }

    def _score(self, pred: Tensor, target: Tensor, **extras: Any) -> float:
        p, t = to_frames(pred), to_frames(target)
        check_same_shape(self.name, p, t)
        return float(ssim_per_frame(p, t, self.variant, self.border).mean())


# --------------------------------------------------------------------------------------------------
# L1
# --------------------------------------------------------------------------------------------------


class L1(Metric):
    """Mean absolute error.

    unit: mean |pred - target| / 255, in [0, 1]. disco: DisCo's TikTok number, mean |pred - target| (0..255)
    divided by H * W, which depends on the resolution (compare it at 256x256 only).
    """

    name = "l1"
    higher_is_better = False

    def __init__(self, convention: str = "unit", name: str | None = None) -> None:
        super().__init__()
        if convention not in L1_CONVENTIONS:
            raise ValueError(f"l1 convention must be one of {L1_CONVENTIONS}, got {convention!r}")
        self.convention = convention
        self.name = name or ("l1" if convention == "unit" else "l1_disco")

    def protocol(self) -> dict[str, Any]:
        return {"convention": self.convention}

    def _score(self, pred: Tensor, target: Tensor, **extras: Any) -> float:
        p, t = to_frames(pred), to_frames(target)
        check_same_shape(self.name, p, t)
        mad = float((p.double() - t.double()).abs().mean())
        if self.convention == "unit":
            return mad / 255.0
        return mad / float(p.shape[-2] * p.shape[-1])
