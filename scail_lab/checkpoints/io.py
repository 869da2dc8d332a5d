"""Safe, memory-frugal readers for torch pickles and safetensors files (single or sharded).

`load_torch_file` uses `torch.load(weights_only=True, mmap=True)`: tensors stay on disk until touched, so a
60 GB fp32 checkpoint can be converted tensor by tensor. The official SCAIL-2 file also stores NumPy RNG
state and SAT/DeepSpeed files may store an argparse Namespace; those few harmless types are allow-listed,
anything else needs `trust_pickle=True`. Every failure names the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

logger = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _numpy_safe_globals() -> list:
    """NumPy types needed to unpickle `np.random.get_state()` (stored next to SCAIL-2's weights).

    `_reconstruct` is registered under both module names: NumPy 1.x pickles it as `numpy.core.multiarray`,
    NumPy 2.x as `numpy._core.multiarray`, and the weights-only unpickler matches the name in the file.
    """
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32, np.uint8)]
    reconstruct = [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
    ]
    return [np.ndarray, np.dtype, *reconstruct, *dtypes, argparse.Namespace]


def _refusal_reason(error: Exception) -> str:
    """The 'Unsupported global: ...' line of a weights-only refusal (torch's message is long)."""
    lines = [line.strip() for line in str(error).splitlines()]
    reason = next((line for line in lines if "Unsupported global" in line), lines[-1] if lines else "")
    return reason.split(". Please use")[0][:300]


def load_torch_file(path: str | Path, *, mmap: bool = True, trust_pickle: bool = False) -> Any:
    """torch.load a checkpoint on CPU, weights-only and memory-mapped when the file format allows it.

    Raises FileNotFoundError for a missing file and ValueError for a corrupt / truncated file or one that
    holds Python objects a weights-only load refuses (pass trust_pickle=True only for files you trust).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    use_mmap = mmap and zipfile.is_zipfile(path)  # legacy (non-zip) and truncated files cannot be mapped
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", mmap=use_mmap, weights_only=False)
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", mmap=use_mmap, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise ValueError(
                f"{path}: holds Python objects that a weights-only load refuses ({_refusal_reason(error)}). "
                "If you trust this file, load it with trust_pickle=True (convert_checkpoint.py --trust-pickle)."
            ) from error
        raise ValueError(f"{path}: corrupt or truncated torch checkpoint ({error})") from error
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path}: corrupt or truncated torch checkpoint ({type(error).__name__}: {error})"
        ) from error


def _open_safetensors(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except SafetensorError as error:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({error})") from error


class SafetensorsReader:
    """Lazy reader over one safetensors file or a sharded set (`*.safetensors.index.json`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handles: dict[Path, Any] = {}
        if self.path.name.endswith(".json"):
            self._key_file = self._read_index(self.path)
        else:
            handle = self._handle(self.path)
            self._key_file = dict.fromkeys(handle.keys(), self.path)

    def _read_index(self, index_path: Path) -> dict[str, Path]:
        if not index_path.is_file():
            raise FileNotFoundError(f"safetensors index not found: {index_path}")
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{index_path}: not a safetensors index (needs a 'weight_map' object): {error}"
            ) from error
        files = {name: index_path.parent / name for name in sorted(set(weight_map.values()))}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{index_path}: {len(missing)} shard(s) listed in the index are missing: {missing}"
            )
        key_file = {key: files[name] for key, name in weight_map.items()}
        for shard in files.values():
            present = set(self._handle(shard).keys())
            absent = [k for k, f in key_file.items() if f == shard and k not in present]
            if absent:
                raise ValueError(
                    f"{shard}: the index lists {len(absent)} tensor(s) the shard lacks, e.g. {absent[:5]}"
                )
        return key_file

    def _handle(self, path: Path):
        if path not in self._handles:
            self._handles[path] = _open_safetensors(path)
        return self._handles[path]

    def keys(self) -> list[str]:
        return list(self._key_file)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle(self._key_file[key]).get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        name = self._handle(self._key_file[key]).get_slice(key).get_dtype()
        return SAFETENSORS_DTYPES.get(name, torch.float32)

    def get(self, key: str) -> Tensor:
        path = self._key_file[key]
        try:
            return self._handle(path).get_tensor(key)
        except SafetensorError as error:
            raise ValueError(f"{path}: cannot read tensor {key!r} ({error})") from error

    def close(self) -> None:
        self._handles.clear()


class TensorDictReader:
    """The same reader interface over an in-memory (or memory-mapped) dict of tensors."""

    def __init__(self, tensors: dict[str, Tensor], path: str | Path = "<memory>") -> None:
        bad = [k for k, v in tensors.items() if not isinstance(v, Tensor)]
        if bad:
            raise ValueError(f"{path}: state dict has non-tensor values under {bad[:5]}")
        self.path = Path(path)
        self._tensors = tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype

    def get(self, key: str) -> Tensor:
        return self._tensors[key]

    def close(self) -> None:
        self._tensors = {}
