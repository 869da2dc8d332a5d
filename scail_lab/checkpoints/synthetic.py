"""Write tiny denoiser checkpoints in every official layout (for tests and CPU smoke runs).

Nothing can be downloaded in tests, so loaders are exercised on small random checkpoints that follow the
released files' structure exactly: the SCAIL-2 FSDP2 file (SAT keys under "module", fp32, NumPy RNG state
beside it), the SCAIL-Preview DeepSpeed file (SAT keys, an argparse Namespace beside them), Wan-layout
torch files and safetensors (single or sharded).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from scail_lab.checkpoints.keys import official_key_shapes
from scail_lab.checkpoints.sat import wan_to_sat_state_dict
from scail_lab.files import atomic_write_text
from scail_lab.model.dit import DiTConfig

FORMATS = (
    "scail2_fsdp2",
    "sat_deepspeed",
    "wan_pt",
    "safetensors",
    "safetensors_sharded",
    "comfy_safetensors",
)


def random_wan_state_dict(
    config: DiTConfig, mask_dim: int = 28, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """Random tensors for every official key of `config` with `mask_dim` mask channels (std 0.05 so a forward
    stays well scaled)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: (torch.randn(shape, generator=generator) * 0.05).to(dtype)
        for key, shape in official_key_shapes(config, mask_dim).items()
    }


def write_denoiser_checkpoint(
    root: str | Path, state: Mapping[str, Tensor], fmt: str, *, max_shard_tensors: int = 20
) -> Path:
    """Write a Wan-layout state dict as `fmt` (one of FORMATS) under `root`; returns the path to load.

    scail2_fsdp2 / sat_deepspeed follow the released folder: root/model/latest + root/model/1/<file>.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if fmt in ("scail2_fsdp2", "sat_deepspeed"):
        model_dir = root / "model" / "1"
        model_dir.mkdir(parents=True, exist_ok=True)
        (root / "model" / "latest").write_text("1", encoding="utf-8")
        sat = wan_to_sat_state_dict(state)
        if fmt == "scail2_fsdp2":
            path = model_dir / "fsdp2_rank_0000_checkpoint.pt"
            payload = {"module": sat, "np_rng_state": np.random.RandomState(0).get_state(), "iteration": 1}
        else:
            path = model_dir / "mp_rank_00_model_states.pt"
            payload = {"module": sat, "args": argparse.Namespace(iteration=1), "buffer_names": []}
        torch.save(payload, path)
        return path
    if fmt == "wan_pt":
        path = root / "model.pt"
        torch.save(dict(state), path)
        return path
    if fmt in ("safetensors", "comfy_safetensors"):
        prefix = "model.diffusion_model." if fmt == "comfy_safetensors" else ""
        path = root / "model.safetensors"
        save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
        return path
    if fmt == "safetensors_sharded":
        keys = list(state)
        chunks = [keys[i : i + max_shard_tensors] for i in range(0, len(keys), max_shard_tensors)]
        weight_map = {}
        for index, chunk in enumerate(chunks):
            name = f"model-{index + 1:05d}-of-{len(chunks):05d}.safetensors"
            save_file({k: state[k].contiguous() for k in chunk}, str(root / name))
            weight_map.update(dict.fromkeys(chunk, name))
        path = root / "model.safetensors.index.json"
        atomic_write_text(path, json.dumps({"metadata": {}, "weight_map": weight_map}))
        return path
    raise ValueError(f"unknown checkpoint format {fmt!r}; choose from {FORMATS}")
