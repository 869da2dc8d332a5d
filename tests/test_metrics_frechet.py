"""Frechet distance against closed-form Gaussian values, torchmetrics, and the streaming statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import _compute_fid

from scail_lab.metrics import FeatureStats, frechet_distance
from scail_lab.metrics.frechet import frechet_from_stats, sqrtm_psd


def test_one_dimensional_closed_form() -> None:
    # N(0, 1) vs N(3, 4): 3^2 + 1 + 4 - 2 * sqrt(1 * 4) = 10
    assert frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0, abs=1e-12)


def test_diagonal_by_hand() -> None:
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 3.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    # |dmu|^2 = 14; sum (sqrt s1 - sqrt s2)^2 = (1-2)^2 + (2-2)^2 + (3-1)^2 = 5
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(19.0, abs=1e-12)


def test_commuting_full_covariances() -> None:
    # S1 = R diag(a) R^T, S2 = R diag(b) R^T share eigenvectors: FD = |dmu|^2 + sum (sqrt a - sqrt b)^2
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0]
    a, b = np.array([1.0, 2.0, 5.0, 0.5]), np.array([3.0, 0.2, 5.0, 2.0])
    s1, s2 = rot @ np.diag(a) @ rot.T, rot @ np.diag(b) @ rot.T
    mu1, mu2 = np.array([0.5, 0, 0, 1.0]), np.array([0, 0, 2.0, 1.0])
    expected = 0.25 + 4.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-10)


def test_random_spd_matches_torchmetrics_and_is_symmetric() -> None:
    gen = torch.Generator().manual_seed(1)
    d = 12
    a, b = (
        torch.randn(d, d, generator=gen, dtype=torch.float64),
        torch.randn(d, d, generator=gen, dtype=torch.float64),
    )
    s1, s2 = (
        a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64),
        b @ b.T + 0.1 * torch.eye(d, dtype=torch.float64),
    )
    mu1, mu2 = (
        torch.randn(d, generator=gen, dtype=torch.float64),
        torch.randn(d, generator=gen, dtype=torch.float64),
    )
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(float(_compute_fid(mu1, s1, mu2, s2)), rel=1e-9)
    assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-12)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    root = sqrtm_psd(s1)
    torch.testing.assert_close(root @ root, s1, rtol=0, atol=1e-9)


def test_rank_deficient_covariances_stay_finite() -> None:
    # fewer samples than dims (the FVD-with-10-videos case): singular covariances, still a finite PSD answer
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 16)), rng.normal(size=(5, 16)) + 1.0
    a, b = FeatureStats(), FeatureStats()
    a.update(x)
    b.update(y)
    value = frechet_from_stats(a, b)
    ref = float(
        _compute_fid(
            *(
                torch.from_numpy(v)
                for v in (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
            )
        )
    )
    assert np.isfinite(value) and value == pytest.approx(ref, rel=1e-6)


def test_streaming_stats_equal_one_shot_cov_for_any_split() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(101, 6)) * 50 + 1000  # large mean: the naive sum-of-squares form loses digits here
    stats = FeatureStats()
    for chunk in np.split(x, [1, 7, 40, 41, 100]):
        stats.update(chunk)
    mean, cov = stats.mean_cov()
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov.numpy(), np.cov(x, rowvar=False), rtol=1e-11, atol=1e-8)
    _, pop = stats.mean_cov(ddof=0)
    np.testing.assert_allclose(pop.numpy(), np.cov(x, rowvar=False, ddof=0), rtol=1e-11, atol=1e-8)


def test_sample_estimate_converges_to_closed_form() -> None:
    rng = np.random.default_rng(4)
    d = 4
    mu1, mu2 = np.zeros(d), np.array([1.0, 0.0, -1.0, 0.5])
    s1, s2 = np.diag([1.0, 2.0, 0.5, 1.0]), np.diag([2.0, 1.0, 0.5, 3.0])
    exact = frechet_distance(mu1, s1, mu2, s2)
    a, b = FeatureStats(), FeatureStats()
    a.update(rng.multivariate_normal(mu1, s1, size=100_000))
    b.update(rng.multivariate_normal(mu2, s2, size=100_000))
    assert frechet_from_stats(a, b) == pytest.approx(exact, rel=0.01)


def test_stats_save_load_roundtrip_and_errors(tmp_path) -> None:
    stats = FeatureStats()
    stats.update(np.arange(12, dtype=np.float64).reshape(4, 3) ** 1.5)
    stats.save(tmp_path / "ref.npz")
    loaded = FeatureStats.load(tmp_path / "ref.npz")
    assert loaded.count == 4
    torch.testing.assert_close(loaded.mean_cov()[1], stats.mean_cov()[1])
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match="width changed from 3 to 2"):
        stats.update(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="more than 1 feature rows"):
        FeatureStats().mean_cov()
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        FeatureStats.load(tmp_path / "missing.npz")
