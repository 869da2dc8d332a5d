"""Step caching for sampling (TeaCache-style): skip the transformer block stack on a denoising step whose input
changed little since the last computed step, and reuse that step's residual (block-stack output - input).

The indicator is the first block's timestep-modulated input, norm1(x) * (1 + scale) + shift: it moves with both
the latents and the timestep, which is why it predicts how much the output will move. Per step the relative L1
change against the previous step is mapped through a polynomial (`coefficients`, highest power first; the identity
by default, calibrated per model in docs/PERFORMANCE.md) and accumulated; a step whose accumulated change stays
below `threshold` reuses the residual, otherwise the blocks run and the sum restarts. The first `warmup` steps and
every step after `max_skips` consecutive skips are computed. One cache per segment, owned by the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


class StepCache:
    def __init__(self, threshold: float, coefficients: Sequence[float] = (1.0, 0.0), warmup: int = 1,
                 max_skips: int = 3) -> None:  # fmt: skip
        if threshold < 0 or warmup < 1 or max_skips < 1:
            raise ValueError(f"step cache needs threshold >= 0, warmup >= 1, max_skips >= 1; got {threshold}, "
                             f"{warmup}, {max_skips}")  # fmt: skip
        self.threshold, self.coefficients = float(threshold), [float(c) for c in coefficients]
        self.warmup, self.max_skips = int(warmup), int(max_skips)
        self.previous: Tensor | None = None
        self.residual: Tensor | None = None
        self.accumulated = 0.0
        self.steps = self.computed = self.skipped = 0
        self._run_of_skips = 0
        self.changes: list[float] = []  # the indicator's relative change of every step (calibration data)
        self.residual_changes: list[float] = []  # the residual's, between consecutive computed steps

    def _rescale(self, change: float) -> float:
        value = 0.0
        for c in self.coefficients:
            value = value * change + c
        return value

    def should_compute(self, modulated: Tensor) -> bool:
        """Decide for this step from the first block's modulated input [B, L, D]."""
        self.steps += 1
        current = modulated.detach().float()
        compute = True
        if self.previous is not None and self.previous.shape == current.shape and self.residual is not None:
            change = ((current - self.previous).abs().mean() / self.previous.abs().mean().clamp_min(1e-12)).item()
            self.changes.append(change)
            self.accumulated += self._rescale(change)
            compute = (self.steps <= self.warmup or self.accumulated >= self.threshold
                       or self._run_of_skips >= self.max_skips)  # fmt: skip
        self.previous = current
        if compute:
            self.accumulated, self._run_of_skips = 0.0, 0
            self.computed += 1
        else:
            self._run_of_skips += 1
            self.skipped += 1
        return compute

    def store(self, x_in: Tensor, x_out: Tensor) -> None:
        residual = (x_out - x_in).detach()
        if self.residual is not None and self.residual.shape == residual.shape:
            previous = self.residual.float()
            change = (residual.float() - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)
            self.residual_changes.append(change.item())
        self.residual = residual

    def reuse(self, x_in: Tensor) -> Tensor:
        return x_in + self.residual.to(x_in.dtype)

    def stats(self) -> dict:
        return {"steps": self.steps, "computed": self.computed, "skipped": self.skipped, "threshold": self.threshold,
                "changes": [round(c, 5) for c in self.changes],
                "residual_changes": [round(c, 5) for c in self.residual_changes]}  # fmt: skip


def modulated_first_input(block, x: Tensor, e0: Tensor) -> Tensor:
    """norm1(x) * (1 + scale_msa) + shift_msa of `block` (the TeaCache indicator)."""
    shift, scale = (block.modulation.float() + e0.float())[:, :2].unbind(1)  # [B, D] each
    return block.norm1(x).float() * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
