"""Shared helpers for the data tests (no tests here): small synthetic example folders on disk."""

from __future__ import annotations

from pathlib import Path

from scail_lab.data.media import atomic_write_folder
from scail_lab.data.synthetic.export import sample_files
from scail_lab.data.synthetic.world import SyntheticWorld, WorldConfig


def write_synthetic(root: Path, count: int, split: str = "train", start: int = 0, **config) -> list[Path]:
    """Write `count` synthetic samples (default 64x64, 9 frames, 8 fps) as example folders under `root`."""
    cfg = WorldConfig(**{"num_frames": 9, "fps": 8.0, **config})
    world = SyntheticWorld(cfg)
    folders = []
    for index in range(start, start + count):
        files = sample_files(world.sample(split, index), cfg.fps)
        folders.append(atomic_write_folder(files, root / f"{split}_{index:06d}"))
    return folders
