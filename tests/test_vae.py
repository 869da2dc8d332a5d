"""Wan 2.1 VAE: official key layout, parity numbers, shapes, causality, streaming, tiling, normalisation."""

from __future__ import annotations

import pytest
import torch

from scail_lab.encoders import VideoAutoencoder, WanVAE
from scail_lab.encoders.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
from scail_lab.encoders.vae_tiling import TileConfig, ramp, run_tiled, tile_starts


def fill_deterministic(module: torch.nn.Module) -> None:
    """Weights from a formula (the same one used to compute the golden numbers below)."""
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(module.state_dict().items())):
            v = torch.sin(0.7 * torch.arange(p.numel(), dtype=torch.float64) + i).reshape(p.shape)
            p.copy_(1.0 + 0.1 * v if name.endswith("gamma") else 0.15 * v)


def sine_video(frames: int, h: int, w: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    c, f, y, x = torch.meshgrid(
        torch.arange(3.0),
        torch.arange(float(frames)),
        torch.arange(float(h)),
        torch.arange(float(w)),
        indexing="ij",
    )
    return (0.9 * torch.sin(0.3 * y + 0.2 * x + 0.5 * f + c)).unsqueeze(0).to(dtype)  # [1, 3, N, H, W]


@pytest.fixture(scope="module")
def tiny() -> WanVAE:
    torch.manual_seed(0)
    model = WanVAE(dim=8).eval()
    with torch.no_grad():  # the official init zeroes the attention projections; make them matter
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0, 0.2)
    return model


def rand_video(frames: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, h, w, generator=g) * 2 - 1


# ------------------------------------------------------------------ official layout and numbers


def test_full_size_state_dict_has_the_official_194_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = WanVAE()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 194
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 126_892_531
    expected = {
        "encoder.conv1.weight": (96, 3, 3, 3, 3),
        "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
        "encoder.downsamples.3.residual.2.weight": (192, 96, 3, 3, 3),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "encoder.head.2.weight": (32, 384, 3, 3, 3),
        "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1),
        "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "decoder.middle.1.norm.gamma": (384, 1, 1),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
        "decoder.upsamples.12.residual.6.weight": (96, 96, 3, 3, 3),
        "decoder.head.0.gamma": (96, 1, 1, 1),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert not any("time_conv" in k for k in shapes if k.startswith("encoder.downsamples.2."))  # 2-D only
    assert "decoder.upsamples.11.time_conv.weight" not in shapes
    assert model.spatial_factor == 8 and model.temporal_factor == 4 and model.latent_channels == 16


def test_tiny_model_has_the_same_key_names_as_full_size() -> None:
    with torch.device("meta"):
        full = WanVAE()
    assert list(WanVAE(dim=8).state_dict()) == list(full.state_dict())


def test_matches_numbers_from_the_official_implementation() -> None:
    """Golden values: the official wan/modules/vae.py (WanVAE_, dim 8, not vendored) run in float64 on the
    same formula weights and video, with its Upsample's fp32 round trip disabled so fp64 survives."""
    model = WanVAE(dim=8).double().eval()
    fill_deterministic(model)
    with torch.no_grad():
        z = model.encode(sine_video(9, 16, 16))
        video = model.decode(z)
    assert z.dtype == torch.float64 and z.shape == (1, 16, 3, 2, 2)
    assert z.sum().item() == pytest.approx(10.518647134130104, rel=1e-9)
    assert z.abs().sum().item() == pytest.approx(65.79849139590725, rel=1e-9)
    z_slice = [
        0.10188629634207066, -0.0174262043629695, -0.137785639898669, 1.0017014966181927,
        1.2708959236247752, 1.541470407984575, 0.14362979750534002, -0.02052706928664678,
        -0.18499843772924837, 0.26398678968119244, 0.3806114783650129, 0.4969863732484851,
    ]  # fmt: skip
    torch.testing.assert_close(
        z[0, :4, :, 1, 0].flatten(), torch.tensor(z_slice, dtype=torch.float64), rtol=1e-9, atol=1e-12
    )
    assert video.shape == (1, 3, 9, 16, 16)
    assert video.sum().item() == pytest.approx(233.51454261955962, rel=1e-9)
    assert video.abs().sum().item() == pytest.approx(5812.666280446409, rel=1e-9)
    frame_means = [
        0.03997375203152387, -0.017230013795787213, -0.015662377922224524, 0.015605828439578353,
        0.08001431004020473, 0.04032488294435486, -0.045610418883764006, 0.014106115437331533,
        0.04232641478160821,
    ]  # fmt: skip
    torch.testing.assert_close(
        video[0, 0].mean(dim=(1, 2)), torch.tensor(frame_means, dtype=torch.float64), rtol=1e-8, atol=1e-12
    )


# ------------------------------------------------------------------ shapes and streaming


@pytest.mark.parametrize("frames, latent_frames", [(1, 1), (5, 2), (9, 3)])
def test_shapes(tiny: WanVAE, frames: int, latent_frames: int) -> None:
    assert isinstance(tiny, VideoAutoencoder)
    with torch.no_grad():
        z = tiny.encode(rand_video(frames, 16, 24))
        assert z.shape == (1, 16, latent_frames, 2, 3) and z.dtype == torch.float32
        video = tiny.decode(z)
    assert video.shape == (1, 3, frames, 16, 24)
    assert video.min() >= -1.0 and video.max() <= 1.0


@pytest.fixture(scope="module")
def causal_base(tiny: WanVAE) -> tuple[torch.Tensor, torch.Tensor]:
    video = rand_video(9, 16, 16)
    with torch.no_grad():
        return video, tiny.encode(video)


@pytest.mark.parametrize("frame", [0, 1, 4, 5, 8])
def test_encoder_is_causal(tiny: WanVAE, causal_base: tuple[torch.Tensor, torch.Tensor], frame: int) -> None:
    """Changing pixel frame k changes the latent of its group and never an earlier latent."""
    video, z = causal_base
    changed = video.clone()
    changed[:, :, frame] = -changed[:, :, frame]
    with torch.no_grad():
        z_changed = tiny.encode(changed)
    group = 0 if frame == 0 else (frame - 1) // 4 + 1
    assert torch.equal(z[:, :, :group], z_changed[:, :, :group])
    assert (z[:, :, group] - z_changed[:, :, group]).abs().max() > 1e-3


def test_decoder_is_causal(tiny: WanVAE) -> None:
    z = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    changed = z.clone()
    changed[:, :, 1] += 1.0
    with torch.no_grad():
        video, video_changed = tiny.decode(z), tiny.decode(changed)
    assert torch.equal(video[:, :, :1], video_changed[:, :, :1])  # frame 0 comes from latent 0 only
    assert (video[:, :, 1:5] - video_changed[:, :, 1:5]).abs().max() > 1e-3
    later = z.clone()
    later[:, :, 2] += 1.0
    with torch.no_grad():
        assert torch.equal(tiny.decode(later)[:, :, :5], video[:, :, :5])  # frames <= 4 ignore latent 2


def test_chunked_streaming_equals_whole_sequence(tiny: WanVAE) -> None:
    video = rand_video(9, 16, 24)
    z = torch.randn(1, 16, 3, 2, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tiny.chunked = True
        enc_chunked, dec_cached = tiny.encode(video), tiny.decode(z)
        tiny.chunked = False
        enc_full, dec_full = tiny.encode(video), tiny.decode(z)
        tiny.chunked = True
    torch.testing.assert_close(enc_chunked, enc_full, rtol=0, atol=1e-5)
    torch.testing.assert_close(dec_cached, dec_full, rtol=0, atol=1e-5)
    assert enc_full.abs().max() > 0.1 and dec_full.abs().max() > 0.1


def test_normalisation_uses_the_official_constants_and_inverts(tiny: WanVAE) -> None:
    mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN21_LATENTS_STD).view(1, 16, 1, 1, 1)
    assert WAN21_LATENTS_MEAN[0] == -0.7571 and WAN21_LATENTS_STD[15] == 1.9160
    video = rand_video(5, 16, 16)
    with torch.no_grad():
        mu = tiny.encode_mean(video)
        z = tiny.encode(video)
        torch.testing.assert_close(z, (mu - mean) / std)
        torch.testing.assert_close(z * std + mean, mu)
        torch.testing.assert_close(tiny.decode(z), tiny.decode_raw(mu).clamp(-1, 1))
    assert not any("mean" in k or "std" in k for k in tiny.state_dict())


def test_bfloat16_model_is_close_to_float32(tiny: WanVAE) -> None:
    video = rand_video(5, 16, 16)
    bf16 = WanVAE(dim=8).to(torch.bfloat16).eval()
    bf16.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        z32, z16 = tiny.encode(video), bf16.encode(video)
        v16 = bf16.decode(z32)
    assert z16.dtype == torch.float32 and v16.dtype == torch.float32
    assert (z16 - z32).abs().max() < 0.05 * z32.abs().max()
    assert (v16 - tiny.decode(z32)).abs().max() < 0.1


# ------------------------------------------------------------------ tiling


def test_tile_starts_and_ramps_partition_unity() -> None:
    assert tile_starts(10, 4, 1) == [0, 3, 6]
    assert tile_starts(12, 6, 2) == [0, 4, 6]
    assert tile_starts(5, 8, 2) == [0]
    left, right = ramp(6, 2, left=False, right=True), ramp(6, 2, left=True, right=False)
    torch.testing.assert_close(left, torch.tensor([1, 1, 1, 1, 0.75, 0.25]))
    torch.testing.assert_close(left[-2:] + right[:2], torch.ones(2))


def test_tiling_is_exact_for_a_local_map() -> None:
    """The tiling/blending machinery reproduces any map whose receptive field fits inside one tile cell."""
    x = torch.randn(1, 3, 5, 40, 56, generator=torch.Generator().manual_seed(3))

    def pool(v: torch.Tensor) -> torch.Tensor:  # [B, 3, N, H, W] -> [B, 3, N, H/8, W/8]
        return torch.nn.functional.avg_pool3d(v, (1, 8, 8))

    def unpool(v: torch.Tensor) -> torch.Tensor:
        return v.repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)

    torch.testing.assert_close(run_tiled(pool, x, 16, 8, 1, 8), pool(x))
    lat = pool(x)
    torch.testing.assert_close(run_tiled(unpool, lat, 2, 1, 8, 1), unpool(lat))


def test_tiled_encode_decode_close_to_untiled(tiny: WanVAE) -> None:
    """Measured (random tiny weights, 32x48 frame): 24 px tiles with 8 px overlap give a mean abs latent difference
    of 0.090 latent std and 0.139 on decoded pixels (whose own mean abs is 0.17); 40 px tiles with 16 px overlap
    0.029 and 0.067. Tiling is not exact: the decoder's receptive field reaches past the overlap, so each tile sees
    less context at its seams; larger tiles and overlaps shrink the error (tested). Exact when one tile covers all."""
    torch.manual_seed(4)
    video = torch.nn.functional.interpolate(
        torch.rand(1, 3, 5, 8, 12) * 2 - 1, size=(5, 32, 48), mode="trilinear"
    )
    with torch.no_grad():
        z = tiny.encode(video)
        decoded = tiny.decode(z)
        tiny.tile = TileConfig(size=24, overlap=8)
        z_tiled = tiny.encode(video)
        decoded_tiled = tiny.decode(z)
        tiny.tile = TileConfig(size=48, overlap=16)
        z_one_tile = tiny.encode(video)
        tiny.tile = None
    assert torch.equal(z_one_tile, z)
    assert z_tiled.shape == z.shape and decoded_tiled.shape == decoded.shape
    assert (z_tiled - z).abs().mean() < 0.11 * z.std()
    assert (decoded_tiled - decoded).abs().mean() < 0.16
    with torch.no_grad():
        tiny.tile = TileConfig(size=40, overlap=16)
        z_large, decoded_large = tiny.encode(video), tiny.decode(z)
        tiny.tile = None
    assert (z_large - z).abs().mean() < 0.5 * (z_tiled - z).abs().mean()
    assert (decoded_large - decoded).abs().mean() < 0.6 * (decoded_tiled - decoded).abs().mean()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 5, 30, 32), "multiple of 8"),
        ((1, 3, 6, 32, 32), "4k\\+1"),
        ((1, 4, 5, 32, 32), "3 RGB channels"),
        ((3, 5, 32, 32), "\\[B, 3, N, H, W\\]"),
    ],
)
def test_bad_video_shapes_raise_value_error(tiny: WanVAE, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny.encode(torch.zeros(shape))


def test_bad_inputs_name_the_problem(tiny: WanVAE) -> None:
    with pytest.raises(ValueError, match="uint8"):
        tiny.encode(torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="pixels in \\[-1, 1\\], got values up to 255.0"):
        tiny.encode(torch.full((1, 3, 1, 16, 16), 255.0))
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny.encode(torch.zeros(1, 3, 5, 36, 32))
    with pytest.raises(ValueError, match="latents \\[B, 16, T, h, w\\]"):
        tiny.decode(torch.zeros(1, 4, 2, 4, 4))
    with pytest.raises(ValueError, match="tile size"):
        WanVAE(dim=8, tile=TileConfig(size=30, overlap=8))
    with pytest.raises(ValueError, match="temporal_downsample"):
        WanVAE(dim=8, temporal_downsample=(True,))
