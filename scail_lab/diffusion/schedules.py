"""Sigma schedules for rectified flow: x_sigma = (1 - sigma) x0 + sigma eps, velocity v = eps - x0.

`shift` is the timestep shift used by Wan / SCAIL-2 sampling: sigma' = shift s / (1 + (shift - 1) s).
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """sigma' = shift * s / (1 + (shift - 1) * s); the identity for shift = 1."""
    if shift <= 0:
        raise ValueError(f"sigma shift must be positive, got {shift}")
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def sampling_sigmas(num_steps: int, shift: float, sigma_max: float = 1.0) -> Tensor:
    """float64 [num_steps + 1]: shifted linspace(sigma_max, 0, N + 1)[:N], then a final 0.

    Wan's Euler / DPM++ paths use sigma_max = 1; its UniPC uses the training schedule's 1 - 1/1000 = 0.999.
    """
    if num_steps < 1:
        raise ValueError(f"number of sampling steps must be >= 1, got {num_steps}")
    if not 0.0 < sigma_max <= 1.0:
        raise ValueError(f"sigma_max must be in (0, 1], got {sigma_max}")
    base = torch.linspace(sigma_max, 0.0, num_steps + 1, dtype=torch.float64)[:num_steps]
    return torch.cat([shift_sigmas(base, shift), torch.zeros(1, dtype=torch.float64)])
