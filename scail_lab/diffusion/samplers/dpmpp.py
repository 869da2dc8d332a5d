"""DPM-Solver++ (2M, midpoint) in data-prediction form on the flow schedule (Wan's `dpm++`).

First-order step:  x_t = (s_t / s_s) x - a_t (e^{-h} - 1) D0
Second-order step: x_t = (s_t / s_s) x - a_t (e^{-h} - 1) (D0 + D1 / 2), D1 = (m0 - m1) / r0, r0 = h_prev / h
with a = 1 - sigma, s = sigma, h = lambda_t - lambda_s. The first step and the final step (to sigma 0) are
first order; a single step from sigma 1 is the exact jump x_t = s_t x + a_t x0.
"""

from __future__ import annotations

import math

from torch import Tensor

from scail_lab.diffusion.samplers.base import FlowSampler


class DPMPP2MSampler(FlowSampler):
    name = "dpm++"

    def reset(self) -> None:
        self._previous_x0: Tensor | None = None

    def _step(self, velocity: Tensor, sample: Tensor, i: int) -> Tensor:
        x0 = self.data_prediction(velocity, sample, i)
        s_s, s_t = self.sigma(i), self.sigma(i + 1)
        a_t = 1.0 - s_t
        h = self.half_log_snr(i + 1) - self.half_log_snr(i)
        phi = math.expm1(-h)  # e^{-h} - 1, -1 when sigma_t = 0
        ratio = s_t / s_s
        final = i == self.num_steps - 1
        if self._previous_x0 is None or final:
            out = ratio * sample - (a_t * phi) * x0
        else:
            h_prev = self.half_log_snr(i) - self.half_log_snr(i - 1)
            r0 = h_prev / h
            d1 = (x0 - self._previous_x0) * (1.0 / r0)  # 0 when the previous step started at sigma 1
            out = ratio * sample - (a_t * phi) * x0 - 0.5 * (a_t * phi) * d1
        self._previous_x0 = x0
        return out
