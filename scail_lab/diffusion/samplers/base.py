"""The sampler protocol and the flow-matching conversions the multistep solvers share.

A sampler integrates dx/dsigma = v(x, sigma) from sigma ~ 1 (noise) to 0 (data). Usage:

    sampler.set_timesteps(num_steps)
    for i in range(sampler.num_steps):
        v = model(x, t=sampler.timesteps[i])
        x = sampler.step(v, x)

Multistep solvers (UniPC, DPM++) work in the data-prediction form: x0 = x - sigma v, with alpha = 1 - sigma
and lambda = log(alpha / sigma) (the half log-SNR).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scail_lab.diffusion.schedules import sampling_sigmas

TIMESTEP_ROUNDING = ("none", "truncate")


class FlowSampler:
    """Base class: owns the sigma schedule, the model timesteps and the step counter."""

    name = "base"

    def __init__(self, shift: float = 5.0, sigma_max: float = 1.0, timestep_rounding: str = "none") -> None:
        if shift <= 0:
            raise ValueError(f"sampler shift must be positive, got {shift}")
        if timestep_rounding not in TIMESTEP_ROUNDING:
            raise ValueError(
                f"timestep_rounding must be one of {TIMESTEP_ROUNDING}, got {timestep_rounding!r}"
            )
        self.shift = float(shift)
        self.sigma_max = float(sigma_max)
        self.timestep_rounding = timestep_rounding
        self.sigmas = torch.zeros(0, dtype=torch.float64)
        self.timesteps = torch.zeros(0)
        self.step_index = 0

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def set_timesteps(self, num_steps: int) -> None:
        """Fill `sigmas` (float64 [N + 1], ending at 0) and `timesteps` (model inputs, sigma x 1000)."""
        self.sigmas = sampling_sigmas(num_steps, self.shift, self.sigma_max)
        timesteps = self.sigmas[:-1] * 1000.0
        if self.timestep_rounding == "truncate":  # Wan's UniPC / DPM++ cast timesteps to int64
            timesteps = timesteps.to(torch.int64).to(torch.float64)
        self.timesteps = timesteps.float()
        self.step_index = 0
        self.reset()

    def reset(self) -> None:
        """Clear multistep history (called by set_timesteps)."""

    def step(self, velocity: Tensor, sample: Tensor) -> Tensor:
        if self.step_index >= self.num_steps:
            raise ValueError(
                f"{self.name}: step() called {self.step_index + 1} times for {self.num_steps} steps"
            )
        out = self._step(velocity.float(), sample.float(), self.step_index)
        self.step_index += 1
        return out.to(sample.dtype)

    def _step(self, velocity: Tensor, sample: Tensor, i: int) -> Tensor:
        raise NotImplementedError

    # --- flow-matching helpers for the data-prediction solvers -----------------------------------
    def sigma(self, i: int) -> float:
        return float(self.sigmas[i])

    def data_prediction(self, velocity: Tensor, sample: Tensor, i: int) -> Tensor:
        """x0 = x - sigma_i v."""
        return sample - self.sigma(i) * velocity

    def half_log_snr(self, i: int) -> float:
        """lambda = log(1 - sigma) - log(sigma); +inf at sigma 0, -inf at sigma 1."""
        s = self.sigma(i)
        if s <= 0.0:
            return math.inf
        if s >= 1.0:
            return -math.inf
        return math.log(1.0 - s) - math.log(s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shift={self.shift}, sigma_max={self.sigma_max})"
