"""A partial full fine-tune (`trainable=[patterns]`): only the matching parameters move, through train.py."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from scail_lab.model.dit import SCAILDiT
from scail_lab.training.module import as_patterns, train_only, trainable_names
from tests.conftest import tiny_config
from tests.test_training import config
from train import train


def test_patterns_select_exactly_the_matching_parameters():
    model = SCAILDiT(tiny_config(freq_dim=64))
    names = trainable_names(model, ["patch_embedding.*", "blocks.1.ffn.*"])
    assert names == ["patch_embedding.weight", "patch_embedding.bias", "blocks.1.ffn.0.weight", "blocks.1.ffn.0.bias",
                     "blocks.1.ffn.2.weight", "blocks.1.ffn.2.bias"]  # fmt: skip
    count = train_only(model, ["patch_embedding.*", "blocks.1.ffn.*"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)
    assert count == sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert as_patterns("blocks.0.*") == ("blocks.0.*",) and as_patterns(None) == () and as_patterns(["a", "b"]) == ("a", "b")


def test_a_pattern_that_matches_nothing_is_named():
    model = SCAILDiT(tiny_config(freq_dim=64))
    with pytest.raises(ValueError, match="'patch_embeding.\\*' matches no parameter"):
        train_only(model, ["patch_embedding.*", "patch_embeding.*"])
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen on the way to the error


def test_train_moves_only_the_selected_parameters(tmp_path):
    start = tmp_path / "start"
    train(config(start, "trainer.max_steps=3", "optimizer.total_steps=3"))
    base = load_file(str(start / "export" / "denoiser.safetensors"))
    run = tmp_path / "run"
    train(config(run, f"weights={start / 'export' / 'denoiser.safetensors'}", "trainer.max_steps=3",
                 "optimizer.total_steps=3", "trainable=[patch_embedding.*,head.*]"))  # fmt: skip
    tuned = load_file(str(run / "export" / "denoiser.safetensors"))
    assert tuned.keys() == base.keys()  # the export stays a whole denoiser (loads strictly for sampling)
    moved = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert moved == {"patch_embedding.weight", "patch_embedding.bias", "head.head.weight", "head.head.bias",
                     "head.modulation"}  # fmt: skip
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"]) == 5


@pytest.mark.parametrize(
    "override,message",
    [("trainable=[no_such.*]", "'no_such.\\*' matches no parameter"),
     ("trainable=[blocks.0.*] lora.enabled=true", "lora.target_modules")],
)
def test_bad_trainable_settings_fail_before_training(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(config(tmp_path, *override.split()))
    assert not (tmp_path / "checkpoints").exists()
