"""Stage 6: write what people look at. All files are written atomically.

<name>.mp4                 the result at the driving video's fps
<name>_side_by_side.mp4    reference | driving | result, per frame
<name>_side_by_side.png    the same triptych at 4 evenly spaced frames, stacked
<name>.json                seed, timings, segments and the resolved config
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scail_lab.data import media
from scail_lab.files import atomic_write_bytes
from scail_lab.pipeline.animation import AnimationResult


def _frames(video: Tensor) -> np.ndarray:
    """uint8 [3, N, H, W] -> [N, H, W, 3] numpy."""
    return video.permute(1, 2, 3, 0).contiguous().numpy()


def side_by_side(result: AnimationResult) -> Tensor:
    """uint8 [3, N, H, 3W]: reference | driving | result."""
    ex = result.example
    n = result.video.shape[1]
    ref = ex.ref_image.unsqueeze(1).expand(-1, n, -1, -1)
    return torch.cat([ref, ex.driving[:, :n], result.video], dim=-1)


def write_result(
    result: AnimationResult, out_dir: str | Path, config: dict | None = None, quality: str | int = 18
) -> dict:
    """Write the result files; returns {kind: path}. `quality`: of the two mp4s (`media.encode_video`): a yuv420p
    CRF, or "lossless" (the exact frames, for measuring the model rather than the codec)."""
    out = Path(out_dir)
    name = result.example.name
    fps = result.example.fps
    paths = {
        "video": out / f"{name}.mp4",
        "side_by_side": out / f"{name}_side_by_side.mp4",
        "grid": out / f"{name}_side_by_side.png",
        "meta": out / f"{name}.json",
    }
    atomic_write_bytes(paths["video"], media.encode_video(_frames(result.video), fps, quality=quality))
    triptych = side_by_side(result)
    atomic_write_bytes(paths["side_by_side"], media.encode_video(_frames(triptych), fps, quality=quality))
    picks = np.linspace(0, triptych.shape[1] - 1, num=min(4, triptych.shape[1])).round().astype(int)
    grid = torch.cat([triptych[:, int(i)] for i in picks], dim=1)  # [3, 4H, 3W]
    atomic_write_bytes(
        paths["grid"], media.encode_image(grid.permute(1, 2, 0).contiguous().numpy(), ".png")
    )
    meta = {
        "name": name,
        "seed": result.seed,
        "seconds": round(result.seconds, 3),
        "fps": fps,
        "frames": int(result.video.shape[1]),
        "size": list(result.video.shape[-2:]),
        # the decoded frames before mp4 encoding (independent of the encoder build that writes the mp4)
        "frames_sha256": hashlib.sha256(_frames(result.video).tobytes()).hexdigest(),
        "mode": result.example.mode,
        "prompt": result.example.prompt,
        "segments": [vars(p) for p in result.segments],
        "step_cache": result.step_cache,  # per segment: steps, computed, skipped (empty when off)
        "precision": result.precision,  # resolved (the config may say auto)
        "config": config or {},
    }
    atomic_write_bytes(paths["meta"], json.dumps(meta, indent=2).encode())
    return {k: str(v) for k, v in paths.items()}
