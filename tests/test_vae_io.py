"""VAE checkpoints and loaders: official-layout round trip, clear errors for bad files, Hydra nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from scail_lab.encoders import VideoAutoencoder, WanVAE, load_vae
from scail_lab.encoders.vae_base import read_state_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vae"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WanVAE]:
    """A tiny checkpoint in the official layout: a plain state dict written with torch.save, like Wan2.1_VAE.pth."""
    torch.manual_seed(0)
    model = WanVAE(dim=8).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("proj.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "Wan2.1_VAE.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_official_layout_checkpoint_reloads_strictly_and_reproduces(tiny_ckpt: tuple[Path, WanVAE]) -> None:
    path, source = tiny_ckpt
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert list(state) == list(source.state_dict()) and len(state) == 194
    fresh = WanVAE(dim=8)
    fresh.load_state_dict(state, strict=True)
    loaded = load_vae("wan21", path, arch={"dim": 8})
    assert isinstance(loaded, VideoAutoencoder)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    video = torch.rand(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z_source = source.encode(video)
        assert torch.equal(fresh.encode(video), z_source)
        assert torch.equal(loaded.encode(video), z_source)
        assert torch.equal(loaded.decode(z_source), source.decode(z_source))


def test_load_vae_dtype_and_options(tiny_ckpt: tuple[Path, WanVAE]) -> None:
    path, _ = tiny_ckpt
    model = load_vae(
        "wan21", path, dtype="bf16", arch={"dim": 8}, tile_size=64, tile_overlap=16, chunked=False
    )
    assert model.dtype == torch.bfloat16 and model.tile.size == 64 and not model.chunked
    z = model.encode(torch.zeros(1, 3, 1, 16, 16))
    assert z.dtype == torch.float32 and z.shape == (1, 16, 1, 2, 2)
    trainable = load_vae("wan21", path, arch={"dim": 8}, frozen=False)
    assert all(p.requires_grad for p in trainable.parameters())


def test_missing_and_unreadable_files_name_the_path(tmp_path: Path, tiny_ckpt: tuple[Path, WanVAE]) -> None:
    missing = tmp_path / "nope" / "Wan2.1_VAE.pth"
    with pytest.raises(FileNotFoundError, match="nope/Wan2.1_VAE.pth"):
        load_vae("wan21", missing, arch={"dim": 8})
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pth.*empty"):
        read_state_dict(empty)
    good = tiny_ckpt[0].read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated.pth.*could not be read"):
        load_vae("wan21", truncated, arch={"dim": 8})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(ValueError, match="garbage.safetensors.*not a readable safetensors"):
        read_state_dict(garbage)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(ValueError, match="list.pth.*not a state dict"):
        read_state_dict(not_a_dict)
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, nested)
    with pytest.raises(ValueError, match="nested.pth.*non-tensor entries: \\['state_dict'\\]"):
        read_state_dict(nested)


def test_key_mismatches_are_listed(tmp_path: Path, tiny_ckpt: tuple[Path, WanVAE]) -> None:
    state = torch.load(tiny_ckpt[0], weights_only=True)
    state.pop("decoder.head.2.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    state["conv2.weight"] = torch.zeros(16, 16, 3, 3, 3)
    path = tmp_path / "bad_keys.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_vae("wan21", path, arch={"dim": 8})
    message = str(err.value)
    assert "bad_keys.pth" in message
    assert "1 missing keys, e.g. ['decoder.head.2.bias']" in message
    assert "1 unexpected keys, e.g. ['encoder.extra.weight']" in message
    assert "conv2.weight: file (16, 16, 3, 3, 3) vs model (16, 16, 1, 1, 1)" in message
    with pytest.raises(ValueError, match="look like a diffusers"):
        torch.save({"encoder.conv_in.weight": torch.zeros(1)}, path)
        load_vae("wan21", path, arch={"dim": 8})
    full_size = tmp_path / "full_size_expected.pth"
    torch.save(torch.load(tiny_ckpt[0], weights_only=True), full_size)
    with pytest.raises(ValueError, match="shape mismatches"):  # a dim-8 file into the default dim-96 model
        load_vae("wan21", full_size)


def test_bad_loader_options() -> None:
    with pytest.raises(ValueError, match="unknown VAE kind 'sd'"):
        load_vae("sd")
    with pytest.raises(ValueError, match="unknown WanVAE options \\['dimm'\\]"):
        load_vae("wan21", arch={"dimm": 8})
    with pytest.raises(ValueError, match="unknown VAE dtype 'float8'"):
        load_vae("wan21", arch={"dim": 8}, dtype="float8")
    with pytest.raises(ValueError, match="tile overlap"):
        load_vae("wan21", arch={"dim": 8}, tile_size=64, tile_overlap=64)


@pytest.mark.parametrize("name, arch", [("wan21", {"dim": 8}), ("light", {"widths": [8, 8, 8]})])
def test_hydra_nodes_instantiate(name: str, arch: dict) -> None:
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    cfg.arch = arch
    model = instantiate(cfg)
    assert isinstance(model, VideoAutoencoder) and model.latent_channels == 16
    assert not any(p.requires_grad for p in model.parameters())
    z = model.encode(torch.zeros(1, 3, 5, 16, 16))
    assert z.shape == (1, 16, 2, 2, 2)
    cfg.bogus = 1
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="unexpected keyword argument 'bogus'"):
        instantiate(cfg)
