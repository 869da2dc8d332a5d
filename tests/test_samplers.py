"""Samplers on flows with closed-form answers, parity with diffusers, guidance batching."""

from __future__ import annotations

import pytest
import torch

from scail_lab.diffusion.guidance import guided_velocity
from scail_lab.diffusion.samplers import DPMPP2MSampler, EulerSampler, UniPCSampler
from scail_lab.diffusion.schedules import sampling_sigmas, shift_sigmas
from tests.conftest import make_inputs

SAMPLERS = {"euler": EulerSampler, "dpm++": DPMPP2MSampler, "unipc": UniPCSampler}
MU, STD = 0.7, 0.3


def gaussian_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact flow velocity E[eps - x0 | x_sigma = x] for data ~ N(MU, STD^2)."""
    var = (1 - sigma) ** 2 * STD**2 + sigma**2
    centred = x - (1 - sigma) * MU
    return sigma / var * centred - (MU + (1 - sigma) * STD**2 / var * centred)


def integrate(sampler, velocity, x, steps):
    sampler.set_timesteps(steps)
    for i in range(steps):
        x = sampler.step(velocity(x, float(sampler.sigmas[i])), x)
    return x


def test_shifted_schedule_values():
    sig = sampling_sigmas(4, shift=5.0)
    assert sig.tolist() == pytest.approx([1.0, 5 * 0.75 / 4.0, 5 * 0.5 / 3.0, 5 * 0.25 / 2.0, 0.0])
    assert torch.equal(shift_sigmas(torch.tensor([0.3]), 1.0), torch.tensor([0.3]))
    unipc = UniPCSampler(shift=3.0)
    unipc.set_timesteps(3)
    assert unipc.sigmas[0].item() == pytest.approx(3 * 0.999 / (1 + 2 * 0.999))
    assert unipc.timesteps.tolist() == [999.0, 856.0, 599.0]  # int64-truncated as Wan does
    with pytest.raises(ValueError, match="steps"):
        EulerSampler().set_timesteps(0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_point_mass_data_is_integrated_exactly(name):
    """For data = a point x0, v = (x - x0) / sigma and the flow is a straight line: every solver is exact."""
    x0 = torch.tensor([[1.5, -0.25, 0.0]])
    sampler = SAMPLERS[name](shift=3.0, sigma_max=1.0)
    out = integrate(sampler, lambda x, s: (x - x0) / s, torch.randn(4, 3), steps=7)
    assert torch.allclose(out, x0.expand(4, 3), atol=1e-5)


@pytest.mark.parametrize("name,tolerance", [("euler", 0.12), ("dpm++", 0.012), ("unipc", 0.01)])
def test_gaussian_data_within_tolerance_and_higher_order_beats_euler(name, tolerance):
    """Data N(0.7, 0.3^2): the exact flow map sends noise z to 0.7 + 0.3 z."""
    z = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    exact = MU + STD * z

    def error(sampler_name):
        sampler = SAMPLERS[sampler_name](shift=1.0, sigma_max=1.0, timestep_rounding="none")
        return (integrate(sampler, gaussian_velocity, z.clone(), steps=20) - exact).abs().max().item()

    err = error(name)
    assert err < tolerance
    if name != "euler":
        assert err < error("euler") / 5


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
@pytest.mark.parametrize("steps", [5, 12])
def test_agreement_with_diffusers_flow_schedulers(name, steps):
    diffusers = pytest.importorskip("diffusers")
    if name == "unipc":
        ours = UniPCSampler(shift=3.0, timestep_rounding="none")
        theirs = diffusers.UniPCMultistepScheduler(
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            solver_order=2,
            solver_type="bh2",
            flow_shift=1.0,
        )
    else:
        ours = DPMPP2MSampler(shift=3.0)
        theirs = diffusers.DPMSolverMultistepScheduler(
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            solver_order=2,
            flow_shift=1.0,
            algorithm_type="dpmsolver++",
            solver_type="midpoint",
            final_sigmas_type="zero",
        )
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    theirs.sigmas = ours.sigmas.float().clone()  # same schedule on both sides; the update rules are compared
    theirs.timesteps = ours.timesteps.clone()
    x_ours = x_theirs = torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(1))
    for i in range(steps):
        x_ours = ours.step(gaussian_velocity(x_ours, float(ours.sigmas[i])), x_ours)
        v = gaussian_velocity(x_theirs, float(theirs.sigmas[i]))
        x_theirs = theirs.step(v, theirs.timesteps[i], x_theirs).prev_sample
    assert (x_ours - x_theirs).abs().max().item() < 2e-5


def test_stepping_past_the_schedule_is_an_error():
    sampler = EulerSampler()
    sampler.set_timesteps(1)
    sampler.step(torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="step"):
        sampler.step(torch.zeros(1), torch.zeros(1))


def test_guidance_batches_cond_and_uncond_and_scale_one_runs_one_forward():
    calls = []

    def model(inputs):
        calls.append(inputs.batch_size)
        return inputs.text_emb.sum(dim=(1, 2)).view(-1, 1, 1, 1, 1) * torch.ones_like(inputs.latents)

    inputs = make_inputs(batch=1)
    negative = torch.zeros(1, 3, 32)
    v1 = guided_velocity(model, inputs, negative, scale=1.0)
    assert calls == [1]
    v5 = guided_velocity(model, inputs, negative, scale=5.0)
    assert calls == [1, 2]  # one forward of the doubled batch
    assert torch.allclose(v5, 5.0 * v1)  # uncond velocity is 0 here, so v = 5 cond


def test_pose_guidance_adds_a_pose_free_branch_to_the_same_batch():
    """v = v_cond + (s - 1)(v_cond - v_negative_text) + (p - 1)(v_cond - v_pose_free), each term only when its scale
    is > 1; all branches in one forward. A model linear in the text and the pose makes each term exact."""
    calls = []

    def model(inputs):
        calls.append(inputs.batch_size)
        value = 2.0 * inputs.text_emb.sum(dim=(1, 2)) + 3.0 * inputs.pose_latents.flatten(1).sum(dim=1)
        return value.view(-1, 1, 1, 1, 1) * torch.ones_like(inputs.latents)

    inputs = make_inputs(batch=1)
    free = inputs.replace(pose_latents=torch.zeros_like(inputs.pose_latents))
    negative = torch.zeros(1, 3, 32)
    cond = model(inputs)
    no_text = model(inputs.replace(text_emb=torch.zeros_like(inputs.text_emb)))
    no_pose = model(free)
    calls.clear()
    pose_only = guided_velocity(model, inputs, negative, scale=1.0, pose_free=free, pose_scale=3.0)
    torch.testing.assert_close(pose_only, no_pose + 3.0 * (cond - no_pose))
    both = guided_velocity(model, inputs, negative, scale=5.0, pose_free=free, pose_scale=3.0)
    torch.testing.assert_close(both, cond + 4.0 * (cond - no_text) + 2.0 * (cond - no_pose), rtol=1e-5, atol=1e-3)
    assert calls == [2, 3]  # one batched forward each
    assert torch.equal(guided_velocity(model, inputs, negative, scale=1.0, pose_free=free, pose_scale=1.0), cond)
    with pytest.raises(ValueError, match="cfg_parallel"):
        guided_velocity(model, inputs, negative, 5.0, cfg_parallel=object(), pose_free=free, pose_scale=2.0)
