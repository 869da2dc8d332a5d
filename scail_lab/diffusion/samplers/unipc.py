"""UniPC (predictor UniP + corrector UniC, B(h) variant bh2, data prediction) on the flow schedule.

Wan's default sampler: order 2, bh2, x0-prediction, flow velocity converted as x0 = x - sigma v, the final
step(s) lowered in order, corrector applied from the second step on. Written from the UniPC paper
(Zhao et al. 2023) and checked against diffusers' UniPCMultistepScheduler in the tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scail_lab.diffusion.samplers.base import FlowSampler

VARIANTS = ("bh1", "bh2")


class UniPCSampler(FlowSampler):
    name = "unipc"

    def __init__(
        self,
        shift: float = 5.0,
        sigma_max: float = 0.999,
        timestep_rounding: str = "truncate",
        order: int = 2,
        variant: str = "bh2",
        use_corrector: bool = True,
        lower_order_final: bool = True,
    ) -> None:
        super().__init__(shift, sigma_max, timestep_rounding)
        if order not in (1, 2, 3):
            raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
        if variant not in VARIANTS:
            raise ValueError(f"UniPC variant must be one of {VARIANTS}, got {variant!r}")
        self.order = order
        self.variant = variant
        self.use_corrector = use_corrector
        self.lower_order_final = lower_order_final

    def reset(self) -> None:
        self._outputs: list[Tensor] = []  # x0 predictions, oldest first, at most `order`
        self._last_sample: Tensor | None = None
        self._this_order = 1
        self._warm = 0

    def _step(self, velocity: Tensor, sample: Tensor, i: int) -> Tensor:
        x0 = self.data_prediction(velocity, sample, i)
        if self.use_corrector and i > 0 and self._last_sample is not None:
            sample = self._correct(x0, sample, i)
        self._outputs = (self._outputs + [x0])[-self.order :]
        order = min(self.order, self.num_steps - i) if self.lower_order_final else self.order
        self._this_order = min(order, self._warm + 1)
        self._last_sample = sample
        out = self._predict(sample, i, self._this_order)
        self._warm = min(self._warm + 1, self.order)
        return out

    # --- the two updates ---------------------------------------------------------------------------
    def _coefficients(self, h: float, rks: list[float], order: int) -> tuple[float, float, Tensor, Tensor]:
        """h phi_1, B(h), the Vandermonde-like R and the right-hand side b of the UniPC linear systems."""
        hh = -h  # data prediction
        h_phi_1 = math.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1.0
        b_h = hh if self.variant == "bh1" else math.expm1(hh)
        rk = torch.tensor(rks, dtype=torch.float64)
        rows, rhs, factorial = [], [], 1
        for k in range(1, order + 1):
            rows.append(rk ** (k - 1))
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        return h_phi_1, b_h, torch.stack(rows), torch.tensor(rhs, dtype=torch.float64)

    def _differences(self, base: int, h: float, order: int) -> tuple[list[float], list[Tensor]]:
        """rk and (m_k - m0) / rk for the `order - 1` stored outputs older than the one at sigma index `base`."""
        m0 = self._outputs[-1]
        lam0 = self.half_log_snr(base)
        rks, diffs = [], []
        for k in range(1, order):
            rk = (self.half_log_snr(base - k) - lam0) / h
            rks.append(rk)
            diffs.append((self._outputs[-1 - k] - m0) / rk)
        return rks + [1.0], diffs

    def _predict(self, sample: Tensor, i: int, order: int) -> Tensor:
        """UniP: from sigma_i to sigma_{i+1}."""
        s_t, s_0 = self.sigma(i + 1), self.sigma(i)
        h = self.half_log_snr(i + 1) - self.half_log_snr(i)
        rks, diffs = self._differences(i, h, order)
        h_phi_1, b_h, rows, rhs = self._coefficients(h, rks, order)
        out = (s_t / s_0) * sample - ((1.0 - s_t) * h_phi_1) * self._outputs[-1]
        if diffs:
            rhos = [0.5] if order == 2 else torch.linalg.solve(rows[:-1, :-1], rhs[:-1]).tolist()
            out = out - ((1.0 - s_t) * b_h) * sum(r * d for r, d in zip(rhos, diffs, strict=True))
        return out

    def _correct(self, x0: Tensor, sample: Tensor, i: int) -> Tensor:
        """UniC: refine the sample at sigma_i using the new x0 prediction there."""
        order = self._this_order
        s_t, s_0 = self.sigma(i), self.sigma(i - 1)
        h = self.half_log_snr(i) - self.half_log_snr(i - 1)
        rks, diffs = self._differences(i - 1, h, order)
        h_phi_1, b_h, rows, rhs = self._coefficients(h, rks, order)
        rhos = [0.5] if order == 1 else torch.linalg.solve(rows, rhs).tolist()
        m0 = self._outputs[-1]
        out = (s_t / s_0) * self._last_sample - ((1.0 - s_t) * h_phi_1) * m0
        correction = rhos[-1] * (x0 - m0)
        for r, d in zip(rhos[:-1], diffs, strict=True):
            correction = correction + r * d
        return out - ((1.0 - s_t) * b_h) * correction
