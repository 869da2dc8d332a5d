"""Training strategies from config: single device, DDP, DeepSpeed ZeRO-2/3, FSDP; plus a CPU DeepSpeed strategy.

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
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy

log = logging.getLogger(__name__)
NAMES = ("auto", "single", "ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp")


def deepspeed_config(stage: int, offload: bool = False, bucket_size: int = int(5e8)) -> dict:
    """ZeRO settings of SCAIL-2's DeepSpeed example (overlap_comm, reduce-scatter, large buckets)."""
    zero = {
        "stage": stage,
        "overlap_comm": True,
        "reduce_scatter": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": bucket_size,
        "allgather_bucket_size": bucket_size,
    }
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {"zero_optimization": zero, "zero_allow_untested_optimizer": True, "train_micro_batch_size_per_gpu": 1}


class AtomicDeepSpeedMixin:
    """Write DeepSpeed checkpoint directories under a temporary name and rename when complete."""

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        final = Path(filepath)
        tmp = final.with_name(final.name + ".tmp")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("atomic_ds_save_start")
        super().save_checkpoint(checkpoint, str(tmp), storage_options)
        self.barrier("atomic_ds_save_written")
        if self.is_global_zero:
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(tmp, final)
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


def build_strategy(name: str, accelerator: str, offload: bool = False, bucket_size: int = int(5e8)):
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
        if cpu:
            raise ValueError("strategy fsdp needs CUDA devices; use ddp or deepspeed_zero2 on CPU")
        return FSDPStrategy(sharding_strategy="FULL_SHARD", state_dict_type="full")
    stage = 2 if name == "deepspeed_zero2" else 3
    config = deepspeed_config(stage, offload, bucket_size)
    cls = CPUDeepSpeedStrategy if cpu else AtomicDeepSpeedStrategy
    return cls(config=config)
