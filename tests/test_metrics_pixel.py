"""PSNR, SSIM, L1 and frame-layout handling against hand values, float64 references and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from scail_lab.metrics import L1, PSNR, SSIM, Frames, to_frames
from scail_lab.metrics.pixel import psnr_per_frame, ssim_per_frame


def _const(value: int, n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.full((n, 3, size, size), value, dtype=torch.uint8)


# ---------------------------------------------------------------- PSNR


@pytest.mark.parametrize(("offset", "expected_db"), [(1, 48.130803608679), (10, 28.130803608679)])
def test_psnr_constant_offset(offset: int, expected_db: float) -> None:
    metric = PSNR()
    value = metric.update(_const(100), _const(100 + offset))
    assert value == pytest.approx(expected_db, abs=1e-9)
    assert value == pytest.approx(20 * math.log10(255 / offset), abs=1e-12)


def test_psnr_no_uint8_wraparound() -> None:
    # pred 10, target 30: uint8 subtraction would wrap to 236 and the square to 144 (mod 256); true MSE is 400.
    pred, target = _const(10), _const(30)
    assert PSNR().update(pred, target) == pytest.approx(10 * math.log10(255**2 / 400), abs=1e-9)  # 22.110 dB
    legacy = PSNR(legacy_uint8_overflow=True)
    assert legacy.name == "psnr_legacy_uint8"
    assert legacy.update(pred, target) == pytest.approx(10 * math.log10(255**2 / 144), abs=1e-9)  # 26.548 dB
    # symmetric: the correct PSNR does not depend on which side is larger
    assert PSNR().update(target, pred) == pytest.approx(22.110203695, abs=1e-8)


def test_psnr_identical_is_capped_and_frame_mean() -> None:
    metric = PSNR(max_db=100.0)
    assert metric.update(_const(7), _const(7), sample_id="same") == 100.0
    # frame 0 off by 1, frame 1 off by 10: mean of per-frame dB, not dB of mean MSE
    pred = torch.cat([_const(100, 1), _const(100, 1)])
    target = torch.cat([_const(101, 1), _const(110, 1)])
    assert metric.update(pred, target, sample_id="mixed") == pytest.approx(
        (48.130803608679 + 28.130803608679) / 2
    )
    result = metric.compute()
    assert result.per_sample == {"same": 100.0, "mixed": pytest.approx(38.130803608679)}
    assert result.value == pytest.approx((100.0 + 38.130803608679) / 2)
    assert result.protocol["num_samples"] == 2


def test_psnr_matches_torchmetrics_per_frame() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 256, (5, 3, 24, 20), generator=gen, dtype=torch.uint8)
    target = torch.randint(0, 256, (5, 3, 24, 20), generator=gen, dtype=torch.uint8)
    ours = psnr_per_frame(to_frames(pred), to_frames(target))
    ref = peak_signal_noise_ratio(
        pred.double(), target.double(), data_range=255.0, reduction="none", dim=(1, 2, 3)
    )
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)  # torchmetrics accumulates in float32


# ---------------------------------------------------------------- SSIM


def test_ssim_identical_and_constant_closed_form() -> None:
    assert SSIM().update(_const(90), _const(90)) == pytest.approx(1.0, abs=1e-12)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)  # variances are 0 -> luminance term only
    assert SSIM().update(_const(100), _const(110)) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.9954764, abs=1e-7)
    # grey variant: the same closed form on the luma (equal RGB -> luma equals the value)
    assert SSIM("disco_gray7").update(_const(100), _const(110)) == pytest.approx(expected, abs=1e-12)


def test_ssim_matches_torchmetrics_gaussian() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 256, (3, 3, 32, 40), generator=gen).double()
    pred = (target + torch.randn(target.shape, generator=gen, dtype=torch.float64) * 25).clamp(0, 255)
    # torchmetrics reflect-pads and averages the full map: our border="reflect" is the same computation
    ours = ssim_per_frame(pred, target, "gaussian11", border="reflect")
    ref = structural_similarity_index_measure(pred, target, data_range=255.0, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert 0.2 < float(ours.mean()) < 0.95  # a real, non-trivial value
    # the default (valid windows only) differs from it at the border, by a small amount on this image
    valid = ssim_per_frame(pred, target, "gaussian11")
    assert 1e-4 < float((valid - ref).abs().max()) < 0.01


def _gaussian_loop_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Loop-based float64 SSIM: 11x11 Gaussian sigma 1.5, population covariance, valid windows."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_valid_matches_loop_reference() -> None:
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (1, 3, 14, 13)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 30, x.shape), 0, 255).astype(np.float32).astype(np.float64)
    ours = SSIM().update(Frames(torch.from_numpy(x).float()), Frames(torch.from_numpy(y).float()))
    expected = np.mean([_gaussian_loop_reference(x[0, c], y[0, c]) for c in range(3)])
    assert ours == pytest.approx(expected, abs=1e-10)


def _ssim_window_reference(x: np.ndarray, y: np.ndarray, win: int = 7) -> float:
    """Loop-based float64 SSIM: uniform window, sample covariance, mean over valid window positions."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            a, b = x[i : i + win, j : j + win].ravel(), y[i : i + win, j : j + win].ravel()
            va, vb = a.var(ddof=1), b.var(ddof=1)
            cov = ((a - a.mean()) * (b - b.mean())).sum() / (a.size - 1)
            vals.append(
                ((2 * a.mean() * b.mean() + c1) * (2 * cov + c2))
                / ((a.mean() ** 2 + b.mean() ** 2 + c1) * (va + vb + c2))
            )
    return float(np.mean(vals))


def test_ssim_disco_variant_matches_loop_reference() -> None:
    rng = np.random.default_rng(2)
    gray_a = rng.integers(0, 256, (12, 11)).astype(np.uint8)
    gray_b = np.clip(gray_a.astype(int) + rng.integers(-40, 40, (12, 11)), 0, 255).astype(np.uint8)
    # equal RGB channels -> OpenCV luma equals the grey value exactly
    pred = torch.from_numpy(np.repeat(gray_a[None, None], 3, axis=1))
    target = torch.from_numpy(np.repeat(gray_b[None, None], 3, axis=1))
    ours = SSIM("disco_gray7").update(pred, target)
    assert ours == pytest.approx(
        _ssim_window_reference(gray_a.astype(float), gray_b.astype(float)), abs=1e-10
    )


def test_ssim_rejects_tiny_frames_and_bad_variant() -> None:
    with pytest.raises(ValueError, match="smaller than"):
        SSIM().update(_const(1, size=8), _const(2, size=8))
    with pytest.raises(ValueError, match="gaussian11"):
        SSIM("box")


# ---------------------------------------------------------------- L1 and layouts


def test_l1_conventions() -> None:
    assert L1().update(_const(10), _const(30)) == pytest.approx(20 / 255)
    assert L1("disco").update(_const(10), _const(30)) == pytest.approx(20 / (16 * 16))


def test_layouts_agree_and_ambiguity_is_an_error() -> None:
    gen = torch.Generator().manual_seed(3)
    nchw = torch.randint(0, 256, (4, 3, 16, 16), generator=gen, dtype=torch.uint8)
    other = torch.randint(0, 256, (4, 3, 16, 16), generator=gen, dtype=torch.uint8)
    ref = PSNR().update(nchw, other)
    assert PSNR().update(nchw.permute(1, 0, 2, 3), other.permute(1, 0, 2, 3)) == ref  # [3, N, H, W]
    assert (
        PSNR().update(nchw.permute(0, 2, 3, 1).numpy(), other.permute(0, 2, 3, 1).numpy()) == ref
    )  # [N, H, W, 3]
    three = torch.zeros(3, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="layout"):
        to_frames(three)
    assert to_frames(three, layout="CNHW").shape == (3, 3, 16, 16)


def test_float_ranges() -> None:
    frames = torch.rand(2, 3, 16, 16)
    assert torch.allclose(to_frames(frames), frames * 255)
    assert torch.allclose(to_frames(frames * 2 - 1, value_range=(-1, 1)), frames * 255, atol=1e-4)
    with pytest.raises(ValueError, match="value_range"):
        to_frames(frames * 2 - 1)  # a [-1, 1] video passed as [0, 1]
    canonical = Frames.of(frames * 2 - 1, value_range=(-1, 1))
    assert to_frames(canonical) is canonical.data


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\).*\(2, 3, 32, 32\)"):
        PSNR().update(_const(1), _const(1, size=32))
