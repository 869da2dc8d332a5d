"""Tiny checkpoints in every official layout load strictly into SCAILDiT and reproduce its outputs."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from scail_lab.checkpoints import (
    convert_checkpoint,
    infer_denoiser_config,
    load_denoiser_state_dict,
    official_key_shapes,
)
from scail_lab.checkpoints.synthetic import FORMATS, write_denoiser_checkpoint
from tests.conftest import CONFIGS, make_inputs, randomize_


def tiny_model(interface: str = "scail2", mask: str = "color28", seed: int = 0):
    """configs/model/tiny.yaml through Hydra, with every weight randomised (the zero head hides bugs)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("sample", overrides=["model=tiny", "weights=null", f"interface={interface}", f"mask={mask}"])
    return randomize_(instantiate(cfg.model), seed=seed).eval()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_layout_loads_strictly_and_reproduces_outputs(tmp_path, fmt):
    preview = fmt == "sat_deepspeed"  # SCAIL-Preview: scail1 interface, no mask conv
    source = tiny_model("scail1" if preview else "scail2", "none" if preview else "color28", seed=1)
    shapes = official_key_shapes(source.config, source.mask_width)
    state = source.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes  # model = official table
    assert infer_denoiser_config(shapes, num_heads=4, text_len=16) == (source.config, source.mask_width)
    path = write_denoiser_checkpoint(tmp_path, state, fmt)

    target = tiny_model("scail1" if preview else "scail2", "none" if preview else "color28", seed=2)
    target.load_state_dict(load_denoiser_state_dict(path, expected_shapes=shapes), strict=True)
    inputs = make_inputs(batch=2, frames=2, height=8, width=8, mask_width=source.mask_width, text_tokens=5)
    with torch.no_grad():
        expected, got = source(inputs), target(inputs)
    assert expected.abs().mean() > 0.05
    assert torch.equal(got, expected)


def test_sat_to_bf16_safetensors_round_trip_into_the_model(tmp_path):
    source = tiny_model(seed=3)
    sat = write_denoiser_checkpoint(tmp_path / "scail2", source.state_dict(), "scail2_fsdp2")
    config = convert_checkpoint(
        sat, tmp_path / "bf16", dtype="bf16", num_heads=4, text_len=16, progress=False
    )
    assert config == (source.config, source.mask_width)
    target = tiny_model(seed=4)
    target.load_state_dict(load_denoiser_state_dict(tmp_path / "bf16", dtype=torch.float32), strict=True)
    rounded = tiny_model(seed=5)
    rounded.load_state_dict({k: v.bfloat16().float() for k, v in source.state_dict().items()}, strict=True)
    inputs = make_inputs(batch=1, frames=2, height=8, width=8, seed=1)
    with torch.no_grad():
        assert torch.equal(target(inputs), rounded(inputs))
        assert (target(inputs) - source(inputs)).abs().max() < 0.05 * source(inputs).abs().max()
