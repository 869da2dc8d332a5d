"""The interface's pose grid: SCAIL-2's half-resolution pose tokens (pose_downsample=2) or full resolution (1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from scail_lab.build import build_encoder, build_model
from scail_lab.conditioning.encode import ConditionEncoder, unit_range
from scail_lab.model.dit import SCAILDiT
from scail_lab.model.interfaces import ChannelConcatInterface, InContextInterface
from scail_lab.model.masks import ColourMaskScheme, downsample_frames
from scail_lab.model.rope import axis_pairs, inverse_frequencies
from scail_lab.training.plan import Workload, random_step_inputs, tokens_of
from tests.conftest import CONFIGS, make_inputs, randomize_, tiny_config
from tests.standins import PoolVAE


def _model(pose_downsample: int) -> SCAILDiT:
    return randomize_(SCAILDiT(tiny_config(), InContextInterface(pose_downsample=pose_downsample)), seed=3)


def test_full_resolution_pose_tokens_sit_on_the_video_grid_with_the_mode_offset():
    model = _model(1)
    inputs = make_inputs(batch=1, frames=2, height=4, width=8, pose_downsample=1)
    own = SimpleNamespace(patch_embedding=model.patch_embedding, patch_embedding_pose=model.patch_embedding_pose,
                          patch_embedding_mask=model.patch_embedding_mask)  # fmt: skip
    tokens, layout = model.interface.embed(own, inputs, model.mask_width)
    pose = layout.segments[-1]
    assert (pose.name, pose.grid, pose.stride) == ("pose", (2, 2, 4), 1)
    assert tokens.shape[1] == (1 + 2) * 2 * 4 + 2 * 2 * 4  # ref + video + pose: 4x SCAIL-2's 2 * 1 * 2 pose tokens
    # Pose token (t, h, w) rotates by the plain positions (t, h, w) plus the animate offset (1, 0, 120), per axis.
    head = model.config.dim // model.config.num_heads
    re, _ = model.rope.phasors(layout, model.modes["animate"], head)
    inv = [inverse_frequencies(n, model.rope.theta) for n in axis_pairs(head)]
    first_pose = (1 + 2) * 2 * 4
    for t, h, w in [(0, 0, 0), (1, 1, 3), (1, 0, 2)]:
        expected = torch.cat([torch.cos((t + 1) * inv[0]), torch.cos(h * inv[1]), torch.cos((w + 120) * inv[2])])
        torch.testing.assert_close(re[first_pose + (t * 2 + h) * 4 + w], expected, rtol=0, atol=1e-12)
    out = model(inputs)
    assert out.shape == inputs.latents.shape and torch.isfinite(out).all()


def test_pose_latents_on_the_wrong_grid_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match=r"pose_latents \(interface pose_downsample=1\) must have shape"):
        _model(1)(make_inputs(batch=1, frames=2, height=4, width=8))  # SCAIL-2's half-resolution latents
    with pytest.raises(ValueError, match=r"pose_downsample=2\) must have shape"):
        _model(2)(make_inputs(batch=1, frames=2, height=4, width=8, pose_downsample=1))
    for bad in (0, 3, 4):
        with pytest.raises(ValueError, match="pose_downsample must be one of"):
            InContextInterface(pose_downsample=bad)
        with pytest.raises(ValueError, match="pose_downsample must be one of"):
            ChannelConcatInterface(pose_downsample=bad)
        with pytest.raises(ValueError, match="pose_downsample must be one of"):
            ConditionEncoder(PoolVAE(), ColourMaskScheme(), pose_downsample=bad)


def test_the_encoder_keeps_the_driving_video_at_full_resolution_when_asked():
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (1, 3, 5, 64, 64), dtype=torch.uint8, generator=g)
    full, half = (ConditionEncoder(PoolVAE(), ColourMaskScheme(), pose_downsample=d) for d in (1, 2))
    assert torch.equal(full.pose_latents(video), PoolVAE().encode(unit_range(video)))  # [1, 16, 2, 8, 8]
    assert torch.equal(half.pose_latents(video), PoolVAE().encode(downsample_frames(unit_range(video))))
    assert half.pose_latents(video).shape[-2:] == (4, 4)
    masks = torch.zeros(1, 3, 5, 64, 64, dtype=torch.uint8)
    masks[:, 0, :, 8:40, 16:48] = 255  # one red character
    code_full, code_half = full.driving_mask_code(masks), half.driving_mask_code(masks)
    assert code_full.shape[-2:] == (8, 8) and code_half.shape[-2:] == (4, 4)
    ref_grid = full.ref_mask_code(masks[:, :, 0])  # the reference mask's code of the same frame, full grid
    width = ColourMaskScheme().width // 4  # one pixel frame's share of the packed channels
    torch.testing.assert_close(code_full[:, :width, 0], ref_grid[:, :width, 0], rtol=0, atol=1e-6)


def test_config_path_builds_both_grids_and_the_planner_counts_the_tokens():
    for d in (1, 2):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("sample", [
                "model=tiny", "interface=scail2", "weights=null", "vae.path=null", f"model.interface.pose_downsample={d}"])  # fmt: skip
        model = build_model(cfg)
        assert model.interface.pose_downsample == d and model.describe()["pose_downsample"] == d
        assert build_encoder(cfg, model).pose_downsample == d
        work = Workload(batch=1, frames=2, height=8, width=8, train=False)
        inputs = random_step_inputs(model, work, generator=torch.Generator().manual_seed(0))
        assert inputs.pose_latents.shape[-2:] == (8 // d, 8 // d)
        p = model.config.patch_size[1]
        assert tokens_of(model, work) == (1 + 2) * 16 + 2 * 16 // (d * d) == (1 + 2) * (8 // p) ** 2 + 2 * (8 // p // d) ** 2
        model(inputs)
