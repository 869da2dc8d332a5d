"""Encoder and checkpoint configs compose, instantiate, and feed the tiny model end to end."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

from scail_lab.checkpoints import CheckpointFiles
from scail_lab.conditioning.encode import ConditionEncoder
from scail_lab.encoders.clip import CLIPImageEncoder, ImageEncoder
from scail_lab.encoders.text import TextEncoder, UMT5TextEncoder
from scail_lab.types import DiTInputs
from tests.conftest import CONFIGS
from tests.test_clip import CLIP_NAME, official_clip_state
from tests.test_text_encoder import wan_t5_state, write_umt5_folder


def compose_sample(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("sample", overrides=["interface=scail2", "weights=null", "vae.path=null", *overrides])  # not the toy base


def test_light_encoders_feed_the_tiny_model():
    cfg = compose_sample(["model=tiny", "text_encoder=light", "image_encoder=light", "checkpoint=none"])
    text_encoder, image_encoder = instantiate(cfg.text_encoder), instantiate(cfg.image_encoder)
    model = instantiate(cfg.model).eval()
    assert isinstance(text_encoder, TextEncoder) and isinstance(image_encoder, ImageEncoder)
    conditions = ConditionEncoder(
        None, model.mask_scheme, text_encoder=text_encoder, image_encoder=image_encoder
    )
    texts = conditions.text(["a red square moves left", "hi"])  # the pipeline's duck-typed `encode` calls
    assert texts.shape == (
        2,
        model.config.text_len,
        model.config.text_dim,
    )  # truncated to the model's 16 tokens
    assert (
        texts[1, 4:].abs().sum() == 0 and texts[1, 3].abs().sum() > 0
    )  # "▁", "h", "i", "</s>", then padding
    text = texts[0]
    clip = conditions.clip(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert clip.shape == (1, 17, model.config.clip_dim)
    g = torch.Generator().manual_seed(0)
    inputs = DiTInputs(
        latents=torch.randn(1, 16, 2, 8, 8, generator=g),
        timestep=torch.tensor([500.0]),
        text_emb=text[None],
        ref_latents=torch.randn(1, 16, 1, 8, 8, generator=g),
        pose_latents=torch.randn(1, 16, 2, 4, 4, generator=g),
        clip_emb=clip,
        ref_mask=torch.rand(1, 28, 1, 8, 8, generator=g),
        driving_mask=torch.rand(1, 28, 2, 4, 4, generator=g),
    )
    with torch.no_grad():
        assert model(inputs).shape == (1, 16, 2, 8, 8)


def test_official_configs_build_from_one_folder_setting(tmp_path):
    write_umt5_folder(tmp_path, wan_t5_state(seed=0))
    torch.save(official_clip_state(seed=0), tmp_path / CLIP_NAME)
    (tmp_path / "Wan2.1_VAE.pth").write_bytes(b"x")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    tiny_clip = [
        f"image_encoder.{k}={v}" for k, v in dict(image_size=28, dim=16, out_dim=8, num_heads=2).items()
    ]
    cfg = compose_sample(
        [
            "checkpoint=official",
            f"checkpoint.dir={tmp_path}",
            "text_encoder=umt5_xxl",
            "image_encoder=clip_vit_h14",
        ]
        + ["text_encoder.dtype=float32", "image_encoder.num_layers=3", *tiny_clip]
    )
    files = instantiate(cfg.checkpoint)
    assert isinstance(files, CheckpointFiles) and files.clip == tmp_path / CLIP_NAME
    text_encoder = instantiate(cfg.text_encoder)
    assert isinstance(text_encoder, UMT5TextEncoder) and text_encoder.text_len == 512
    assert text_encoder(["a red square"])[0].shape == (4, 16)  # "▁a ▁red ▁square </s>"
    image_encoder = instantiate(cfg.image_encoder)
    assert isinstance(image_encoder, CLIPImageEncoder) and image_encoder.num_blocks == 2
    assert image_encoder(torch.zeros(1, 3, 20, 30)).shape == (1, 5, 16)


def test_checkpoint_dir_must_be_set_and_exist(tmp_path):
    cfg = compose_sample(["checkpoint=official"])
    with pytest.raises(MissingMandatoryValue):
        instantiate(cfg.checkpoint)
    cfg = compose_sample(["checkpoint=official", f"checkpoint.dir={tmp_path}"])
    with pytest.raises(
        Exception, match="is missing 5 component"
    ) as info:  # Hydra wraps the FileNotFoundError
        instantiate(cfg.checkpoint)
    assert isinstance(info.value.__cause__, FileNotFoundError)
