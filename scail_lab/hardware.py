"""What the hardware multiplies fast: the rule behind every `precision: auto` (training budgets and sampling)."""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bf16 in hardware (the avx512_bf16 or amx_bf16 flag). There bf16 autocast trains the
    toy fine-tune 2x faster than fp32; where bf16 is emulated it is 10x slower (docs/PERFORMANCE.md). False when the
    flags cannot be read (not Linux)."""
    try:
        flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for f in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 autocast pays on `device`: a CUDA device with bf16 support, or a CPU with bf16 units."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16_units()
