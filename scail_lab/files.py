"""Writing files and folders whole (a temp sibling, then a rename): a leaf module (no scail_lab imports), so any
layer may use it. One implementation of the idea: `atomic_path` for a file written by name (savefig, np.savez,
save_file, torch.save), `atomic_write_bytes` / `atomic_write_text` for bytes in memory, `replace_folder` for a folder
filled under a temp name."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path` (named `.<name>.<random><suffix>`; give the suffix a writer needs, such as
    ".npz" or ".png") to write the file to. On a clean exit it is synced, given the usual permissions and renamed
    over `path`, and the folder is synced; on an error it is removed and `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # on disk before the rename
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp files are private; these are ordinary data files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def replace_folder(tmp: str | Path, folder: str | Path) -> Path:
    """Make the finished folder `tmp` (a sibling of `folder`) `folder`: an existing one is renamed aside first and
    removed after, so a reader sees the old folder or the new one, never a half-written or missing one."""
    tmp, folder = Path(tmp), Path(folder)
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return folder


def save_safetensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` (moved to CPU, made contiguous) to `path` through a temp file in the same folder, then rename:
    a crash never leaves a half-written weights file, and an existing one is replaced whole. The file gets the usual
    permissions (safetensors creates it 0600)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` whole (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
