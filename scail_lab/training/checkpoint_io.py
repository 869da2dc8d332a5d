"""Checkpoints that survive a kill on any filesystem, and `resume=auto`.

Lightning writes a checkpoint to a temporary file under $TMPDIR and moves it into place; when $TMPDIR is another
filesystem (tmpfs, a node-local disk) that move is a copy, and a kill halfway leaves a truncated `last.ckpt` in
place of the good one. Here every checkpoint file is written to a temporary file in its own folder, flushed and
fsynced, renamed over the target (atomic within one filesystem) and the folder fsynced. DeepSpeed checkpoint
folders (several files) are written under a temporary name, get a completeness marker, then are swapped in
(strategies.AtomicDeepSpeedMixin). `find_resume` picks the newest checkpoint that is complete and says which
it skipped and why.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from scail_lab.files import atomic_path

log = logging.getLogger(__name__)
COMPLETE_MARKER = "SCAIL_COMPLETE"  # written last into a DeepSpeed checkpoint folder


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file beside `path`, then rename it over `path` (`files.atomic_path`); temp files left
    beside `path` by a killed save are removed first."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed save
        stale.unlink(missing_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with same-folder temp files, fsync and rename (local paths)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options}")
        atomic_torch_save(checkpoint, path)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why `path` cannot be resumed from, or None when it is complete: a file must be an intact zip archive (every
    member's CRC checked), a folder must hold the completeness marker."""
    path = Path(path)
    if path.is_dir():
        return None if (path / COMPLETE_MARKER).is_file() else f"no {COMPLETE_MARKER} marker (the save did not finish)"
    if not path.is_file():
        return "missing"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"not a complete checkpoint archive ({err})"
    return None if bad is None else f"corrupt member {bad}"


def _step(path: Path) -> int:
    match = re.search(r"step(\d+)", path.name)
    return int(match.group(1)) if match else -1


def find_resume(folder: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint in `folder` (by modification time, then step) and the newer ones skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return None, []
    candidates = [p for p in folder.iterdir() if (p.suffix == ".ckpt" or p.is_dir())
                  and not p.name.endswith((".tmp", ".old"))]  # fmt: skip
    candidates.sort(key=lambda p: (p.stat().st_mtime, _step(p)), reverse=True)
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped
