"""First-order Euler on the flow ODE (SCAIL-2's SAT RFSampler): x <- x + (sigma_next - sigma) v."""

from __future__ import annotations

from torch import Tensor

from scail_lab.diffusion.samplers.base import FlowSampler


class EulerSampler(FlowSampler):
    name = "euler"

    def _step(self, velocity: Tensor, sample: Tensor, i: int) -> Tensor:
        return sample + (self.sigma(i + 1) - self.sigma(i)) * velocity
