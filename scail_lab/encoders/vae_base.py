"""The video autoencoder protocol and what every implementation shares: input checks, checkpoint reading.

Shapes: video [B, 3, N, H, W] in [-1, 1] with N = 4k + 1 frames and H, W multiples of the spatial factor
(8); latents [B, C, T, H/8, W/8] with T = (N - 1) / 4 + 1 and C = 16. Latent frame 0 depends only on pixel
frame 0 and latent t only on pixel frames <= 4t (causal), so an image is a one-frame video.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
from torch import Tensor

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@runtime_checkable
class VideoAutoencoder(Protocol):
    """What the pipeline and training need from a VAE (the Wan 2.1 VAE and the light CPU VAE)."""

    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    def encode(self, video: Tensor) -> Tensor:
        """[B, 3, N, H, W] in [-1, 1], N = 4k + 1 -> normalised latents [B, C, k + 1, H/8, W/8] (fp32)."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, C, T, h, w] -> pixels [B, 3, 4 (T - 1) + 1, 8h, 8w] in [-1, 1] (fp32)."""
        ...


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'fp32' / 'bfloat16' / 'bf16' / 'float16' / a torch.dtype -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"VAE dtype must be a floating point type, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown VAE dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def num_latent_frames(num_frames: int, temporal_factor: int = 4) -> int:
    """Pixel frames N = tf*k + 1 -> latent frames k + 1."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise ValueError(
            f"video has {num_frames} frames; the VAE needs {temporal_factor}k+1 frames (1, 5, 9, ..., 81), "
            f"e.g. trim to {max(1, (num_frames - 1) // temporal_factor * temporal_factor + 1)}"
        )
    return (num_frames - 1) // temporal_factor + 1


def check_video(video: Tensor, spatial_factor: int = 8, temporal_factor: int = 4) -> None:
    """Raise ValueError unless `video` is [B, 3, tf*k+1, H, W] floating point with H, W multiples of sf."""
    if not isinstance(video, Tensor):
        raise ValueError(f"VAE encode expects a torch.Tensor, got {type(video).__name__}")
    if video.ndim != 5:
        raise ValueError(f"VAE encode expects video [B, 3, N, H, W], got shape {tuple(video.shape)}")
    if video.shape[1] != 3:
        raise ValueError(
            f"VAE encode expects 3 RGB channels in dim 1 of [B, 3, N, H, W], got {video.shape[1]} "
            f"(shape {tuple(video.shape)}); permute [B, N, 3, H, W] inputs first"
        )
    if not video.is_floating_point():
        raise ValueError(
            f"VAE encode expects float pixels in [-1, 1], got dtype {video.dtype} (map uint8 p -> p / 127.5 - 1)"
        )
    num_latent_frames(video.shape[2], temporal_factor)
    if (
        video.numel() and video.detach().abs().amax() > 1.5
    ):  # one cheap pass; catches [0, 255] or [0, 1]*255 input
        raise ValueError(
            f"VAE encode expects pixels in [-1, 1], got values up to {video.detach().abs().amax().item():.1f} "
            "(map [0, 255] pixels with p / 127.5 - 1)"
        )
    h, w = video.shape[-2:]
    if h % spatial_factor or w % spatial_factor:
        raise ValueError(
            f"video size {h}x{w} is not a multiple of {spatial_factor} (the VAE's spatial factor); "
            f"note SCAIL models need pixel sizes that are multiples of {4 * spatial_factor}"
        )


def check_latents(latents: Tensor, latent_channels: int) -> None:
    """Raise ValueError unless `latents` is [B, latent_channels, T, h, w] floating point."""
    if not isinstance(latents, Tensor):
        raise ValueError(f"VAE decode expects a torch.Tensor, got {type(latents).__name__}")
    if latents.ndim != 5 or latents.shape[1] != latent_channels:
        raise ValueError(
            f"VAE decode expects latents [B, {latent_channels}, T, h, w], got shape {tuple(latents.shape)}"
        )
    if not latents.is_floating_point():
        raise ValueError(f"VAE decode expects floating point latents, got dtype {latents.dtype}")


def freeze(module: nn.Module) -> nn.Module:
    """eval() and requires_grad False on every parameter (for use as a fixed encoder)."""
    module.eval()
    module.requires_grad_(False)
    return module


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a `.pth`/`.pt` (torch.save) or `.safetensors` state dict; clear errors that name the file.

    Raises FileNotFoundError when the file is missing, ValueError when it is truncated, corrupt or not a
    flat name -> tensor mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise ValueError(f"VAE checkpoint {str(path)!r} is empty (0 bytes)")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        state = _read_torch(path)
    if not isinstance(state, Mapping):
        raise ValueError(f"VAE checkpoint {str(path)!r} holds a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"VAE checkpoint {str(path)!r} is not a flat name -> tensor state dict; non-tensor entries: "
            f"{[str(k) for k in bad[:5]]} (top-level keys: {[str(k) for k in list(state)[:5]]})"
        )
    return dict(state)


def _read_safetensors(path: Path) -> Mapping[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"VAE checkpoint {str(path)!r} is not a readable safetensors file (truncated or corrupt?): {err}"
        ) from err


def _read_torch(path: Path) -> object:
    errors = (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, zipfile.BadZipFile)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # files in the legacy (non-zip) format cannot be memory-mapped
            raise ValueError(
                f"VAE checkpoint {str(path)!r} could not be read by torch.load (truncated or corrupt?): {err}"
            ) from err
    except errors as err:
        raise ValueError(
            f"VAE checkpoint {str(path)!r} could not be read by torch.load (truncated or corrupt?): {err}"
        ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except errors as err:
        raise ValueError(
            f"VAE checkpoint {str(path)!r} could not be read by torch.load (truncated or corrupt?): {err}"
        ) from err


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], source: str, hint: str = "") -> None:
    """ValueError listing (a few) missing / unexpected keys and shape mismatches against `module`."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches, e.g. {mismatched[:3]}")
    raise ValueError(
        f"state dict from {source} does not match {type(module).__name__}: " + "; ".join(problems) + hint
    )


def load_checked(module: nn.Module, state: Mapping[str, Tensor], source: str, hint: str = "") -> nn.Module:
    """Strictly load `state` into `module` (which may live on the meta device), after `check_state_dict`."""
    check_state_dict(module, state, source, hint)
    on_meta = any(p.is_meta for p in module.parameters())
    module.load_state_dict(state, strict=True, assign=on_meta)
    return module
