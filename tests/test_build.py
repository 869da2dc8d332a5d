"""Building from config: weights assigned into a meta-device model, resident dtype, pipeline precision check."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from scail_lab.build import build_encoder, build_model, build_pipeline
from scail_lab.checkpoints.synthetic import write_denoiser_checkpoint
from scail_lab.model.dit import SCAILDiT
from tests.conftest import CONFIGS, randomize_, tiny_config


def cfg_with(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("sample", overrides=[*TINY, *overrides])


TINY = ["model=tiny", "interface=scail2", "weights=null", "vae.path=null"]  # not the shipped toy base sample.yaml defaults to


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_weights_load_into_a_meta_built_model_in_the_requested_dtype(tmp_path, dtype):
    source = randomize_(SCAILDiT(tiny_config(freq_dim=64)), seed=3)
    path = write_denoiser_checkpoint(tmp_path, source.state_dict(), "scail2_fsdp2")
    cfg = cfg_with(f"weights={path}", f"weights_dtype={'null' if dtype is None else dtype}")
    model = build_model(cfg)
    want = torch.float32 if dtype is None else torch.bfloat16
    for name, p in model.state_dict().items():
        assert p.device.type == "cpu" and p.dtype == want, name
        assert torch.equal(p, source.state_dict()[name].to(want)), name
    if dtype is not None:
        with pytest.raises(ValueError, match="precision=bf16"):
            build_pipeline(cfg, model, build_encoder(cfg, model))
        assert build_pipeline(cfg, model, build_encoder(cfg, model), precision="bf16").precision == "bf16"
        # auto: resident half weights need autocast, whether or not the CPU has bf16 units
        assert build_pipeline(cfg, model, build_encoder(cfg, model), precision="auto").precision == "bf16"


def test_bad_weights_dtype_and_mismatched_checkpoints_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="weights_dtype"):
        build_model(cfg_with("weights_dtype=int8"))
    other = SCAILDiT(tiny_config(dim=32, freq_dim=64))
    path = write_denoiser_checkpoint(tmp_path, other.state_dict(), "safetensors")
    with pytest.raises(ValueError, match="shape|missing|unexpected"):
        build_model(cfg_with(f"weights={path}"))


def test_an_interface_mismatch_between_checkpoint_and_config_is_named(tmp_path):
    """sample.yaml defaults to the toy base's channel_concat interface: an in-context (SCAIL-2) checkpoint loaded
    without interface=scail2 gets an error that says so, and the reverse case too."""
    source = randomize_(SCAILDiT(tiny_config(freq_dim=64)), seed=3)
    path = write_denoiser_checkpoint(tmp_path, source.state_dict(), "scail2_fsdp2")
    with pytest.raises(ValueError, match=r"patch_embedding_pose.*needs interface=scail2"):
        build_model(cfg_with(f"weights={path}", "interface=channel_concat"))
    concat = build_model(cfg_with("interface=channel_concat"))
    path = write_denoiser_checkpoint(tmp_path / "cc", concat.state_dict(), "scail2_fsdp2")
    with pytest.raises(ValueError, match="interface=channel_concat"):
        build_model(cfg_with(f"weights={path}"))
