"""Evaluation manifests: which generated video is compared with which ground truth.

A manifest is a CSV (header row) or JSONL file with columns `pred,target[,pred_mask,target_mask,gt_json,id]`;
relative paths resolve against the manifest's folder. Folder matching builds the same rows:

    sample = a folder holding exactly one non-mask .mp4 (key: the folder's relative path), e.g.
             gt/s001/{video.mp4, target_mask.mp4, gt.json}
           or a loose .mp4 file (key: its relative path without .mp4), e.g. run/s001.mp4
    masks  = `target_mask.mp4`, `pred_mask.mp4` or `mask.mp4` inside a sample folder, or `<stem>_mask.mp4`
             beside a loose file; `gt.json` (folder) or `<stem>_gt.json` (loose file) is the synthetic ground truth.

Generated and ground-truth samples pair by key, so run/s001.mp4 matches gt/s001/video.mp4.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

VIDEO_SUFFIX = ".mp4"
MASK_NAMES = ("target_mask.mp4", "pred_mask.mp4", "mask.mp4")
COLUMNS = ("id", "pred", "target", "pred_mask", "target_mask", "gt_json")


@dataclass(frozen=True)
class ManifestRow:
    id: str
    pred: str
    target: str
    pred_mask: str | None = None
    target_mask: str | None = None
    gt_json: str | None = None


@dataclass(frozen=True)
class SampleFiles:
    video: Path
    mask: Path | None
    gt_json: Path | None


def _is_mask(path: Path) -> bool:
    return path.name in MASK_NAMES or path.stem.endswith("_mask")


def scan_samples(root: str | os.PathLike, mask_names: tuple[str, ...] = MASK_NAMES) -> dict[str, SampleFiles]:
    """key -> files of every sample under `root` (see the module docstring for the layout rules)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    samples: dict[str, SampleFiles] = {}
    for folder, _, files in sorted(os.walk(root)):
        folder_path = Path(folder)
        videos = sorted(folder_path / f for f in files if f.endswith(VIDEO_SUFFIX) and not _is_mask(Path(f)))
        if len(videos) == 1 and folder_path != root:
            mask = next((folder_path / m for m in mask_names if (folder_path / m).is_file()), None)
            gt = folder_path / "gt.json"
            samples[folder_path.relative_to(root).as_posix()] = SampleFiles(
                videos[0], mask, gt if gt.is_file() else None
            )
            continue
        for video in videos:
            mask = video.with_name(f"{video.stem}_mask{VIDEO_SUFFIX}")
            gt = video.with_name(f"{video.stem}_gt.json")
            key = video.relative_to(root).with_suffix("").as_posix()
            samples[key] = SampleFiles(video, mask if mask.is_file() else None, gt if gt.is_file() else None)
    return samples


def match_folders(
    pred_dir: str | os.PathLike, gt_dir: str | os.PathLike
) -> tuple[list[ManifestRow], dict[str, list[str]]]:
    """Pair generated and ground-truth samples by key.

    Returns (rows, unmatched) with unmatched = {"pred_only": [...], "gt_only": [...]}; raises ValueError when
    nothing pairs (names the two folders and a few keys of each).
    """
    preds = scan_samples(pred_dir, ("pred_mask.mp4", "mask.mp4"))
    gts = scan_samples(gt_dir, ("target_mask.mp4", "mask.mp4"))
    keys = sorted(set(preds) & set(gts))
    unmatched = {"pred_only": sorted(set(preds) - set(gts)), "gt_only": sorted(set(gts) - set(preds))}
    if not keys:
        raise ValueError(
            f"no generated sample in {pred_dir} matches one in {gt_dir} (generated keys {sorted(preds)[:3]}, "
            f"ground-truth keys {sorted(gts)[:3]})"
        )
    for side, missing in unmatched.items():
        if missing:
            logger.warning("%d samples %s, e.g. %s", len(missing), side.replace("_", " "), missing[:3])
    rows = [
        ManifestRow(
            id=key,
            pred=str(preds[key].video),
            target=str(gts[key].video),
            pred_mask=str(preds[key].mask) if preds[key].mask else None,
            target_mask=str(gts[key].mask) if gts[key].mask else None,
            gt_json=str(gts[key].gt_json) if gts[key].gt_json else None,
        )
        for key in keys
    ]
    return rows, unmatched


def _row_from_record(record: dict[str, object], base: Path, line: int, source: Path) -> ManifestRow:
    unknown = set(record) - set(COLUMNS)
    if unknown:
        raise ValueError(f"{source}:{line}: unknown manifest columns {sorted(unknown)} (allowed {COLUMNS})")
    if not record.get("pred") or not record.get("target"):
        raise ValueError(f"{source}:{line}: every row needs `pred` and `target`")

    def resolve(value: object) -> str | None:
        if value is None or value == "":
            return None
        path = Path(str(value)).expanduser()
        return str(path if path.is_absolute() else base / path)

    pred = resolve(record["pred"])
    key = str(record.get("id") or Path(str(record["pred"])).with_suffix("").as_posix())
    return ManifestRow(
        key,
        pred,
        resolve(record["target"]),
        resolve(record.get("pred_mask")),
        resolve(record.get("target_mask")),
        resolve(record.get("gt_json")),
    )


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """CSV or JSONL manifest -> rows (paths resolved against the manifest's folder; ids must be unique)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            records = [(i + 2, dict(r)) for i, r in enumerate(csv.DictReader(handle))]
    elif path.suffix in (".jsonl", ".json"):
        records = []
        for i, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                try:
                    records.append((i + 1, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{i + 1}: invalid JSON ({err})") from err
    else:
        raise ValueError(f"manifest must be .csv or .jsonl, got {path}")
    rows = [_row_from_record(record, path.parent, line, path) for line, record in records]
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"manifest {path} repeats sample ids, e.g. {sorted(i for i in ids if ids.count(i) > 1)[0]!r}"
        )
    return rows


def write_manifest(rows: list[ManifestRow], path: str | os.PathLike) -> None:
    """Write rows as CSV (temp file + os.replace)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    os.replace(tmp, path)
