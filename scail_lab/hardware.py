"""What the hardware multiplies fast: the rule behind every `precision: auto` (training budgets and sampling)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty when they cannot be read (not Linux)."""
    try:
        return {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for f in line.split()}
    except OSError:
        return set()


def cpu_has_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bf16 in hardware (the avx512_bf16 or amx_bf16 flag). There bf16 autocast trains the
    toy fine-tune 2x faster than fp32; where bf16 is emulated it is 10x slower (docs/PERFORMANCE.md). False when the
    flags cannot be read (not Linux)."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


@cache
def x264_asm(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """x264's CPU override (its `asm` parameter) that keeps encodes reproducible: "AVX2" where the CPU has AVX-512,
    else None (x264's own detection). With its AVX-512 routines, x264 (PyAV 18's build, one thread) wrote different
    bytes and pixels for the same frames from one encode to the next: 9 of 12 33-frame world clips over 20 encodes,
    in one process; capped at AVX2, none, at the same speed (C only, `no-asm`, is 4x slower)."""
    flags = cpu_flags(cpuinfo)
    return "AVX2" if "avx512f" in flags and "avx2" in flags else None


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 autocast pays on `device`: a CUDA device with bf16 support, or a CPU with bf16 units."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16_units()
