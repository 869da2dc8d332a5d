"""CUDA paths that CI (CPU only) cannot run: `pytest -m gpu` on a machine with a GPU.

Block offload streams weights host -> device with prefetch on a side stream; bf16-mixed training; flash-attention
parity with SDPA; sequence parallelism over NCCL. Each test skips without the hardware or package it needs.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from scail_lab.model.dit import SCAILDiT
from tests.conftest import make_inputs, randomize_, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_block_offload_on_cuda_matches_the_resident_model_and_keeps_blocks_on_the_host():
    from scail_lab.model.offload import BlockOffload

    model = randomize_(SCAILDiT(tiny_config(num_layers=4)), seed=3, std=0.05).eval()
    inputs = make_inputs(batch=2, frames=3, height=8, width=8).to("cuda")
    with torch.no_grad():
        expected = model.to("cuda")(inputs)
    model.to("cpu")
    offload = BlockOffload(model, "cuda", 3)
    with torch.no_grad():
        out = model(inputs)
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for i in offload.indices:  # the offloaded blocks' weights live in pinned host memory again
        assert all(p.device.type == "cpu" and p.is_pinned() for p in model.blocks[i].parameters())
    assert all(p.device.type == "cuda" for p in model.blocks[0].parameters())
    assert offload.stats["copies"] == 3 and offload.stats["max_loaded"] == 2


def test_flash_attention_matches_sdpa():
    if importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    from scail_lab.model.attention import attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 64, 4, 32, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "flash"), attention(q, k, v, "sdpa"), rtol=2e-2, atol=2e-2)


def test_bf16_mixed_training_on_one_gpu(tmp_path):
    from tests.test_training import config, losses
    from train import train

    train(config(tmp_path, "trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed",
                 "trainer.max_steps=4"))  # fmt: skip
    history = losses(tmp_path)
    assert sorted(history) == [0, 1, 2, 3] and all(0 < v < float("inf") for v in history.values())


def test_fsdp_on_one_gpu_trains_and_exports_the_whole_denoiser(tmp_path):
    """FSDP (one unit per block) cannot run on CPU; on a GPU its export must hold the whole trained weights."""
    from safetensors.torch import load_file

    from tests.test_training import config, losses
    from train import train

    train(config(tmp_path, "trainer.accelerator=gpu", "trainer.devices=1", "strategy=fsdp", "trainer.max_steps=3"))
    assert sorted(losses(tmp_path)) == [0, 1, 2]
    exported = load_file(str(tmp_path / "export" / "denoiser.safetensors"))
    reference = SCAILDiT(tiny_config(freq_dim=64)).state_dict()
    assert set(exported) == set(reference)
    assert all(exported[k].shape == v.shape for k, v in reference.items())
