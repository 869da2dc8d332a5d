"""strategy=fsdp2 (torch fully_shard per DiT block) on 2 gloo CPU processes: the same training as DDP, whole
exports and checkpoints, exact resume, LoRA, and sequence parallelism with the one-process loss curve."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from scail_lab.training.strategies import FSDP2Strategy, build_strategy
from tests.conftest import REPO
from tests.test_training import LOADER, base_weights, config, logged, losses  # noqa: F401 (fixture)
from train import train

COMMON = ["~data", f"+data._target_={LOADER}", "+data.kind=latent", "+data.num_batches=4", "~val_data",
          "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "optimizer.warmup_steps=1",
          "optimizer.lr=1e-3", "checkpointing.keep=-1"]  # fmt: skip


def run_two(out, *overrides, timeout: int = 600) -> None:
    """train.py on 2 gloo CPU processes (Lightning launches the second)."""
    cmd = [sys.executable, "train.py", f"+output_dir={out}", *COMMON, "trainer.devices=2", *overrides,
           f"hydra.run.dir={out}_hydra"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def assert_same_run(a, b, tol: float = 1e-6) -> None:
    """Same losses and gradient norms step by step, and the same exported weights."""
    for name in ("train/loss", "train/grad_norm"):
        x, y = logged(a, name), logged(b, name)
        assert sorted(x) == sorted(y) and len(x) >= 4, (name, x, y)
        for step, value in x.items():
            assert abs(value - y[step]) <= tol * abs(value), (name, step, value, y[step])
    for file in sorted(p.name for p in (a / "export").glob("*.safetensors")):
        u, v = load_file(str(a / "export" / file)), load_file(str(b / "export" / file))
        assert set(u) == set(v) and max((u[k] - v[k]).abs().max().item() for k in u) <= 1e-6, file


def test_fsdp2_trains_as_ddp_does_and_exports_and_checkpoints_whole_weights(tmp_path):
    """Two ranks, each its own noise (data-parallel semantics): FSDP2's reduce-scatter and gathers give DDP's losses,
    gradient norms and weights. The export (gathered one tensor at a time) equals, bit for bit, the whole state dict
    the checkpoint holds (gathered by torch's full-state-dict path)."""
    run_two(tmp_path / "ddp", "strategy=ddp", "trainer.max_steps=4", "checkpointing.every_n_steps=4")
    run_two(tmp_path / "fsdp2", "strategy=fsdp2", "trainer.max_steps=4", "checkpointing.every_n_steps=4")
    assert_same_run(tmp_path / "ddp", tmp_path / "fsdp2")
    ckpt = torch.load(tmp_path / "fsdp2" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    exported = load_file(str(tmp_path / "fsdp2" / "export" / "denoiser.safetensors"))
    assert set(exported) == set(state) and len(state) > 50
    for name, value in exported.items():
        assert value.shape == state[name].shape and torch.equal(value, state[name]), name
    assert ckpt["global_step"] == 4 and len(ckpt["optimizer_states"]) == 1


def test_fsdp2_resumes_exactly_from_its_whole_checkpoint(tmp_path):
    run_two(tmp_path / "straight", "strategy=fsdp2", "trainer.max_steps=6", "checkpointing.every_n_steps=3")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    ckpt = tmp_path / "straight" / "checkpoints" / "step0000003.ckpt"
    run_two(resumed, "strategy=fsdp2", "trainer.max_steps=6", "checkpointing.every_n_steps=3", f"resume={ckpt}")
    a, b = losses(tmp_path / "straight"), losses(resumed)
    assert sorted(b) == [3, 4, 5]
    for step in b:
        assert a[step] == b[step], (step, a[step], b[step])  # bit-exact continuation: weights, AdamW, RNG, data
    u = load_file(str(tmp_path / "straight" / "export" / "denoiser.safetensors"))
    v = load_file(str(resumed / "export" / "denoiser.safetensors"))
    assert all(torch.equal(u[k], v[k]) for k in u)


def test_fsdp2_lora_trains_the_adapters_as_ddp_does(tmp_path, base_weights):  # noqa: F811
    """Frozen base and trainable adapters inside one fully_shard unit; adapter-only checkpoints and exports."""
    lora = ["lora.enabled=true", "lora.rank=4", f"weights={base_weights}", "trainer.max_steps=4",
            "checkpointing.every_n_steps=4"]  # fmt: skip
    run_two(tmp_path / "ddp", "strategy=ddp", *lora)
    run_two(tmp_path / "fsdp2", "strategy=fsdp2", *lora)
    assert_same_run(tmp_path / "ddp", tmp_path / "fsdp2")
    ckpt = torch.load(tmp_path / "fsdp2" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    ups = [v for k, v in load_file(str(tmp_path / "fsdp2" / "export" / "lora_peft.safetensors")).items() if "lora_B" in k]
    assert ups and all(v.abs().max() > 0 for v in ups)


def test_fsdp2_with_bf16_compute_weights_and_cpu_offload_trains(tmp_path):
    run_two(tmp_path / "run", "strategy=fsdp2", "strategy.param_dtype=bfloat16", "trainer.precision=bf16-mixed",
            "strategy.offload_optimizer=true", "trainer.max_steps=3", "checkpointing.every_n_steps=3")  # fmt: skip
    values = losses(tmp_path / "run")
    assert sorted(values) == [0, 1, 2] and all(0.0 < v < 10.0 for v in values.values())
    exported = load_file(str(tmp_path / "run" / "export" / "denoiser.safetensors"))
    assert all(v.dtype == torch.float32 for v in exported.values())  # the fp32 master weights, not the bf16 casts
    assert any(v.abs().max() > 0 for k, v in exported.items() if k.startswith("head.head"))  # the zero head trained


def test_fsdp2_options_and_bad_values(tmp_path):
    strategy = build_strategy("fsdp2", "cpu", offload=True, fsdp2_param_dtype="bfloat16")
    assert isinstance(strategy, FSDP2Strategy) and strategy.offload and strategy.param_dtype == torch.bfloat16
    assert strategy.process_group_backend == "gloo"
    with pytest.raises(ValueError, match="param_dtype must be one of"):
        build_strategy("fsdp2", "cpu", fsdp2_param_dtype="int8")
    with pytest.raises(ValueError, match="set trainer.precision=bf16-mixed"):
        train(config(tmp_path, "strategy=fsdp2", "strategy.param_dtype=bfloat16"))
    assert not (tmp_path / "checkpoints").exists()


def test_ema_under_fsdp2_is_refused_before_any_model_is_built(tmp_path, monkeypatch):
    import train as train_module

    monkeypatch.setattr(train_module, "build_model", lambda cfg: pytest.fail("the model was built"))
    with pytest.raises(ValueError, match="strategy fsdp2 shards them"):
        train(config(tmp_path, "ema.enabled=true", "strategy=fsdp2"))
