"""Checkpoint folder discovery: every official layout resolves, and one error lists everything missing."""

from __future__ import annotations

import pytest

from scail_lab.checkpoints import resolve_checkpoint_dir
from scail_lab.checkpoints.folder import find_denoiser

CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth"


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def scail2_folder(root):
    """The released SCAIL-2 download, file names only (contents are not read by the resolver)."""
    touch(root / "Wan2.1_VAE.pth")
    touch(root / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth")
    touch(root / "umt5-xxl" / "tokenizer.json")
    touch(root / "umt5-xxl" / "tokenizer_config.json")
    touch(root / CLIP)
    (root / "model").mkdir()
    (root / "model" / "latest").write_text("1\n")
    touch(root / "model" / "1" / "fsdp2_rank_0000_checkpoint.pt")
    touch(root / "model" / "bias-aware-dpo-lora.pt")  # LoRAs beside the model are not the denoiser
    return root


def test_scail2_download_resolves(tmp_path):
    files = resolve_checkpoint_dir(scail2_folder(tmp_path))
    assert files.vae == tmp_path / "Wan2.1_VAE.pth"
    assert files.text_encoder == tmp_path / "umt5-xxl" / "models_t5_umt5-xxl-enc-bf16.pth"
    assert files.tokenizer == tmp_path / "umt5-xxl"
    assert files.clip == tmp_path / CLIP
    assert files.denoiser == tmp_path / "model" / "1" / "fsdp2_rank_0000_checkpoint.pt"
    assert files.denoiser_config is None


def test_scail_preview_and_latest_iteration(tmp_path):
    (tmp_path / "model").mkdir()
    touch(tmp_path / "model" / "500" / "mp_rank_00_model_states.pt")
    touch(tmp_path / "model" / "1000" / "mp_rank_00_model_states.pt")
    assert (
        find_denoiser(tmp_path) == tmp_path / "model" / "1000" / "mp_rank_00_model_states.pt"
    )  # no latest: newest
    (tmp_path / "model" / "latest").write_text("500")
    assert find_denoiser(tmp_path) == tmp_path / "model" / "500" / "mp_rank_00_model_states.pt"


def test_wan21_layout_and_converted_denoiser_win(tmp_path):
    touch(tmp_path / "Wan2.1_VAE.pth")
    touch(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    touch(tmp_path / "google" / "umt5-xxl" / "spiece.model")
    touch(tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    touch(tmp_path / "model" / "1" / "fsdp2_rank_0000_checkpoint.pt")
    touch(tmp_path / "scail2_bf16" / "config.json")
    touch(tmp_path / "scail2_bf16" / "model-00001-of-00002.safetensors")
    touch(tmp_path / "scail2_bf16" / "model.safetensors.index.json")
    files = resolve_checkpoint_dir(tmp_path)
    assert files.text_encoder == tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    assert files.tokenizer == tmp_path / "google" / "umt5-xxl"
    assert files.clip.name == "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    assert files.denoiser == tmp_path / "scail2_bf16" / "model.safetensors.index.json"  # converted beats SAT
    assert files.denoiser_config == tmp_path / "scail2_bf16" / "config.json"
    explicit = resolve_checkpoint_dir(tmp_path, denoiser="model/1/fsdp2_rank_0000_checkpoint.pt")
    assert explicit.denoiser == tmp_path / "model" / "1" / "fsdp2_rank_0000_checkpoint.pt"


def test_one_error_lists_every_missing_component(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint_dir(tmp_path)
    message = str(info.value)
    assert "is missing 5 component(s)" in message
    for expected in (
        "vae: expected Wan2.1_VAE.pth",
        "text_encoder: expected umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth or models_t5_umt5-xxl-enc-bf16.pth",
        "tokenizer: expected a folder umt5-xxl or google/umt5-xxl with tokenizer.json or spiece.model",
        f"clip: expected {CLIP}",
        "fsdp2_rank_0000_checkpoint.pt, mp_rank_00_model_states.pt",
    ):
        assert expected in message
    touch(tmp_path / "Wan2.1_VAE.pth")
    touch(tmp_path / "model.safetensors")
    with pytest.raises(
        FileNotFoundError, match=r"missing 2 component\(s\):\n  text_encoder: .*\n  tokenizer"
    ):
        resolve_checkpoint_dir(tmp_path, require=("vae", "text_encoder", "tokenizer", "denoiser"))
    files = resolve_checkpoint_dir(tmp_path, require=("vae", "denoiser"))
    assert files.clip is None and files.denoiser == tmp_path / "model.safetensors"


def test_ambiguous_or_bad_settings(tmp_path):
    touch(tmp_path / "a.safetensors")
    touch(tmp_path / "b.safetensors")
    with pytest.raises(
        FileNotFoundError, match=r"several denoiser candidates \['a.safetensors', 'b.safetensors'\]"
    ):
        resolve_checkpoint_dir(tmp_path, require=("denoiser",))
    with pytest.raises(FileNotFoundError, match="given explicitly"):
        resolve_checkpoint_dir(tmp_path, require=("denoiser",), denoiser="c.safetensors")
    with pytest.raises(ValueError, match="unknown components"):
        resolve_checkpoint_dir(tmp_path, require=("unet",))
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        resolve_checkpoint_dir(tmp_path / "missing")
