"""Reading evaluation videos: mp4 through decord, frames uint8 RGB [N, H, W, 3]."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file -> uint8 [N, H, W, 3] RGB (the first `max_frames` frames when given).

    Raises FileNotFoundError for a missing file and ValueError for one decord cannot decode or that is empty.
    """
    import decord  # imported here: decord loads ffmpeg libraries at import time

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        num = len(reader) if max_frames is None else min(len(reader), int(max_frames))
        if num == 0:
            raise ValueError(f"video {path} has no frames")
        frames = reader.get_batch(list(range(num))).asnumpy()
    except (decord.DECORDError, RuntimeError) as err:  # truncated files can fail on open or mid-stream
        raise ValueError(f"cannot decode video {path}: {err}") from err
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"video {path} decoded to {frames.shape} {frames.dtype}, expected uint8 [N, H, W, 3]"
        )
    return frames
