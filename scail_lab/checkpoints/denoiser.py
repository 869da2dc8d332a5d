"""Read a SCAIL denoiser checkpoint in any official format as a lazy Wan-layout tensor source.

Formats (detected from the file name and the keys, never from a flag):
    sat          `fsdp2_rank_0000_checkpoint.pt` (SCAIL-2, fp32) or `mp_rank_00_model_states.pt`
                 (SCAIL-Preview): SAT names under `checkpoint["module"]`, mapped by `sat.py`
    wan          a Wan-layout state dict: `.safetensors`, a sharded `*.safetensors.index.json`, or a
                 `.pt/.pth` dict (bare or under "module"); a `model.diffusion_model.` prefix is dropped
A directory is searched with `folder.find_denoiser`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from scail_lab.checkpoints.io import SafetensorsReader, TensorDictReader, load_torch_file
from scail_lab.checkpoints.keys import Shape, check_key_shapes
from scail_lab.checkpoints.sat import SAT_PREFIX, SatPart, plan_sat_to_wan, sat_part_shape, split_fused

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_SAT_ROOTS = ("transformer.layers.", "mixins.")  # names only SAT uses (text_embedding.* is in both)
_WAN_ROOTS = ("blocks.", "patch_embedding", "text_embedding.", "time_embedding.", "head.", "img_emb.")


def _torch_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    """The weights of a loaded torch checkpoint: `obj["module"]` or a bare dict of tensors."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "module" in obj:
        state = obj["module"]
        if not isinstance(state, Mapping) or not state:
            raise ValueError(f"{path}: checkpoint['module'] is empty or not a dict")
        return dict(state)
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    raise ValueError(
        f"{path}: no 'module' entry and not a plain state dict (top-level keys: {sorted(obj)[:10]})"
    )


class DenoiserSource:
    """Lazy, random-access view of a denoiser checkpoint in Wan key layout.

    `keys()` / `shape(k)` never touch tensor data; `get(k)` reads (or splits) one tensor.
    Use as a context manager or call `close()`.
    """

    def __init__(self, reader: SafetensorsReader | TensorDictReader, *, path: Path, container: str) -> None:
        self.path = path
        self.container = container  # "torch" | "safetensors"
        self._reader = reader
        raw_keys = reader.keys()
        if not raw_keys:
            raise ValueError(f"{path}: checkpoint holds no tensors")
        self._plan: dict[str, SatPart]
        prefixed = [k for k in raw_keys if k.startswith(SAT_PREFIX)]
        if prefixed:
            if len(prefixed) < len(
                raw_keys
            ):  # a whole diffusion engine: VAE / conditioner weights beside the DiT
                logger.info(
                    "%s: ignoring %d keys outside %s", path, len(raw_keys) - len(prefixed), SAT_PREFIX
                )
            raw_keys = prefixed
            stripped = [k[len(SAT_PREFIX) :] for k in raw_keys]
            if not any(s.startswith(_SAT_ROOTS) for s in stripped):  # ComfyUI-style prefixed Wan names
                if not any(s.startswith(_WAN_ROOTS) for s in stripped):
                    raise ValueError(
                        f"{path}: unrecognised key layout (neither SAT nor Wan), first keys {raw_keys[:5]}"
                    )
                self.layout = "wan"
                self._plan = {s: SatPart(k) for s, k in zip(stripped, raw_keys, strict=True)}
            else:
                self.layout = "sat"
                try:
                    self._plan = plan_sat_to_wan(raw_keys)
                except ValueError as error:
                    raise ValueError(f"{path}: {error}") from error
        elif any(k.startswith(_WAN_ROOTS) for k in raw_keys):
            self.layout = "wan"
            self._plan = {k: SatPart(k) for k in raw_keys}
        else:
            raise ValueError(
                f"{path}: unrecognised key layout (neither SAT nor Wan), first keys {raw_keys[:5]}"
            )

    @property
    def format(self) -> str:
        return f"{self.layout}-{self.container}"

    def keys(self) -> list[str]:
        return list(self._plan)

    def shape(self, key: str) -> Shape:
        where = self._plan[key]
        return sat_part_shape(self._reader.shape(where.sat_key), where.parts, key=where.sat_key)

    def shapes(self) -> dict[str, Shape]:
        return {k: self.shape(k) for k in self._plan}

    def dtype(self, key: str) -> torch.dtype:
        return self._reader.dtype(self._plan[key].sat_key)

    def get(self, key: str) -> Tensor:
        where = self._plan[key]
        return split_fused(self._reader.get(where.sat_key), where.parts, key=where.sat_key)[where.part]

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> DenoiserSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_denoiser_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> DenoiserSource:
    """Open a denoiser checkpoint (file or folder) in any supported format; see the module docstring."""
    path = Path(path)
    if path.is_dir():
        from scail_lab.checkpoints.folder import find_denoiser

        path = find_denoiser(path)
    if not path.exists():
        raise FileNotFoundError(f"denoiser checkpoint not found: {path}")
    name = path.name
    if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
        return DenoiserSource(SafetensorsReader(path), path=path, container="safetensors")
    if path.suffix in TORCH_SUFFIXES:
        state = _torch_state_dict(load_torch_file(path, trust_pickle=trust_pickle), path)
        return DenoiserSource(TensorDictReader(state, path), path=path, container="torch")
    raise ValueError(
        f"{path}: unknown checkpoint type; expected .safetensors, *.safetensors.index.json or {'/'.join(TORCH_SUFFIXES)}"
    )


def load_denoiser_state_dict(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    expected_shapes: Mapping[str, Shape] | None = None,
    trust_pickle: bool = False,
    transform: Callable[[str, Tensor], Mapping[str, Tensor]] | None = None,
) -> dict[str, Tensor]:
    """Load a denoiser checkpoint in any official format as a Wan-layout state dict.

    The key layout is checked against `expected_shapes` (e.g. `official_key_shapes(config, mask_dim)`) before any
    tensor is read. `dtype` casts floating tensors one at a time, so an fp32 file loads as bf16 without
    an fp32 copy of the whole model in memory; `transform(key, tensor) -> {key: tensor}` runs on each tensor after
    that (e.g. fp8 quantisation, which adds a scale per weight), also one at a time.
    """
    with open_denoiser_checkpoint(path, trust_pickle=trust_pickle) as source:
        if expected_shapes is not None:
            check_key_shapes(source.shapes(), expected_shapes, what=str(source.path))
        state: dict[str, Tensor] = {}
        for key in source.keys():
            tensor = source.get(key)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            for name, value in (transform(key, tensor) if transform is not None else {key: tensor}).items():
                state[name] = value.to(device)
        logger.info("loaded %d tensors from %s (%s)", len(state), source.path, source.format)
        return state
