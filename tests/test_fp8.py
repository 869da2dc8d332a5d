"""fp8 weight storage: block Linear weights as float8 e4m3 with per-channel scales, everything else as stored;
on-the-fly conversion from full-precision files, fp8 files from the converter, the 14B's weight bytes."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from scail_lab.build import build_model
from scail_lab.checkpoints.convert import convert_checkpoint, verify_conversion
from scail_lab.checkpoints.synthetic import write_denoiser_checkpoint
from scail_lab.model.dit import DiTConfig, SCAILDiT
from scail_lab.model.fp8 import Float8Linear, quantize, quantize_model, weight_bytes
from tests.conftest import CONFIGS, make_inputs, randomize_, tiny_config


def cfg_with(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("sample", overrides=["model=tiny", "interface=scail2", "weights=null", *overrides])


@pytest.mark.parametrize("scale", ["channel", "tensor"])
def test_quantization_error_is_e4m3_rounding(scale):
    """Relative error of each element within e4m3's half step (2^-4) of its magnitude, above the subnormal range;
    per-channel scales keep small rows as exact as large ones."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 128, generator=g) * torch.logspace(-5, 0, 64).unsqueeze(1)  # rows 1e5 apart
    q, s = quantize(weight, scale)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    back = q.float() * (s[:, None] if scale == "channel" else s)
    rel = (back - weight).abs() / weight.abs().clamp_min(1e-12)
    reach = weight.abs().amax(dim=1, keepdim=True) if scale == "channel" else weight.abs().amax()
    big = weight.abs() > 0.02 * reach  # clear of fp8's subnormals under this scale
    assert rel[big].max() <= 2**-4 + 1e-6
    small_rows = (back - weight)[:8].norm() / weight[:8].norm()
    if scale == "channel":
        assert small_rows < 0.05
    else:
        assert small_rows > 0.1  # one scale for all rows: the small rows fall into fp8's subnormals


def test_fp8_model_keeps_names_adds_scales_and_stays_close():
    model = randomize_(SCAILDiT(tiny_config()), seed=1, std=0.05).eval()
    inputs = make_inputs(batch=1)
    with torch.no_grad():
        reference = model(inputs)
    plain_keys = set(model.state_dict())
    assert quantize_model(model) == 2 * 12  # q, k, v, o (self), q, k, v, o, k_img, v_img (cross), ffn.0, ffn.2
    assert isinstance(model.blocks[0].self_attn.q, Float8Linear) and isinstance(model.head.head, torch.nn.Linear)
    keys = set(model.state_dict())
    assert plain_keys <= keys and {k for k in keys - plain_keys} == {
        f"blocks.{i}.{m}.weight_scale" for i in range(2) for m in
        ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k", "cross_attn.v",
         "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2")}  # fmt: skip
    with torch.no_grad():
        out = model(inputs)
    rel = ((out - reference).norm() / reference.norm()).item()
    assert 1e-4 < rel < 0.05, rel  # fp8 rounding, not zero and not broken


def test_fp8_loads_full_precision_files_on_the_fly_and_converted_fp8_files(tmp_path):
    source = randomize_(SCAILDiT(tiny_config()), seed=2, std=0.05)
    fp32 = write_denoiser_checkpoint(tmp_path / "src", source.state_dict(), "safetensors")
    on_the_fly = build_model(cfg_with(f"weights={fp32}", "weights_dtype=float8_e4m3fn"))
    assert on_the_fly.blocks[1].ffn[0].weight.dtype == torch.float8_e4m3fn
    assert on_the_fly.patch_embedding.weight.dtype == torch.float32  # the rest in fp32
    convert_checkpoint(fp32, tmp_path / "fp8", dtype="fp8", num_heads=4, progress=False)
    assert verify_conversion(fp32, tmp_path / "fp8", dtype="fp8") == len(on_the_fly.state_dict())
    converted = build_model(cfg_with(f"weights={tmp_path / 'fp8'}", "weights_dtype=float8_e4m3fn"))
    a, b = on_the_fly.state_dict(), converted.state_dict()
    assert set(a) == set(b)
    for key in a:
        if a[key].dtype == torch.float8_e4m3fn:
            assert torch.equal(a[key].view(torch.uint8), b[key].view(torch.uint8)), key
        else:
            torch.testing.assert_close(b[key], a[key], rtol=1e-2, atol=1e-3)  # the file's bf16 vs the fp32 source
    inputs = make_inputs(batch=1)
    with torch.no_grad():  # the same fp8 weights; the converter kept the rest in bf16
        a_out, b_out = on_the_fly(inputs), converted(inputs)
    assert ((a_out - b_out).norm() / a_out.norm()).item() < 0.02


def test_an_fp8_file_missing_a_scale_is_refused_naming_it(tmp_path):
    from safetensors.torch import load_file, save_file

    source = randomize_(SCAILDiT(tiny_config()), seed=2, std=0.05)
    fp32 = write_denoiser_checkpoint(tmp_path / "src", source.state_dict(), "safetensors")
    convert_checkpoint(fp32, tmp_path / "fp8", dtype="fp8", num_heads=4, progress=False, max_shard_bytes=1 << 40)
    (shard,) = sorted((tmp_path / "fp8").glob("*.safetensors"))
    state = load_file(str(shard))
    del state["blocks.1.ffn.2.weight_scale"]
    save_file(state, str(shard))
    index = tmp_path / "fp8" / "model.safetensors.index.json"
    if index.exists():
        index.unlink()
    with pytest.raises(ValueError, match=r"blocks\.1\.ffn\.2\.weight_scale"):
        build_model(cfg_with(f"weights={shard}", "weights_dtype=float8_e4m3fn"))


def test_the_14b_weights_fit_in_17_gb_in_fp8():
    """Counted on the meta device from the released layout: float8 block linears + their scales, the rest bf16."""
    with torch.device("meta"):
        model = SCAILDiT(DiTConfig())
    full = sum(p.numel() for p in model.parameters())
    assert full == 16_395_544_384
    with torch.device("meta"):
        quantize_model(model)
    for param in model.parameters():  # what a bf16 file converted to fp8 holds besides the linears
        if param.dtype == torch.float32:
            param.data = param.data.to(torch.bfloat16)
    fp8_bytes = weight_bytes(model)
    assert fp8_bytes < 17e9, fp8_bytes / 1e9
    assert fp8_bytes > 0.5 * full  # about one byte a weight
