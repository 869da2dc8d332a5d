"""The rectified-flow objective: shift values, clean history, a true masked mean."""

from __future__ import annotations

import math

import pytest
import torch

from scail_lab.conditioning import Conditions
from scail_lab.diffusion.objective import (
    FlowMatchingObjective,
    LogitNormalSigma,
    ResolutionShift,
    UniformSigma,
)


def conditions_for(x0: torch.Tensor) -> Conditions:
    b, c, t, h, w = x0.shape
    return Conditions(torch.zeros(b, c, 1, h, w), torch.zeros(b, c, t, h // 2, w // 2), torch.zeros(b, 2, 32))


def test_resolution_shift_matches_scail2_values():
    shift = ResolutionShift()
    assert math.exp(shift.mu(64 * 112 // 4)) == pytest.approx(2.138, abs=0.005)  # 512x896
    assert math.exp(shift.mu(88 * 160 // 4)) == pytest.approx(2.865, abs=0.005)  # 704x1280
    sigma = torch.tensor([0.5])
    e_mu = math.exp(shift.mu(1792))
    assert shift(sigma, 1792).item() == pytest.approx(e_mu / (e_mu + 1.0))
    assert torch.equal(ResolutionShift(enabled=False)(sigma, 1792), sigma)


def test_sigma_samplers_are_in_range_and_seeded():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a, b = LogitNormalSigma()(1000, g()), LogitNormalSigma()(1000, g())
    assert torch.equal(a, b) and 0 < a.min() and a.max() < 1
    assert abs(a.median().item() - 0.5) < 0.05
    u = UniformSigma(0.2, 0.4)(100, g())
    assert 0.2 <= u.min() and u.max() <= 0.4
    with pytest.raises(ValueError):
        UniformSigma(0.5, 0.1)


def test_history_frames_enter_clean_and_are_excluded_by_a_true_masked_mean():
    x0 = torch.randn(2, 16, 4, 4, 4)
    noise = torch.randn_like(x0)
    sigma = torch.tensor([0.3, 0.8])
    seen = {}

    def model(inputs):
        seen["inputs"] = inputs
        return torch.zeros_like(inputs.latents)  # velocity 0 -> error = (eps - x0)^2

    objective = FlowMatchingObjective()
    out = objective(model, conditions_for(x0), x0, num_history=torch.tensor([2, 0]), sigma=sigma, noise=noise)
    latents = seen["inputs"].latents
    assert torch.equal(latents[0, :, :2], x0[0, :, :2])  # sample 0: two clean history frames
    expected_noisy = (1 - 0.3) * x0[0, :, 2:] + 0.3 * noise[0, :, 2:]
    assert torch.allclose(latents[0, :, 2:], expected_noisy)
    assert torch.equal(seen["inputs"].history_mask[0, :, :2], torch.ones(4, 2, 4, 4))
    assert seen["inputs"].history_mask[1].sum() == 0
    assert torch.allclose(seen["inputs"].timestep, sigma * 1000)
    err = (noise - x0) ** 2
    kept = torch.cat([err[0, :, 2:].flatten(), err[1].flatten()])
    assert out.loss.item() == pytest.approx(kept.mean().item(), rel=1e-6)  # not diluted by the history frames
    assert out.per_sample[0].item() == pytest.approx(err[0, :, 2:].mean().item(), rel=1e-6)
    assert out.kept_fraction.item() == pytest.approx((2 * 16 * 16 + 4 * 16 * 16) / x0.numel())


def test_loss_mask_and_an_all_masked_batch():
    x0 = torch.randn(1, 16, 2, 4, 4)
    mask = torch.zeros(1, 1, 2, 4, 4)
    mask[..., :2, :] = 1.0
    out = FlowMatchingObjective()(lambda i: torch.zeros_like(i.latents), conditions_for(x0), x0, loss_mask=mask,
                                  sigma=torch.tensor([0.5]), noise=torch.zeros_like(x0))  # fmt: skip
    assert out.loss.item() == pytest.approx((x0[..., :2, :] ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="excludes every"):
        FlowMatchingObjective()(lambda i: torch.zeros_like(i.latents), conditions_for(x0), x0,
                                loss_mask=torch.zeros_like(mask))  # fmt: skip


def test_region_weighting_scales_the_characters_cells_and_keeps_the_normaliser():
    """loss = sum((1 + w * region) * err) / #kept: exact, by hand, with the history frame still excluded."""
    x0, noise = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 16, 3, 4, 4)
    region = torch.zeros(1, 1, 3, 4, 4)
    region[..., 1:3, 1:3] = 1.0  # the character covers 4 cells of each frame
    region[..., 0, 0] = 0.5  # and half of one more
    zero_model = lambda i: torch.zeros_like(i.latents)  # noqa: E731
    sigma = torch.tensor([0.6])
    out = FlowMatchingObjective(region_weight=3.0)(zero_model, conditions_for(x0), x0, num_history=torch.tensor([1]),
                                                   sigma=sigma, noise=noise, region=region)  # fmt: skip
    err = (noise - x0)[:, :, 1:] ** 2  # frame 0 is history
    expected = ((1 + 3.0 * region[:, :, 1:]) * err).sum() / err.numel()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = FlowMatchingObjective()(zero_model, conditions_for(x0), x0, num_history=torch.tensor([1]), sigma=sigma,
                                    noise=noise, region=region)  # fmt: skip
    assert plain.loss.item() == pytest.approx(err.mean().item(), rel=1e-6)  # weight 0: the region is ignored
    with pytest.raises(ValueError, match="region must be"):
        FlowMatchingObjective(region_weight=1.0)(zero_model, conditions_for(x0), x0, sigma=sigma, noise=noise,
                                                 region=region[..., :2, :])  # fmt: skip
    with pytest.raises(ValueError, match="region_weight"):
        FlowMatchingObjective(region_weight=-1.0)


def test_target_region_is_the_latent_cells_coverage_packed_like_the_vae():
    from scail_lab.conditioning import ConditionEncoder
    from scail_lab.model.masks import ColourMaskScheme

    class Factor4:
        spatial_factor = 4

    mask = torch.zeros(1, 3, 9, 8, 8, dtype=torch.uint8)
    mask[:, :, 0, :2, :2] = 255  # frame 0: a quarter of cell (0, 0)
    mask[:, :, 6, 4:, 4:] = 255  # frame 6 (latent frame 2 packs frames 5-8): all of cell (1, 1)
    region = ConditionEncoder(Factor4(), ColourMaskScheme()).target_region(mask)
    assert region.shape == (1, 1, 3, 2, 2)
    expected = torch.zeros(1, 1, 3, 2, 2)
    expected[0, 0, 0, 0, 0] = 0.25
    expected[0, 0, 2, 1, 1] = 1.0
    assert torch.equal(region, expected)
