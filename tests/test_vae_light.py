"""Light CPU VAE: latent interface, causality, training makes progress, checkpoint files, fit tool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scail_lab.encoders import VideoAutoencoder, load_vae
from scail_lab.encoders.light_vae import LightVAE
from tools.fit_light_vae import main as fit_main
from tools.fit_light_vae import moving_shapes


@pytest.fixture(scope="module")
def light() -> LightVAE:
    torch.manual_seed(0)
    model = LightVAE(widths=(8, 16, 16)).eval()
    with torch.no_grad():  # the temporal mixers start at zero; make them matter for the causality tests
        model.encoder_mix.conv.weight.normal_(0, 0.3)
        model.decoder_mix.conv.weight.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("frames, latent_frames", [(1, 1), (5, 2), (9, 3)])
def test_shapes(light: LightVAE, frames: int, latent_frames: int) -> None:
    assert isinstance(light, VideoAutoencoder)
    assert (light.latent_channels, light.spatial_factor, light.temporal_factor) == (16, 8, 4)
    with torch.no_grad():
        z = light.encode(torch.rand(2, 3, frames, 16, 24) * 2 - 1)
        assert z.shape == (2, 16, latent_frames, 2, 3) and z.dtype == torch.float32
        video = light.decode(z)
    assert video.shape == (2, 3, frames, 16, 24) and video.abs().max() <= 1.0


@pytest.mark.parametrize("frame", [0, 1, 4, 5, 8])
def test_encoder_is_causal(light: LightVAE, frame: int) -> None:
    video = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(frame)) * 2 - 1
    changed = video.clone()
    changed[:, :, frame] = -changed[:, :, frame]
    with torch.no_grad():
        z, z_changed = light.encode(video), light.encode(changed)
    group = 0 if frame == 0 else (frame - 1) // 4 + 1
    assert torch.equal(z[:, :, :group], z_changed[:, :, :group])
    assert (z[:, :, group:] - z_changed[:, :, group:]).abs().amax(
        dim=(0, 1, 3, 4)
    ).min() > 1e-4  # later ones see it


def test_decoder_is_causal(light: LightVAE) -> None:
    z = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    changed = z.clone()
    changed[:, :, 1] += 1.0
    with torch.no_grad():
        video, video_changed = light.decode(z), light.decode(changed)
    assert torch.equal(video[:, :, :1], video_changed[:, :, :1])
    assert (video[:, :, 1:5] - video_changed[:, :, 1:5]).abs().max() > 1e-3
    later = z.clone()
    later[:, :, 2] += 1.0
    with torch.no_grad():
        assert torch.equal(light.decode(later)[:, :, :5], video[:, :, :5])  # frames <= 4 ignore latent 2


def test_moving_shapes_are_valid_moving_video() -> None:
    clips = moving_shapes(6, 5, 32, seed=3)
    assert clips.shape == (6, 3, 5, 32, 32) and clips.dtype == torch.float32
    assert clips.min() >= -1.0 and clips.max() <= 1.0
    assert (clips[:, :, 1:] - clips[:, :, :-1]).abs().amax(dim=(1, 2, 3, 4)).min() > 0.1  # every clip moves
    assert torch.equal(clips, moving_shapes(6, 5, 32, seed=3)) and not torch.equal(
        clips, moving_shapes(6, 5, 32, 4)
    )


def test_a_few_training_steps_reduce_reconstruction_loss() -> None:
    torch.manual_seed(0)
    model = LightVAE(widths=(8, 8, 16))
    clips = moving_shapes(2, 5, 32, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        loss, mse = model.reconstruction_loss(clips)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(mse.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_latent_statistics_normalise_and_invert(tmp_path: Path, light: LightVAE) -> None:
    model = LightVAE(widths=(8, 16, 16)).eval()
    model.load_state_dict(light.state_dict())
    mean, std = torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16)
    model.set_latent_stats(mean, std)
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        raw = model.encode_raw(video)
        z = model.encode(video)
        torch.testing.assert_close(z, (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1))
        torch.testing.assert_close(model.decode(z), model.decode_raw(raw).clamp(-1, 1))
    path = model.save(tmp_path / "light.safetensors", extra={"metrics": {"psnr": 1.0}})
    assert json.loads(path.with_suffix(".json").read_text())["config"] == {"widths": [8, 16, 16], "z_dim": 16}
    loaded = load_vae("light", path)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.encode(video), z)
    with pytest.raises(ValueError, match="latent stats"):
        model.set_latent_stats(mean, -std)


def test_light_checkpoint_errors(tmp_path: Path, light: LightVAE) -> None:
    path = light.save(tmp_path / "light.safetensors")
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="light.json"):
        load_vae("light", path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ValueError, match="light.json.*unreadable"):
        load_vae("light", path)
    path.with_suffix(".json").write_text(json.dumps({"config": {"widths": [8, 16, 32], "z_dim": 16}}))
    with pytest.raises(ValueError, match="shape mismatches"):
        load_vae("light", path)
    with pytest.raises(ValueError, match="architecture comes from the checkpoint"):
        load_vae("light", path, arch={"widths": [8, 8, 8]})
    with pytest.raises(ValueError, match=".safetensors"):
        light.save(tmp_path / "light.pt")


def test_fit_tool_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "fit" / "light_vae.safetensors"
    metrics = fit_main(
        [
            "--out",
            str(out),
            "--steps",
            "3",
            "--synthetic",
            "4",
            "--batch",
            "2",
            "--frames",
            "5",
            "--size",
            "16",
        ]
        + ["--widths", "8", "8", "8", "--eval-clips", "2", "--eval-frames", "5"]
    )
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "light_vae.json",
        "light_vae.recon.png",
        "light_vae.safetensors",
    ]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["metrics"]["heldout_synthetic_psnr"] == pytest.approx(metrics["heldout_synthetic_psnr"])
    assert 0 < metrics["heldout_synthetic_psnr"] < 60
    model = load_vae("light", out)
    assert float(model.latents_std.min()) > 0 and not torch.equal(model.latents_std, torch.ones(16))
    with pytest.raises(ValueError, match="no video files match"):
        fit_main(["--out", str(out), "--videos", str(tmp_path / "none_*.mp4"), "--steps", "1"])


def test_fit_tool_reads_video_folders_and_skips_bad_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder of sample folders with mp4s; a corrupt and a too-short file are skipped and reported."""
    import imageio.v3 as iio

    clips = ((moving_shapes(2, 8, 16, seed=5).permute(0, 2, 3, 4, 1) + 1) * 127.5).round().byte().numpy()
    for i, clip in enumerate(clips):
        (tmp_path / "data" / f"sample_{i}").mkdir(parents=True)
        iio.imwrite(
            tmp_path / "data" / f"sample_{i}" / "driving.mp4", clip, fps=8, codec="libx264", plugin="pyav"
        )
    iio.imwrite(
        tmp_path / "data" / "sample_0" / "short.mp4", clips[0][:3], fps=8, codec="libx264", plugin="pyav"
    )
    (tmp_path / "data" / "sample_1" / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out" / "light_vae.safetensors"
    args = [
        "--out",
        str(out),
        "--videos",
        str(tmp_path / "data"),
        "--steps",
        "2",
        "--batch",
        "2",
        "--frames",
        "5",
    ]
    with caplog.at_level("WARNING"):
        fit_main(
            args + ["--size", "16", "--widths", "8", "8", "8", "--eval-clips", "2", "--eval-frames", "5"]
        )
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 2
    assert any("broken.mp4" in s for s in skipped) and any("short.mp4: 3 frames < 5" in s for s in skipped)
    assert out.is_file() and load_vae("light", out).latent_channels == 16


def test_fit_tool_continues_from_a_fitted_vae(tmp_path: Path) -> None:
    """--init starts from a fitted checkpoint: zero steps at lr ~0 give back its weights; other widths are refused."""
    from scail_lab.encoders.light_vae import LightVAE

    common = ["--synthetic", "4", "--batch", "2", "--frames", "5", "--size", "16", "--eval-clips", "2",
              "--eval-frames", "5", "--widths", "8", "8", "8"]  # fmt: skip
    first = tmp_path / "a" / "light_vae.safetensors"
    fit_main(["--out", str(first), "--steps", "3", *common])
    second = tmp_path / "b" / "light_vae.safetensors"
    fit_main(["--out", str(second), "--steps", "1", "--lr", "1e-12", "--init", str(first), *common])
    a, b = LightVAE.from_checkpoint(first), LightVAE.from_checkpoint(second)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if not name.startswith("latents_"):  # the latent statistics are re-measured
            torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)
    fresh = tmp_path / "c" / "light_vae.safetensors"
    fit_main(["--out", str(fresh), "--steps", "1", "--lr", "1e-12", "--seed", "1", *common])
    c = LightVAE.from_checkpoint(fresh)
    assert any(not torch.allclose(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))
    with pytest.raises(ValueError, match="pass the same"):
        fit_main(["--out", str(tmp_path / "d" / "x.safetensors"), "--steps", "1", "--init", str(first),
                  *common[:-4], "--widths", "8", "16", "16"])  # fmt: skip


def test_fit_tool_sets_the_latent_width(tmp_path: Path) -> None:
    from scail_lab.encoders.light_vae import LightVAE

    out = tmp_path / "z8" / "light_vae.safetensors"
    fit_main(["--out", str(out), "--steps", "1", "--synthetic", "4", "--batch", "2", "--frames", "5", "--size", "16",
              "--eval-clips", "2", "--eval-frames", "5", "--widths", "8", "8", "8", "--z-dim", "8"])  # fmt: skip
    model = LightVAE.from_checkpoint(out)
    assert model.config["z_dim"] == 8
    assert tuple(model.encode(torch.zeros(1, 3, 5, 16, 16)).shape) == (1, 8, 2, 2, 2)


def test_fit_tool_decoder_only_keeps_the_encoder_and_its_latents(tmp_path: Path) -> None:
    """--decoder-only: encoder weights and latent statistics stay --init's bit for bit (latents made with it stay
    valid), the decoder moves and its reconstruction loss falls; without --init it is refused."""
    from scail_lab.encoders.light_vae import LightVAE

    common = ["--synthetic", "8", "--batch", "4", "--frames", "5", "--size", "16", "--eval-clips", "2",
              "--eval-frames", "5", "--widths", "8", "8"]  # fmt: skip
    first = tmp_path / "a" / "light_vae.safetensors"
    fit_main(["--out", str(first), "--steps", "2", *common])
    second = tmp_path / "b" / "light_vae.safetensors"
    fit_main(["--out", str(second), "--steps", "40", "--lr", "3e-3", "--init", str(first), "--decoder-only", *common])
    a, b = LightVAE.from_checkpoint(first), LightVAE.from_checkpoint(second)
    decoder = {f"{name}." for name in ("decoder_in", "decoder_mix", "decoder")}
    moved = []
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if any(name.startswith(prefix) for prefix in decoder):
            moved.append(not torch.equal(pa, pb))
        else:
            assert torch.equal(pa, pb), name
    assert moved and all(moved)
    clips = moving_shapes(8, 5, 16, seed=0)  # the training clips (the tool's seed 0)
    with torch.no_grad():
        torch.testing.assert_close(a.encode(clips), b.encode(clips), rtol=0, atol=0)
        loss_a = torch.nn.functional.mse_loss(a.decode(a.encode(clips)), clips)
        loss_b = torch.nn.functional.mse_loss(b.decode(b.encode(clips)), clips)
    assert loss_b < 0.9 * loss_a
    with pytest.raises(SystemExit):
        fit_main(["--out", str(tmp_path / "c" / "x.safetensors"), "--steps", "1", "--decoder-only", *common])


def test_refine_blocks_grow_a_fitted_decoder_without_changing_it(tmp_path: Path) -> None:
    """Added decoder refine blocks start as the identity: same latents, same reconstructions, then they train;
    the config round-trips through the checkpoint; a refit cannot drop blocks."""
    from scail_lab.encoders.light_vae import LightVAE
    from tools.fit_light_vae import grow_decoder

    torch.manual_seed(0)
    base = LightVAE(widths=(8, 8), z_dim=4)
    for p in base.parameters():  # away from the identity-like init so the check has teeth
        p.data.add_(0.05 * torch.randn_like(p))
    grown = grow_decoder(base, 2)
    assert grown.config == {"widths": [8, 8], "z_dim": 4, "refine_blocks": 2} and len(grown.decoder_refine) == 2
    clips = moving_shapes(2, 5, 16, seed=3)
    with torch.no_grad():
        assert torch.equal(grown.encode_raw(clips), base.encode_raw(clips))
        torch.testing.assert_close(grown(clips), base(clips), rtol=0, atol=0)
        for block in grown.decoder_refine:  # a non-zero block changes the output: the blocks are on the path
            block.body[-1].weight.normal_()
        assert not torch.allclose(grown(clips), base(clips))
    grown.save(tmp_path / "g.safetensors")
    again = LightVAE.from_checkpoint(tmp_path / "g.safetensors")
    assert again.config["refine_blocks"] == 2
    torch.testing.assert_close(again(clips), grown(clips), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot drop"):
        grow_decoder(again, 1)
    assert grow_decoder(again, None) is again
