"""Frechet distance between Gaussians fitted to features, and a streaming feature-statistics accumulator.

FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

Tr((S1 S2)^(1/2)) is computed as Tr((A S2 A)^(1/2)) with A = S1^(1/2): for symmetric PSD S1, S2 the matrix
A S2 A is symmetric PSD and similar to S1 S2, so its eigenvalues are real and non-negative and one `eigh` gives
the trace exactly (no complex parts to drop, no epsilon jitter as in scipy.linalg.sqrtm based code). All in
float64.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scail_lab.files import atomic_path


def _as_f64(x: Tensor | np.ndarray) -> Tensor:
    return (
        (torch.from_numpy(np.asarray(x)) if not isinstance(x, Tensor) else x).detach().to(torch.float64).cpu()
    )


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """Principal square root of a symmetric PSD matrix [D, D] (float64); tiny negative eigenvalues clip to 0."""
    sym = (matrix + matrix.T) / 2.0
    eigvals, eigvecs = torch.linalg.eigh(sym)
    return (eigvecs * eigvals.clamp(min=0.0).sqrt()) @ eigvecs.T


def frechet_distance(
    mu1: Tensor | np.ndarray,
    sigma1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    sigma2: Tensor | np.ndarray,
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2). mu: [D], sigma: [D, D] symmetric PSD."""
    m1, m2, s1, s2 = _as_f64(mu1), _as_f64(mu2), _as_f64(sigma1), _as_f64(sigma2)
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(
            f"frechet_distance: means must be equal-length vectors, got {tuple(m1.shape)}, {tuple(m2.shape)}"
        )
    dim = m1.shape[0]
    if s1.shape != (dim, dim) or s2.shape != (dim, dim):
        raise ValueError(
            f"frechet_distance: covariances must be [{dim}, {dim}], got {tuple(s1.shape)}, {tuple(s2.shape)}"
        )
    root1 = sqrtm_psd(s1)
    middle = root1 @ ((s2 + s2.T) / 2.0) @ root1
    middle = (middle + middle.T) / 2.0
    tr_covmean = torch.linalg.eigvalsh(middle).clamp(min=0.0).sqrt().sum()
    value = ((m1 - m2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2.0 * tr_covmean
    return float(value)


class FeatureStats:
    """Streaming mean and covariance of feature rows [n, D] in float64 (Chan et al. pairwise merge).

    Batch-split invariant: feeding rows in any chunks gives the same statistics as one `np.cov` call.
    `ddof=1` (default) is the unbiased sample covariance that pytorch-fid and the SCAIL FVD script use.
    """

    def __init__(self) -> None:
        self.meta: dict = {}  # protocol the features were made with (saved with the statistics)
        self.count = 0
        self.mean: Tensor | None = None  # [D]
        self.m2: Tensor | None = None  # [D, D] sum of centred outer products

    @property
    def dim(self) -> int | None:
        return None if self.mean is None else int(self.mean.shape[0])

    def update(self, features: Tensor | np.ndarray) -> None:
        x = _as_f64(features)
        if x.ndim != 2:
            raise ValueError(f"FeatureStats.update expects [n, D] features, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("FeatureStats.update: features contain NaN or inf")
        n_b = x.shape[0]
        if n_b == 0:
            return
        if self.mean is not None and x.shape[1] != self.dim:
            raise ValueError(f"FeatureStats: feature width changed from {self.dim} to {x.shape[1]}")
        mean_b = x.mean(dim=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n_a = self.count
        total = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + torch.outer(delta, delta) * (n_a * n_b / total)
        self.count = total

    def mean_cov(self, ddof: int = 1) -> tuple[Tensor, Tensor]:
        if self.mean is None or self.count - ddof <= 0:
            raise ValueError(
                f"FeatureStats: need more than {ddof} feature rows for a covariance, have {self.count}"
            )
        return self.mean.clone(), self.m2 / (self.count - ddof)

    def save(self, path: str | os.PathLike) -> None:
        """Write count/mean/m2 and `meta` to an npz (`files.atomic_path`: no half-written cache)."""
        if self.mean is None:
            raise ValueError("FeatureStats.save: no features accumulated")
        meta = np.array(json.dumps(self.meta, sort_keys=True, default=str))
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, count=self.count, mean=self.mean.numpy(), m2=self.m2.numpy(), meta=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        if not Path(path).is_file():
            raise FileNotFoundError(f"feature statistics file not found: {path}")
        with np.load(path) as data:
            if not {"count", "mean", "m2"} <= set(data.files):
                raise ValueError(f"{path} is not a FeatureStats npz (keys {data.files})")
            stats = cls()
            stats.count = int(data["count"])
            stats.mean = torch.from_numpy(data["mean"]).double()
            stats.m2 = torch.from_numpy(data["m2"]).double()
            stats.meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
        return stats


def frechet_from_stats(a: FeatureStats, b: FeatureStats, ddof: int = 1) -> float:
    mu1, s1 = a.mean_cov(ddof)
    mu2, s2 = b.mean_cov(ddof)
    return frechet_distance(mu1, s1, mu2, s2)
