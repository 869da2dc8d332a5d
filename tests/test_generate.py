"""tools/generate.py: SCAIL-2's flags drive the same pipeline, end to end on a tiny official-layout folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scail_lab.checkpoints.synthetic import write_denoiser_checkpoint
from scail_lab.data import media
from scail_lab.encoders.vae import WanVAE
from scail_lab.model.dit import DiTConfig, SCAILDiT
from tests.conftest import randomize_
from tests.test_clip import CLIP_NAME, official_clip_state
from tests.test_text_encoder import wan_t5_state, write_umt5_folder
from tools import generate

TINY = {"dim": 64, "ffn_dim": 128, "num_heads": 4, "num_layers": 2, "text_dim": 16, "clip_dim": 16}
TINY_CLIP = {"image_size": 28, "dim": 16, "out_dim": 8, "num_heads": 2, "num_layers": 3}


def official_folder(root):
    """A tiny SCAIL-2 download: umT5 folder, CLIP .pth, Wan VAE .pth and the fsdp2 denoiser checkpoint."""
    write_umt5_folder(root, wan_t5_state(seed=0))
    torch.save(official_clip_state(seed=0), root / CLIP_NAME)
    torch.save(WanVAE(dim=8).state_dict(), root / "Wan2.1_VAE.pth")
    model = randomize_(SCAILDiT(DiTConfig(**TINY)), seed=1, std=0.02)
    write_denoiser_checkpoint(root, model.state_dict(), "scail2_fsdp2")
    return model


def example_files(root, frames=9, size=64):
    rng = np.random.default_rng(0)
    (root / "ref.png").write_bytes(media.encode_image(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
    mask = np.zeros((size, size, 3), dtype=np.uint8)
    mask[16:, 16:48, 2] = 255
    (root / "ref_mask.png").write_bytes(media.encode_image(mask))
    (root / "pose.mp4").write_bytes(media.encode_video(rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8), 8.0))
    (root / "mask.mp4").write_bytes(media.encode_video(np.repeat(mask[None], frames, 0), 8.0))


def tiny_overrides() -> list[str]:
    out = [f"--override=model.config.{k}={v}" for k, v in TINY.items()]
    out += [f"--override=image_encoder.{k}={v}" for k, v in TINY_CLIP.items()]
    out += ["--override=+vae.arch.dim=8", "--override=vae.dtype=float32", "--override=text_encoder.dtype=float32"]
    return out


def test_flags_map_onto_sample_overrides():
    args = generate.parse_args(["--ckpt_dir", "/c", "--image", "r.jpg", "--pose", "p.mp4", "--replace_flag",
                                "--sample_solver", "dpm++", "--lora_path", "a.safetensors", "b.safetensors",
                                "--lora_alpha", "0.5", "1.0", "--base_seed", "7", "--device", "cpu"])  # fmt: skip
    o = generate.overrides(args)
    for expected in ("+preset=scail2_14b", "mode=replace", "sampler=dpmpp", "sampler.shift=3.0", "pipeline.num_steps=40",
                     "pipeline.guide_scale=5.0", "pipeline.height=512", "pipeline.width=896", "seed=7",
                     "loras=[{path:'a.safetensors',strength:0.5},{path:'b.safetensors',strength:1.0}]"):  # fmt: skip
        assert expected in o, expected
    assert not any(x.startswith("pipeline.offload_blocks") for x in o)
    assert "text_encoder.offload=true" in o and "image_encoder.offload=true" in o  # released default: on
    kept = generate.overrides(generate.parse_args(["--ckpt_dir", "c", "--image", "r", "--pose", "p",
                                                   "--offload_model", "false"]))  # fmt: skip
    assert "text_encoder.offload=false" in kept and "image_encoder.offload=false" in kept
    blocks = generate.overrides(generate.parse_args(["--ckpt_dir", "c", "--image", "r", "--pose", "p",
                                                     "--offload_blocks", "20"]))  # fmt: skip
    assert "pipeline.offload_blocks=20" in blocks
    with pytest.raises(ValueError, match="pair 1:1"):
        generate.overrides(generate.parse_args(["--ckpt_dir", "c", "--image", "r", "--pose", "p",
                                                "--additional_ref_images", "x.jpg"]))  # fmt: skip


def test_generate_runs_the_official_layout_end_to_end(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    official_folder(ckpt)
    example_files(tmp_path)
    save = tmp_path / "result.mp4"
    argv = ["--ckpt_dir", str(ckpt), "--image", str(tmp_path / "ref.png"), "--mask_image", str(tmp_path / "ref_mask.png"),
            "--pose", str(tmp_path / "pose.mp4"), "--mask_video", str(tmp_path / "mask.mp4"), "--prompt", "a dancer",
            "--target_h", "64", "--target_w", "64", "--sample_steps", "2", "--sample_guide_scale", "2.0",
            "--segment_len", "9", "--device", "cpu", "--base_seed", "3", "--save_file", str(save),
            "--out_dir", str(tmp_path / "out"), *tiny_overrides()]  # fmt: skip
    assert generate.main(argv) == 0
    frames = media.decode_video(save)
    assert frames.shape == (9, 64, 64, 3)
    again = tmp_path / "again.mp4"
    # Same seed: the same frames (their checksum before mp4 encoding); another seed: different frames.
    meta = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    first = meta["frames_sha256"]
    assert generate.main([a if a != str(save) else str(again) for a in argv]) == 0
    assert json.loads(next((tmp_path / "out").glob("*.json")).read_text())["frames_sha256"] == first
    assert np.abs(media.decode_video(again).astype(float) - frames).mean() < 1.0  # and the mp4s agree closely
    other = tmp_path / "other.mp4"
    argv_other = [str(other) if a == str(save) else ("4" if a == "3" else a) for a in argv]
    assert generate.main(argv_other) == 0
    assert json.loads(next((tmp_path / "out").glob("*.json")).read_text())["frames_sha256"] != first
    assert np.abs(media.decode_video(other).astype(float) - frames).mean() > 5
