"""Our LoRA exports read by a real consumer: diffusers loads and fuses each style into its Wan transformer, and
every weight change equals the one our own `merge_lora` applies (alpha != rank, so a lost alpha shows)."""

from __future__ import annotations

import pytest
import torch

from scail_lab.model.dit import SCAILDiT
from scail_lab.model.lora import EXPORT_STYLES, export_lora, merge_lora
from scail_lab.training.lora import DEFAULT_TARGETS
from tests.conftest import tiny_config

diffusers = pytest.importorskip("diffusers")

# our module name -> diffusers' WanTransformer3DModel module name, inside blocks.{i}
OURS_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}  # fmt: skip


def diffusers_pipeline(cfg) -> diffusers.WanImageToVideoPipeline:
    """A diffusers I2V pipeline around a tiny Wan transformer with our block sizes (no other components)."""
    transformer = diffusers.WanTransformer3DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.dim // cfg.num_heads, in_channels=36,
        text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
        image_dim=cfg.clip_dim, added_kv_proj_dim=cfg.dim,
    )  # fmt: skip
    return diffusers.WanImageToVideoPipeline(tokenizer=None, text_encoder=None, image_encoder=None,
                                             image_processor=None, transformer=transformer, vae=None, scheduler=None)  # fmt: skip


@pytest.mark.parametrize("style", EXPORT_STYLES)
def test_diffusers_fuses_our_export_with_its_alpha(style, tmp_path):
    cfg = tiny_config()
    ours = SCAILDiT(cfg)
    rank, alpha = 4, 8.0  # scale alpha / rank = 2: a reader that drops alpha applies half the change
    g = torch.Generator().manual_seed(0)
    adapters = {}
    for i in range(cfg.num_layers):
        for target in DEFAULT_TARGETS:
            weight = ours.get_submodule(f"blocks.{i}.{target}").weight
            adapters[f"blocks.{i}.{target}"] = (0.1 * torch.randn(rank, weight.shape[1], generator=g),
                                                0.1 * torch.randn(weight.shape[0], rank, generator=g))  # fmt: skip
    path = tmp_path / f"lora_{style}.safetensors"
    export_lora(adapters, alpha=alpha, path=path, style=style)

    before = {k: v.clone() for k, v in ours.state_dict().items()}
    assert merge_lora(ours, path) == len(adapters)
    pipe = diffusers_pipeline(cfg)
    transformer = pipe.transformer
    reference = {k: v.clone() for k, v in transformer.state_dict().items()}
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=1.0)
    fused = transformer.state_dict()
    for name, (down, up) in adapters.items():
        i, target = name.split(".", 2)[1], name.split(".", 2)[2]
        theirs = fused[f"blocks.{i}.{OURS_TO_DIFFUSERS[target]}.base_layer.weight"] if (
            f"blocks.{i}.{OURS_TO_DIFFUSERS[target]}.base_layer.weight" in fused
        ) else fused[f"blocks.{i}.{OURS_TO_DIFFUSERS[target]}.weight"]
        their_delta = theirs - reference[f"blocks.{i}.{OURS_TO_DIFFUSERS[target]}.weight"]
        our_delta = ours.state_dict()[f"{name}.weight"] - before[f"{name}.weight"]
        torch.testing.assert_close(our_delta, (alpha / rank) * up @ down, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(their_delta, our_delta, rtol=1e-5, atol=1e-6)
