"""CLIP visual tower: strict load of the official key layout, parity with a float64 reference, preprocessing."""

from __future__ import annotations

import math

import pytest
import torch

from scail_lab.encoders.clip import (
    CLIP_MEAN,
    CLIP_STD,
    VIT_H14,
    CLIPImageEncoder,
    ImageEncoder,
    VisionTransformer,
)
from scail_lab.encoders.light import build_light_image_encoder

SIZE, PATCH, DIM, HEADS, LAYERS, OUT = 28, 14, 16, 2, 3, 8
CLIP_NAME = "models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth"


def official_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official `...-onlyvisual.pth` key names (written out by hand, not from our module)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.2, mean=0.0):
        return mean + torch.randn(*shape, generator=g) * std

    tokens = 1 + (SIZE // PATCH) ** 2
    state = {
        "log_scale": torch.tensor(math.log(1 / 0.07)),
        "visual.patch_embedding.weight": rand(DIM, 3, PATCH, PATCH, std=0.05),
        "visual.cls_embedding": rand(1, 1, DIM),
        "visual.pos_embedding": rand(1, tokens, DIM),
        "visual.pre_norm.weight": rand(DIM, mean=1.0, std=0.1),
        "visual.pre_norm.bias": rand(DIM, std=0.1),
        "visual.post_norm.weight": rand(DIM, mean=1.0, std=0.1),
        "visual.post_norm.bias": rand(DIM, std=0.1),
        "visual.head": rand(DIM, OUT),
    }
    for i in range(LAYERS):
        p = f"visual.transformer.{i}."
        for norm in ("norm1", "norm2"):
            state[p + f"{norm}.weight"] = rand(DIM, mean=1.0, std=0.1)
            state[p + f"{norm}.bias"] = rand(DIM, std=0.1)
        state[p + "attn.to_qkv.weight"], state[p + "attn.to_qkv.bias"] = rand(3 * DIM, DIM), rand(3 * DIM)
        state[p + "attn.proj.weight"], state[p + "attn.proj.bias"] = rand(DIM, DIM), rand(DIM)
        state[p + "mlp.0.weight"], state[p + "mlp.0.bias"] = rand(4 * DIM, DIM), rand(4 * DIM)
        state[p + "mlp.2.weight"], state[p + "mlp.2.bias"] = rand(DIM, 4 * DIM), rand(DIM)
    return state


def bicubic_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] bicubic resampling (a = -0.75, half-pixel centres, edge clamp, no antialias)."""

    def kernel(x):
        x = abs(x)
        if x <= 1:
            return 1.25 * x**3 - 2.25 * x**2 + 1
        return -0.75 * x**3 + 3.75 * x**2 - 6 * x + 3 if x < 2 else 0.0

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * n_in / n_out - 0.5
        for tap in range(math.floor(centre) - 1, math.floor(centre) + 3):
            m[i, min(max(tap, 0), n_in - 1)] += kernel(centre - tap)
    return m


def exact_preprocess(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> bicubic squash to SIZE x SIZE -> CLIP mean/std, in float64."""
    x = images.double()
    x = bicubic_matrix(x.shape[2], SIZE) @ x @ bicubic_matrix(x.shape[3], SIZE).T
    mean, std = torch.tensor(CLIP_MEAN).double(), torch.tensor(CLIP_STD).double()
    return ((x * 0.5 + 0.5) - mean[:, None, None]) / std[:, None, None]


def reference_visual(state, images: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Wan's CLIPModel.visual in float64 from the official weights: [B, 3, H, W] in [-1, 1] -> [B, 1 + P, D]."""
    w = {k: v.double() for k, v in state.items()}
    x = exact_preprocess(images)
    b, grid = x.shape[0], SIZE // PATCH
    patches = x.reshape(b, 3, grid, PATCH, grid, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, -1)
    x = patches @ w["visual.patch_embedding.weight"].reshape(DIM, -1).T  # conv as a matmul, no bias
    x = torch.cat([w["visual.cls_embedding"].expand(b, 1, DIM), x], 1) + w["visual.pos_embedding"]

    def ln(h, name):
        mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        return (h - mu) / torch.sqrt(var + 1e-5) * w[name + ".weight"] + w[name + ".bias"]

    x = ln(x, "visual.pre_norm")
    hd = DIM // HEADS
    for i in range(num_blocks):
        p = f"visual.transformer.{i}."
        h = ln(x, p + "norm1")
        qkv = h @ w[p + "attn.to_qkv.weight"].T + w[p + "attn.to_qkv.bias"]
        q, k, v = (qkv[..., j * DIM : (j + 1) * DIM].reshape(b, -1, HEADS, hd) for j in range(3))
        attn = (torch.einsum("bqhc,bkhc->bhqk", q, k) / math.sqrt(hd)).softmax(-1)
        out = torch.einsum("bhqk,bkhc->bqhc", attn, v).reshape(b, -1, DIM)
        x = x + out @ w[p + "attn.proj.weight"].T + w[p + "attn.proj.bias"]
        h = ln(x, p + "norm2") @ w[p + "mlp.0.weight"].T + w[p + "mlp.0.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        x = x + h @ w[p + "mlp.2.weight"].T + w[p + "mlp.2.bias"]
    return x


def tiny_kwargs():
    return dict(image_size=SIZE, patch_size=PATCH, dim=DIM, out_dim=OUT, num_heads=HEADS, num_layers=LAYERS)


def test_penultimate_tokens_match_reference(tmp_path):
    state = official_clip_state(seed=1)
    path = tmp_path / CLIP_NAME
    torch.save(state, path)
    encoder = CLIPImageEncoder.from_wan_checkpoint(checkpoint_path=path, **tiny_kwargs())
    assert isinstance(encoder, ImageEncoder) and (encoder.num_tokens, encoder.out_dim) == (5, DIM)
    images = (
        torch.rand(2, 3, 40, 33, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )  # any size, squashed
    out = encoder(images)
    assert out.shape == (2, 5, DIM) and out.dtype == torch.float32
    reference = reference_visual(state, images, LAYERS - 1)
    torch.testing.assert_close(out.double(), reference, rtol=1e-4, atol=5e-5)  # fp32 rounding only
    exact = CLIPImageEncoder.from_wan_checkpoint(checkpoint_path=path, dtype="float64", **tiny_kwargs())
    pixels = exact_preprocess(images)
    torch.testing.assert_close(exact.visual(pixels, num_blocks=LAYERS - 1), reference, rtol=1e-10, atol=1e-10)
    full = CLIPImageEncoder(visual=encoder.visual, num_blocks=LAYERS)
    torch.testing.assert_close(
        full(images).double(), reference_visual(state, images, LAYERS), rtol=1e-4, atol=5e-5
    )
    assert (full(images) - out).abs().max() > 0.1  # the last block is really skipped
    torch.testing.assert_close(encoder.preprocess(images).double(), pixels, rtol=1e-5, atol=1e-5)


def test_full_wan_clip_file_loads_visual_only(tmp_path):
    state = official_clip_state(seed=2)
    state["textual.token_embedding.weight"] = torch.zeros(10, 4)  # Wan 2.1 ships the text tower too
    torch.save(state, tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    encoder = CLIPImageEncoder.from_checkpoint_dir(tmp_path, **tiny_kwargs())
    assert torch.equal(encoder.visual.transformer[2].mlp[2].bias, state["visual.transformer.2.mlp.2.bias"])


def test_strict_load_lists_problems(tmp_path):
    state = official_clip_state()
    del state["visual.transformer.1.attn.proj.bias"]
    state["visual.pos_embedding"] = torch.zeros(1, 9, DIM)
    path = tmp_path / CLIP_NAME
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"1 missing: transformer\.1\.attn\.proj\.bias; 1 mis-shaped: pos_embedding"
    ):
        CLIPImageEncoder.from_wan_checkpoint(checkpoint_path=path, **tiny_kwargs())
    encoder = build_light_image_encoder()
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\]"):
        encoder(torch.zeros(1, 4, 32, 32))


def test_preprocessing_maps_a_flat_image_to_clip_units():
    encoder = build_light_image_encoder(image_size=32, patch_size=8)
    pixels = encoder.preprocess(torch.full((1, 3, 50, 70), 0.2))
    expected = (0.6 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0, :, 5, 7], expected)


def test_vit_h14_geometry():
    with torch.device("meta"):
        visual = VisionTransformer(**VIT_H14)
    state = visual.state_dict()
    assert len(state) == 32 * 12 + 8  # + log_scale = the 393 keys of the onlyvisual file
    assert 1 + visual.num_patches == 257 and state["pos_embedding"].shape == (1, 257, 1280)
    # 632,076,800 fp32 parameters = 2,528,307,200 bytes: the released 2,528,485,611-byte file minus pickle overhead
    assert sum(t.numel() for t in state.values()) == 632_076_800


def test_light_image_encoder_is_seeded_frozen_and_offloadable():
    a = build_light_image_encoder(clip_dim=24, num_heads=3, seed=5)
    b = build_light_image_encoder(clip_dim=24, num_heads=3, seed=5)
    images = torch.rand(2, 3, 48, 64) * 2 - 1
    out = a(images)
    assert out.shape == (2, 1 + 16, 24)
    assert torch.equal(out, b(images))
    assert not torch.allclose(out, build_light_image_encoder(clip_dim=24, num_heads=3, seed=6)(images))
    assert not any(p.requires_grad for p in a.parameters())
    offloaded = CLIPImageEncoder(visual=a.visual, offload=True)
    assert torch.equal(offloaded(images), out)


def test_truncated_clip_file_is_reported(tmp_path):
    path = tmp_path / CLIP_NAME
    torch.save(official_clip_state(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated torch checkpoint"):
        CLIPImageEncoder.from_wan_checkpoint(checkpoint_path=path, **tiny_kwargs())
