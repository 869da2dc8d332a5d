"""Training strategies from config: single device, DDP, DeepSpeed ZeRO-2/3, FSDP (v1), FSDP2; plus a CPU DeepSpeed
strategy.

`FSDP2Strategy` (`strategy=fsdp2`, the sharding SCAIL-2's own training uses): torch `fully_shard` per DiT block and
on the root, over one data-parallel mesh of every rank, with an optional mixed-precision policy (parameters cast
for compute, gradients reduced in fp32) and CPU offload of parameters, gradients and optimizer states. It runs on
gloo CPU processes as well as on GPUs (how CI tests it). Checkpoints are whole (full state dicts gathered to rank
0: one file, not one shard per rank); resuming from them under fsdp2 is tested, under another strategy or rank count
it is not.

Lightning's DeepSpeedStrategy refuses a CPU accelerator. `CPUDeepSpeedStrategy` skips that check, uses gloo and
reports `cpu:<local_rank>` as its root device, which is enough to run ZeRO-2 with several CPU processes (how the
DeepSpeed path is tested in CI). On GPUs use the normal strategies.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
)

from scail_lab.files import fsync_dir
from scail_lab.training.checkpoint_io import COMPLETE_MARKER

log = logging.getLogger(__name__)
NAMES = ("auto", "single", "ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp", "fsdp2")
FSDP2_PARAM_DTYPES = {None: None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def deepspeed_config(
    stage: int, offload: bool = False, bucket_size: int = int(5e8), param_persistence_threshold: int = int(1e5)
) -> dict:
    """ZeRO settings of SCAIL-2's DeepSpeed example (overlap_comm, reduce-scatter, large buckets).

    ZeRO-3 keeps parameters with fewer than `param_persistence_threshold` elements whole on every rank
    (DeepSpeed's default 1e5); 0 partitions all of them (how the tests make a tiny model really sharded)."""
    zero = {
        "stage": stage,
        "overlap_comm": True,
        "reduce_scatter": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": bucket_size,
        "allgather_bucket_size": bucket_size,
    }
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = int(param_persistence_threshold)
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {"zero_optimization": zero, "zero_allow_untested_optimizer": True, "train_micro_batch_size_per_gpu": 1}


class AtomicDeepSpeedMixin:
    """Write DeepSpeed checkpoint directories under a temporary name, mark them complete, then swap them in.

    A folder counts as a checkpoint only with its marker (`checkpoint_io.COMPLETE_MARKER`, written after every rank
    finished); the previous folder is renamed aside before the new one takes its name, so at every moment one
    complete checkpoint exists under the final or the `.old` name."""

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        final = Path(filepath)
        tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("atomic_ds_save_start")
        super().save_checkpoint(checkpoint, str(tmp), storage_options)
        self.barrier("atomic_ds_save_written")
        if self.is_global_zero:
            (tmp / COMPLETE_MARKER).write_text("complete\n")
            fsync_dir(tmp)
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            fsync_dir(final.parent)
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        self.barrier("atomic_ds_save_done")


class AtomicDeepSpeedStrategy(AtomicDeepSpeedMixin, DeepSpeedStrategy):
    pass


class CPUDeepSpeedStrategy(AtomicDeepSpeedMixin, DeepSpeedStrategy):
    """DeepSpeed on CPU processes with gloo (tests and CPU-only experiments)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(*args, **kwargs)

    def setup_environment(self) -> None:
        # DeepSpeedStrategy.setup_environment rejects non-CUDA accelerators; the DDP setup underneath is fine.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        # As DeepSpeedStrategy does, minus the CUDA device-index check (CPU devices have no index).
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)

    def _get_process_group_backend(self) -> str:
        return "gloo"


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as pure data-parallel FSDP2: every rank in one `data_parallel` mesh
    dimension, tensor parallel 1; `shard_model` is what `SCAILModule.configure_model` applies. Whole-state-dict
    checkpoints (rank 0 writes one file through the CheckpointIO)."""

    def __init__(self, param_dtype: str | None = None, offload: bool = False, cpu: bool = False) -> None:
        if param_dtype not in FSDP2_PARAM_DTYPES:
            raise ValueError(f"strategy fsdp2 param_dtype must be one of {list(FSDP2_PARAM_DTYPES)}, got {param_dtype!r}")
        super().__init__(save_distributed_checkpoint=False, process_group_backend="gloo" if cpu else None)
        self.param_dtype, self.offload = FSDP2_PARAM_DTYPES[param_dtype], bool(offload)

    def setup_environment(self) -> None:
        # ModelParallelStrategy reads "auto" sizes as (num_nodes, num_processes): a 2D mesh. Here: (world, 1).
        self._setup_distributed()
        self._data_parallel_size, self._tensor_parallel_size = self.world_size, 1
        from lightning.pytorch.strategies.model_parallel import _setup_device_mesh

        self._device_mesh = _setup_device_mesh(self.world_size, 1, self.world_size, self.root_device)
        self.lightning_module._device_mesh = self._device_mesh

    def shard_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """fully_shard every DiT block, then the root (embeddings, head). Idempotent."""
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

        if isinstance(model, FSDPModule):
            return model
        mesh = self.device_mesh["data_parallel"]
        options = {"mesh": mesh}
        if self.param_dtype is not None:
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=torch.float32)
        if self.offload:  # pinned host memory only exists next to an accelerator
            options["offload_policy"] = CPUOffloadPolicy(pin_memory=self.root_device.type != "cpu")
        for block in model.blocks:
            fully_shard(block, **options)
        fully_shard(model, **options)
        return model


def shards_parameters(strategy) -> bool:
    """Does no rank hold the whole model outside a forward (ZeRO-3, FSDP, FSDP2)? Then every rank takes part in any
    forward (validation sampling) and in gathering the weights."""
    if isinstance(strategy, (FSDPStrategy, FSDP2Strategy)):
        return True
    return isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3


def full_state_dict(trainer, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """`module`'s whole state on CPU on global rank 0, None on the other ranks. Every rank must call it.

    Where the strategy shards parameters it gathers them first: ZeRO-3 with one `GatheredParameters` over all of
    them (the whole model is on each rank's device for the copy), FSDP through Lightning's full state dict
    (rank 0 only, offloaded to CPU). Elsewhere each rank already holds the whole model."""
    strategy = trainer.strategy
    rank0 = trainer.is_global_zero
    if isinstance(strategy, FSDP2Strategy):  # one tensor gathered at a time (DTensor shards -> whole, rank 0 keeps)
        out = {}
        for name, value in module.state_dict().items():
            whole = value.full_tensor() if hasattr(value, "full_tensor") else value
            if rank0:
                out[name] = whole.detach().cpu().clone()
            del whole
        return out if rank0 else None
    if isinstance(strategy, FSDPStrategy):
        state = strategy.lightning_module_state_dict()  # collective; keys of the LightningModule
        prefix = next(f"{n}." for n, m in trainer.lightning_module.named_children() if m is module)
        return {k.removeprefix(prefix): v.detach().cpu() for k, v in state.items() if k.startswith(prefix)} if rank0 else None
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if rank0 else None
    return {k: v.detach().cpu() for k, v in module.state_dict().items()} if rank0 else None


def build_strategy(
    name: str,
    accelerator: str,
    offload: bool = False,
    bucket_size: int = int(5e8),
    param_persistence_threshold: int = int(1e5),
    fsdp2_param_dtype: str | None = None,
):
    """A strategy object or name for lightning.Trainer."""
    if name not in NAMES:
        raise ValueError(f"strategy must be one of {NAMES}, got {name!r}")
    cpu = accelerator == "cpu"
    if name in ("auto",):
        return "auto"
    if name == "single":
        return SingleDeviceStrategy(device=torch.device("cpu") if cpu else torch.device("cuda", 0))
    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo" if cpu else None)
    if name == "fsdp":
        if cpu:  # torch's FSDP (v1, which Lightning's FSDPStrategy wraps) refuses CPU devices
            raise ValueError("strategy fsdp needs CUDA devices; use ddp or deepspeed_zero2/3 on CPU")
        from scail_lab.model.blocks import DiTBlock

        # one FSDP unit per transformer block (only one block's parameters are whole at a time), original
        # parameters kept (LoRA mixes frozen and trainable weights within a block)
        return FSDPStrategy(sharding_strategy="FULL_SHARD", state_dict_type="full", auto_wrap_policy={DiTBlock},
                            use_orig_params=True, cpu_offload=offload)  # fmt: skip
    if name == "fsdp2":
        return FSDP2Strategy(fsdp2_param_dtype, offload, cpu=cpu)
    stage = 2 if name == "deepspeed_zero2" else 3
    config = deepspeed_config(stage, offload, bucket_size, param_persistence_threshold)
    cls = CPUDeepSpeedStrategy if cpu else AtomicDeepSpeedStrategy
    return cls(config=config)
