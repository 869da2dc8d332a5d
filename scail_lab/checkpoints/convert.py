"""Convert any denoiser checkpoint format to Wan-layout safetensors shards + the official `config.json`.

Streaming: the source is memory-mapped (or read lazily from safetensors) and tensors are read, split,
cast and written one shard at a time, so peak memory is about two shards, never the whole model
(the SCAIL-2 fp32 file is ~61 GiB). Output goes to a hidden sibling folder that is renamed into place
only when every shard, the index and the config are written: an interrupted run leaves nothing behind.

Output folder:
    model.safetensors                               (when everything fits one shard), or
    model-00001-of-0000N.safetensors ... + model.safetensors.index.json
    config.json                                     (official fields: dim, ffn_dim, num_heads, ...)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from scail_lab.checkpoints.denoiser import open_denoiser_checkpoint
from scail_lab.checkpoints.keys import (
    check_key_shapes,
    config_json,
    infer_denoiser_config,
    official_key_shapes,
)
from scail_lab.files import replace_folder
from scail_lab.model.dit import DiTConfig
from scail_lab.model.fp8 import QUANTIZED, fp8_transform

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "keep": None,
          "fp8": torch.bfloat16}  # fp8: block Linear weights in float8 + scales (model/fp8.py), the rest bf16  # fmt: skip
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"


class _ShardWriter:
    """Accumulates tensors and writes numbered shards of at most `max_bytes` (one tensor may exceed it)."""

    def __init__(self, folder: Path, max_bytes: int, metadata: dict[str, str]) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.metadata = metadata
        self.buffer: dict[str, Tensor] = {}
        self.buffer_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, key: str, tensor: Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + size > self.max_bytes:
            self.flush()
        self.buffer[key] = tensor.contiguous()
        self.buffer_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.buffer:
            return
        save_file(self.buffer, str(self.folder / f"shard-{len(self.shards):05d}.tmp"), metadata=self.metadata)
        self.shards.append(list(self.buffer))
        self.buffer, self.buffer_bytes = {}, 0

    def finish(self) -> list[str]:
        """Rename the shards to their final names, write the index when sharded; returns the file names."""
        self.flush()
        count = len(self.shards)
        names = (
            ["model.safetensors"]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        for index, name in enumerate(names):
            os.replace(self.folder / f"shard-{index:05d}.tmp", self.folder / name)
        if count > 1:
            weight_map = {key: name for name, keys in zip(names, self.shards, strict=True) for key in keys}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return names


def _publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished temp folder to `out_dir` (replacing an old one only when allowed)."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"output folder {out_dir} is not empty; pass overwrite=True (--overwrite) to replace it"
            )
    replace_folder(tmp, out_dir)


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "bf16",
    max_shard_bytes: int = 2 * 1024**3,
    num_heads: int | None = None,
    text_len: int = 512,
    overwrite: bool = False,
    trust_pickle: bool = False,
    progress: bool = True,
) -> tuple[DiTConfig, int]:
    """Convert a denoiser checkpoint (SAT .pt, Wan .pt or safetensors) into `out_dir`; returns its config and
    mask width (also written as config.json).

    dtype: bf16 | fp16 | fp32 | keep (floating tensors only) | fp8 (block Linear weights as float8 e4m3 with a
    `weight_scale` per output channel, the rest bf16; loads with weights_dtype=float8_e4m3fn). num_heads defaults
    to dim / 128 (Wan 2.1).
    The whole key layout is validated against the official table before anything is written.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"output folder {out_dir} is not empty; pass overwrite=True (--overwrite) to replace it"
        )
    target = DTYPES[dtype]
    with open_denoiser_checkpoint(src, trust_pickle=trust_pickle) as source:
        shapes = source.shapes()
        config, mask_dim = infer_denoiser_config(shapes, num_heads=num_heads, text_len=text_len)
        expected = official_key_shapes(config, mask_dim)
        check_key_shapes(shapes, expected, what=str(source.path))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.with_name(f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            writer = _ShardWriter(
                tmp, max_shard_bytes, {"format": "pt", "scail_source_format": source.format}
            )
            quantize = fp8_transform() if dtype == "fp8" else None
            for key in tqdm(
                list(expected), desc=f"convert {source.path.name}", unit="tensor", disable=not progress
            ):
                tensor = source.get(key)
                if quantize is not None:
                    pieces = quantize(key, tensor.float())
                    pieces = {k: (v if k != key or v.dtype != torch.float32 else v.to(target)) for k, v in pieces.items()}
                else:
                    pieces = {key: tensor.to(target) if target is not None and tensor.is_floating_point() else tensor}
                for name, value in pieces.items():
                    writer.add(name, value)
            names = writer.finish()
            config_text = json.dumps(config_json(config, mask_dim), indent=2) + "\n"
            (tmp / CONFIG_NAME).write_text(config_text, encoding="utf-8")
            _publish(tmp, out_dir, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("wrote %s (%d file(s), %d tensors, %s)", out_dir, len(names), len(expected), dtype)
    return config, mask_dim


def _same(a: Tensor, b: Tensor) -> bool:
    """Bit equality (float8 compared as bytes: torch.equal has no float8 kernels on every device)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point() and a.element_size() == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


def verify_conversion(
    src: str | Path, out_dir: str | Path, *, dtype: str = "bf16", trust_pickle: bool = False
) -> int:
    """Re-read both checkpoints tensor by tensor and check the output equals the (cast) source bit for bit.

    Returns the number of tensors compared; raises ValueError naming the first key that differs. For fp8 the
    expected tensors are the source quantized the same way (scales included).
    """
    target = DTYPES[dtype]
    quantize = fp8_transform() if dtype == "fp8" else None
    with (
        open_denoiser_checkpoint(src, trust_pickle=trust_pickle) as source,
        open_denoiser_checkpoint(out_dir) as converted,
    ):
        names = set(source.keys())
        if quantize is not None:
            names |= {f"{k.rpartition('.')[0]}.weight_scale" for k in source.keys()
                      if k.endswith(".weight") and QUANTIZED.match(k.rpartition(".")[0])}  # fmt: skip
        if names != set(converted.keys()):
            raise ValueError(f"{out_dir}: key set differs from {src}")
        for key in source.keys():  # tensor by tensor: never the whole model in memory
            tensor = source.get(key)
            if quantize is not None:
                pieces = {n: (v.to(target) if n == key and v.dtype == torch.float32 else v)
                          for n, v in quantize(key, tensor.float()).items()}  # fmt: skip
            else:
                pieces = {key: tensor.to(target) if target is not None and tensor.is_floating_point() else tensor}
            for name, value in pieces.items():
                if not _same(converted.get(name), value):
                    raise ValueError(f"{out_dir}: tensor {name!r} differs from the source")
        return len(names)
