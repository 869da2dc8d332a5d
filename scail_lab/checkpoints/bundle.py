"""Shipped model bundles: a folder of weight files with a manifest.json that pins every file and the configs.

A bundle (e.g. `data/toy_base/`, the toy world's base denoiser, light VAE and joint estimator) is only used after
it is checked: every file the manifest lists exists with its recorded size and sha256, and the model config the
caller is about to build equals the one the weights were trained with. A mismatch is a ValueError that names the
file and what differs, raised before any model is built, trained or sampled.

manifest.json: {"files": {name: {"sha256": hex, "bytes": int}}, "model_config": {field: value}, ...free-form
provenance (command, seeds, steps, wall time, metrics)}.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

MANIFEST = "manifest.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundle_of(path: str | Path) -> Path | None:
    """The bundle folder holding `path` (its parent has a manifest.json), else None."""
    folder = Path(path).parent
    return folder if (folder / MANIFEST).is_file() else None


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no manifest in the bundle folder") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the manifest is not valid JSON ({err})") from err
    if not isinstance(manifest.get("files"), Mapping) or not manifest["files"]:
        raise ValueError(f"{path}: the manifest lists no files")
    return manifest


def verify_file(folder: str | Path, name: str, manifest: dict | None = None) -> None:
    """One listed file: present, the recorded size, the recorded sha256."""
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    record = manifest["files"].get(name)
    if record is None:
        raise ValueError(f"{folder / name}: not listed in {folder / MANIFEST} (listed: {sorted(manifest['files'])})")
    path = folder / name
    if not path.is_file():
        raise ValueError(f"{path}: listed in {MANIFEST} but missing (git lfs / a partial copy?)")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise ValueError(f"{path}: {size} bytes, the manifest says {record['bytes']} (truncated or replaced)")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise ValueError(f"{path}: sha256 {digest[:16]}... differs from the manifest's {record['sha256'][:16]}...")


def verify_bundle(folder: str | Path) -> dict:
    """Every listed file checked; returns the manifest."""
    manifest = read_manifest(folder)
    for name in manifest["files"]:
        verify_file(folder, name, manifest)
    return manifest


def check_model_config(folder: str | Path, config: Mapping, manifest: dict | None = None) -> None:
    """The config about to be built must equal the one the bundle's denoiser was trained with."""
    manifest = manifest if manifest is not None else read_manifest(folder)
    expected = manifest.get("model_config")
    if expected is None:
        return
    config = json.loads(json.dumps(dict(config)))  # tuples -> lists, as stored
    differ = {k: (config.get(k), v) for k, v in expected.items() if config.get(k) != v}
    differ.update({k: (v, None) for k, v in config.items() if k not in expected})
    if differ:
        rows = ", ".join(f"{k}: {got!r} here vs {want!r} in the bundle" for k, (got, want) in sorted(differ.items()))
        raise ValueError(f"{Path(folder) / MANIFEST}: the model config differs from the shipped weights' ({rows})")
