"""Write one benchmark's results into its own marked section of docs/PERFORMANCE.md (other sections untouched)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from scail_lab.files import atomic_write_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"
HEADER = "# Performance\n\nBenchmarks write their own sections; rerun a tool to refresh its section.\n"


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def update_section(name: str, body: str, path: Path = DOC) -> None:
    """Replace the text between `<!-- bench:name -->` and `<!-- /bench:name -->` (append if absent), atomically."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, text)
