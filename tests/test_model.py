"""The denoiser: official layout, parity with a float64 re-statement of the released forward, ablation axes."""

from __future__ import annotations

import ast
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch

from scail_lab.model.dit import DEFAULT_MODES, DiTConfig, SCAILDiT
from scail_lab.model.interfaces import ChannelConcatInterface, InContextInterface
from scail_lab.model.masks import BinaryMaskScheme, ColourMaskScheme, NoMaskScheme
from scail_lab.model.rope import MidpointRoPE, ScailRoPE, SharedRoPE
from tests.conftest import make_inputs, randomize_, tiny_config
from tests.official_reference import reference_forward

INTERFACES = {
    "scail2": lambda: InContextInterface("scail2", True, True),
    "scail1": lambda: InContextInterface("scail1", False, False),
    "channel_concat": lambda: ChannelConcatInterface(),
}
ROPES = {"scail2": ScailRoPE, "midpoint": MidpointRoPE, "shared": SharedRoPE}
MASKS = {"color28": ColourMaskScheme, "binary4": BinaryMaskScheme, "none": NoMaskScheme}


def official_key_shapes(dim, ffn, layers, in_dim=20, mask_dim=28, text_dim=4096, freq=256, clip=1280, out=16):
    """The released SCAIL-2 state dict layout, listed by hand (SCAIL_SPEC.md s.1 and s.6)."""
    shapes = {
        "patch_embedding.weight": (dim, in_dim, 1, 2, 2),
        "patch_embedding.bias": (dim,),
        "patch_embedding_pose.weight": (dim, in_dim, 1, 2, 2),
        "patch_embedding_pose.bias": (dim,),
        "patch_embedding_mask.weight": (dim, mask_dim, 1, 2, 2),
        "patch_embedding_mask.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
        "head.modulation": (1, 2, dim),
        "head.head.weight": (4 * out, dim),
        "head.head.bias": (4 * out,),
        "img_emb.proj.0.weight": (clip,),
        "img_emb.proj.0.bias": (clip,),
        "img_emb.proj.1.weight": (clip, clip),
        "img_emb.proj.1.bias": (clip,),
        "img_emb.proj.3.weight": (dim, clip),
        "img_emb.proj.3.bias": (dim,),
        "img_emb.proj.4.weight": (dim,),
        "img_emb.proj.4.bias": (dim,),
    }
    for i in range(layers):
        p = f"blocks.{i}."
        shapes[p + "modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                shapes[f"{p}{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{p}{attn}.{proj}.bias"] = (dim,)
            shapes[f"{p}{attn}.norm_q.weight"] = (dim,)
            shapes[f"{p}{attn}.norm_k.weight"] = (dim,)
        for proj in ("k_img", "v_img"):
            shapes[f"{p}cross_attn.{proj}.weight"] = (dim, dim)
            shapes[f"{p}cross_attn.{proj}.bias"] = (dim,)
        shapes[p + "cross_attn.norm_k_img.weight"] = (dim,)
        shapes[p + "norm3.weight"] = (dim,)
        shapes[p + "norm3.bias"] = (dim,)
        shapes[p + "ffn.0.weight"] = (ffn, dim)
        shapes[p + "ffn.0.bias"] = (ffn,)
        shapes[p + "ffn.2.weight"] = (dim, ffn)
        shapes[p + "ffn.2.bias"] = (dim,)
    return shapes


def test_14b_layout_is_the_official_one():
    with torch.device("meta"):
        model = SCAILDiT(DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = official_key_shapes(5120, 13824, 40)
    assert len(official) == 1307
    assert ours == official
    assert sum(v.numel() for v in model.state_dict().values()) == 16_395_544_384


def test_strict_load_of_an_official_layout_state_dict():
    cfg = tiny_config(text_dim=32, clip_dim=24, freq_dim=64)
    shapes = official_key_shapes(64, 128, 2, text_dim=32, freq=64, clip=24)
    g = torch.Generator().manual_seed(1)
    official = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    model = SCAILDiT(cfg)
    model.load_state_dict(official, strict=True)
    assert torch.equal(model.blocks[1].cross_attn.v_img.weight, official["blocks.1.cross_attn.v_img.weight"])
    assert torch.equal(model.patch_embedding_mask.bias, official["patch_embedding_mask.bias"])


@pytest.mark.parametrize("case", ["animate", "replace", "extra_refs_history"])
def test_parity_with_float64_restatement_of_the_released_forward(case):
    cfg = tiny_config()
    model = randomize_(SCAILDiT(cfg).double(), seed=3, std=0.05)
    mode = "replace" if case == "replace" else "animate"
    extra = 2 if case == "extra_refs_history" else 0
    inputs = make_inputs(batch=2, frames=3, height=8, width=8, num_extra=extra, history=extra > 0, mode=mode)
    inputs = inputs.to(dtype=torch.float64)
    ours = model(inputs)
    ref = reference_forward(
        model.state_dict(),
        heads=cfg.num_heads,
        text_len=cfg.text_len,
        x=inputs.latents,
        t=inputs.timestep,
        context=inputs.text_emb,
        clip_fea=inputs.clip_emb,
        ref_latents=inputs.ref_latents,
        ref_mask=inputs.ref_mask,
        pose_latents=inputs.pose_latents,
        driving_mask=inputs.driving_mask,
        history_mask=inputs.history_mask,
        replace=mode == "replace",
        extra_latents=inputs.extra_ref_latents,
        extra_masks=inputs.extra_ref_masks,
    )
    assert ref.abs().mean() > 0.1  # a non-trivial output
    assert (ours.double() - ref).abs().max().item() < 1e-5  # ours applies RoPE in fp32 by design


@pytest.mark.parametrize(
    "interface,rope,mask,mode",
    list(itertools.product(INTERFACES, ROPES, MASKS, ["animate", "replace"])),
)
def test_shapes_for_every_ablation_combination(interface, rope, mask, mode):
    with (
        pytest.warns(UserWarning, match="no effect")
        if (interface == "scail1" and mask != "none")
        else _nullcontext()
    ):
        model = SCAILDiT(tiny_config(), INTERFACES[interface](), ROPES[rope](), MASKS[mask]())
    width = model.mask_width
    extra = 0 if interface == "scail1" else 1
    inputs = make_inputs(batch=2, frames=2, height=4, width=8, mask_width=width, num_extra=extra, mode=mode)
    out = model(inputs)
    assert out.shape == (2, 16, 2, 4, 8) and out.dtype == torch.float32
    expected_in = {"scail2": 20, "scail1": 20, "channel_concat": 36 + width}[interface]
    assert model.patch_embedding.in_channels == expected_in
    assert hasattr(model, "patch_embedding_mask") == (interface == "scail2" and width > 0)
    assert hasattr(model, "patch_embedding_pose") == (interface != "channel_concat")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_batch_of_two_equals_two_batches_of_one():
    model = randomize_(SCAILDiT(tiny_config()), seed=5)
    inputs = make_inputs(batch=2, num_extra=1, history=True, mode=("animate", "replace"))
    both = model(inputs)
    single = torch.cat([model(inputs.select(0)), model(inputs.select(1))])
    assert (both - single).abs().max().item() < 1e-5
    assert (both[0] - both[1]).abs().max().item() > 1e-2


def test_animate_and_replace_outputs_differ_only_through_rope():
    model = randomize_(SCAILDiT(tiny_config()), seed=6)
    inputs = make_inputs(batch=1)
    a, r = model(inputs), model(inputs.replace(mode="replace"))
    assert (a - r).abs().max().item() > 1e-3
    shared = randomize_(SCAILDiT(tiny_config(), rope=SharedRoPE()), seed=6)
    assert torch.equal(shared(inputs), shared(inputs.replace(mode="replace")))


def test_only_video_tokens_reach_the_output_and_mask_codes_matter():
    model = randomize_(SCAILDiT(tiny_config()), seed=7)
    inputs = make_inputs(batch=1)
    base = model(inputs)
    _, _, t, h, w = inputs.latents.shape
    ref, video = h * w // 4, t * h * w // 4  # [ref | video | pose] tokens of a 2x2 patch

    def poison(module, args, out):  # after the last block, every token outside the video slice becomes NaN
        out = out.clone()
        out[:, :ref] = float("nan")
        out[:, ref + video :] = float("nan")
        return out

    handle = model.blocks[-1].register_forward_hook(poison)
    try:
        poisoned = model(inputs)
    finally:
        handle.remove()
    assert torch.equal(poisoned, base)  # no NaN arrives: the ref and pose tokens' outputs are dropped
    changed = model(inputs.replace(driving_mask=torch.zeros_like(inputs.driving_mask)))
    assert (base - changed).abs().max().item() > 1e-3
    assert base.shape == inputs.latents.shape


def test_gradient_checkpointing_gives_identical_gradients():
    inputs = make_inputs(batch=1)
    grads = []
    for ckpt in (False, True):
        model = randomize_(SCAILDiT(tiny_config(), gradient_checkpointing=ckpt), seed=8)
        model(inputs).square().mean().backward()
        grads.append(model.blocks[0].self_attn.q.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    model = randomize_(SCAILDiT(tiny_config()), seed=9)
    inputs = make_inputs(batch=1)
    full = model(inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(inputs)
    assert half.dtype == torch.float32
    rel = (half - full).norm() / full.norm()
    assert rel.item() < 0.05


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda i: i.replace(latents=i.latents[:, :, :, :6]), "multiples of 4"),
        (lambda i: i.replace(latents=i.latents[:, :8]), "latents must be"),
        (lambda i: i.replace(pose_latents=i.pose_latents[:, :, :, :3]), "pose_latents"),
        (lambda i: i.replace(ref_mask=None), "ref_mask"),
        (lambda i: i.replace(driving_mask=None), "driving_mask"),
        (lambda i: i.replace(extra_ref_masks=None), "without extra_ref_masks"),
        (lambda i: i.replace(extra_ref_latents=None), "without extra_ref_latents"),
        (lambda i: i.replace(text_emb=torch.zeros(2, 17, 32)), "text_emb"),
        (lambda i: i.replace(clip_emb=None), "clip_emb"),
        (lambda i: i.replace(timestep=torch.zeros(3)), "timestep"),
        (lambda i: i.replace(mode="dance"), "mode must be one of"),
        (lambda i: i.replace(history_mask=torch.zeros(2, 4, 2, 8, 8)), "history_mask"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_value(change, message):
    model = SCAILDiT(tiny_config())
    inputs = make_inputs(batch=2, num_extra=1)
    with pytest.raises(ValueError, match=message):
        model(change(inputs))


def test_scail1_rejects_extra_refs_and_flash_backend_needs_flash_attn():
    with pytest.raises(ValueError, match="extra reference"):
        SCAILDiT(tiny_config(), InContextInterface("scail1", False, False), mask_scheme=NoMaskScheme())(
            make_inputs(mask_width=0, num_extra=1)
        )
    if not any(importlib.util.find_spec(m) for m in ("flash_attn", "flash_attn_interface")):
        with pytest.raises(ValueError, match="flash_attn"):
            SCAILDiT(tiny_config(), attention_backend="flash")
    with pytest.raises(ValueError, match="attention backend"):
        SCAILDiT(tiny_config(), attention_backend="xformers")
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(dim=65, num_heads=4)


def test_default_modes_are_the_released_offsets():
    assert DEFAULT_MODES["animate"].video == (1, 0, 0) and DEFAULT_MODES["animate"].pose == (1, 0, 120)
    assert DEFAULT_MODES["replace"].ref == (0, 120, 0) and DEFAULT_MODES["replace"].video == (0, 0, 0)


def test_model_code_imports_no_training_or_config_framework():
    banned = {"lightning", "pytorch_lightning", "hydra", "omegaconf", "deepspeed", "wandb"}
    root = Path(__file__).resolve().parents[1] / "scail_lab"
    files = list((root / "model").rglob("*.py")) + [root / "types.py"]
    assert len(files) >= 6
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_compile_falls_back_to_eager_with_a_warning_when_the_backend_fails(caplog):
    """model.compile=true on a setup whose backend cannot compile: a warning naming the failure, then eager
    outputs, equal to the uncompiled model's."""
    import torch._dynamo

    from scail_lab.model.compile import compile_blocks

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    torch._dynamo.reset()
    eager = randomize_(SCAILDiT(tiny_config()), seed=3)
    model = randomize_(SCAILDiT(tiny_config()), seed=3)
    assert compile_blocks(model, backend=broken_backend) == 2
    inputs = make_inputs(batch=1)
    with caplog.at_level("WARNING", logger="scail_lab.model.compile"):
        out = model(inputs)
    assert "torch.compile (backend" in caplog.text and "no C++ compiler here" in caplog.text
    assert model.compile_state["failed"] is not None
    assert torch.equal(out, eager(inputs))


@pytest.mark.slow
def test_compiled_blocks_match_eager_on_cpu():
    """Inductor on this CPU (gcc): the compiled model gives the eager outputs to float tolerance."""
    import torch._dynamo

    torch._dynamo.reset()
    eager = randomize_(SCAILDiT(tiny_config()), seed=3)
    compiled = randomize_(SCAILDiT(tiny_config(), compile=True), seed=3)
    inputs = make_inputs(batch=1)
    with torch.no_grad():
        out = compiled(inputs)
    assert compiled.compile_state["failed"] is None
    torch.testing.assert_close(out, eager(inputs).detach(), rtol=1e-4, atol=1e-4)


def test_matmul_attention_matches_sdpa_and_auto_picks_it_for_short_keys_on_a_cpu():
    """`matmul` (two batched matmuls, fp32 softmax) is the same function as SDPA: 1e-6 in fp32, and under bf16 autocast
    as close to the fp32 result as SDPA's own bf16 kernel; gradients agree too. `auto` takes it for bf16 inputs up to
    AUTO_MATMUL_KEYS keys on a CPU, SDPA for fp32 and beyond."""
    from scail_lab.model import attention as attn

    g = torch.Generator().manual_seed(0)
    for keys in (16, 300):
        q, k, v = (torch.randn(2, n, 4, 48, generator=g, requires_grad=True) for n in (70, keys, keys))
        ref = attn.attention(q, k, v, "sdpa")
        out = attn.attention(q, k, v, "matmul")
        assert out.shape == ref.shape == (2, 70, 4, 48)
        assert (out - ref).abs().max().item() < 1e-6
        grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
        for a, b in zip(torch.autograd.grad(out.square().sum(), (q, k, v)), grads, strict=True):
            assert (a - b).abs().max().item() < 1e-5 * b.abs().max().item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = {name: attn.attention(q, k, v, name).float() for name in ("sdpa", "matmul")}
        errors = {name: (x - ref).abs().max().item() / ref.abs().max().item() for name, x in low.items()}
        assert errors["matmul"] < max(2 * errors["sdpa"], 1e-2), errors
        assert torch.equal(attn.attention(q, k, v, "auto"), ref)  # fp32: the fused kernel
        b16 = [x.detach().bfloat16() for x in (q, k, v)]
        assert torch.equal(attn.attention(*b16, "auto"), attn.attention(*b16, "matmul"))  # bf16, short keys
    long_keys = torch.randn(1, attn.AUTO_MATMUL_KEYS + 1, 2, 8, generator=g).bfloat16()
    assert torch.equal(attn.attention(long_keys[:, :5], long_keys, long_keys, "auto"),
                       attn.attention(long_keys[:, :5], long_keys, long_keys, "sdpa"))  # fmt: skip
    assert SCAILDiT(tiny_config(), attention_backend="auto").attention_backend == "auto"


def test_channel_concat_from_in_context_keeps_every_shared_tensor_and_the_reference_tokens():
    from types import SimpleNamespace

    from scail_lab.model.interfaces import channel_concat_from_in_context

    source = randomize_(SCAILDiT(tiny_config(), InContextInterface("scail2", True, True, pose_downsample=1)), seed=8)
    target = SCAILDiT(tiny_config(), ChannelConcatInterface(pose_downsample=1))
    state = channel_concat_from_in_context(source.state_dict(), latent_dim=16)
    target.load_state_dict(state, strict=True)  # every key and shape of the channel-concat model
    src = source.state_dict()
    shared = [k for k in src if not k.startswith("patch_embedding")]
    assert shared and all(torch.equal(target.state_dict()[k], src[k]) for k in shared)
    weight = target.patch_embedding.weight
    assert weight.shape[1] == 16 + 4 + 16 + 28
    assert torch.equal(weight[:, :20], src["patch_embedding.weight"])
    assert torch.equal(weight[:, 20:36], src["patch_embedding_pose.weight"][:, :16])  # the default: the pose conv
    assert torch.equal(weight[:, 36:], src["patch_embedding_mask.weight"])
    zero = channel_concat_from_in_context(src, latent_dim=16, driving_init="zero")["patch_embedding.weight"]
    assert torch.count_nonzero(zero[:, 20:36]) == 0  # no pose until trained
    assert torch.equal(zero[:, :20], weight[:, :20]) and torch.equal(zero[:, 36:], weight[:, 36:])
    with pytest.raises(ValueError, match="driving_init"):
        channel_concat_from_in_context(src, latent_dim=16, driving_init="random")
    # reference tokens: exactly the in-context embedding of the reference plus its mask code
    inputs = make_inputs(batch=1, frames=2, height=4, width=8)
    embed = {m: m.interface.embed(SimpleNamespace(**{n: getattr(m, n) for n in m._interface_modules}), inputs, 28)
             for m in (source, target)}  # fmt: skip
    ref = 4 * 8 // 4
    # the same sums in another order (the channel-concat conv also adds the driving block's zeros): float32 rounding,
    # which reaches 3e-6 on CPUs whose GEMM kernels block the 64 input channels differently (AMX hosts)
    torch.testing.assert_close(embed[target][0][:, :ref], embed[source][0][:, :ref], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="patch_embedding_pose"):
        channel_concat_from_in_context(state, latent_dim=16)
    with pytest.raises(ValueError, match="input channels"):
        channel_concat_from_in_context(src, latent_dim=8)
